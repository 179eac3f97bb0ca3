"""Channel: pickled messages between the pool and a worker over a socketpair."""

import os
import threading

import pytest

from party.channel import Channel, wait_readable


def test_messages_arrive_whole_and_in_order():
    left, right = Channel.pair()
    left.send([1, "two", {"three": 3.0}])
    left.send(None)
    assert right.poll(1.0)
    assert right.recv() == [1, "two", {"three": 3.0}]
    assert right.recv() is None
    assert not right.poll(0)
    left.close()
    right.close()


def test_a_message_larger_than_the_socket_buffer_is_reassembled():
    left, right = Channel.pair()
    big = os.urandom(4 * 1024 * 1024)
    sender = threading.Thread(target=left.send, args=(big,))
    sender.start()
    assert right.recv() == big
    sender.join(5)
    left.close()
    right.close()


def test_closed_peer_reads_as_eof_and_a_send_to_it_fails():
    left, right = Channel.pair()
    left.close()
    assert right.poll(1.0), "the end of the pipe must wake a waiting reader"
    with pytest.raises(EOFError):
        right.recv()
    with pytest.raises(OSError):
        for _ in range(100):  # the first send may still land in the buffer
            right.send(b"x" * 65536)
    right.close()


def test_wait_readable_takes_descriptors_and_channels():
    left, right = Channel.pair()
    r, w = os.pipe()
    try:
        assert not wait_readable([right, r], 0.01)
        os.write(w, b"!")
        assert wait_readable([right, r], 1.0)
        left.send(1)
        assert wait_readable([right], 1.0)
    finally:
        for fd in (r, w):
            os.close(fd)
        left.close()
        right.close()
