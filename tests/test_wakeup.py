"""The wake-up channel: a commit that queues a task wakes every listening scheduler at once."""

import os
import select
import socket
from pathlib import Path

import pytest

from party.model import Status, Write
from party.queue import TaskQueue
from party.stores.sqlite import SqliteStore
from party.stores.wakeup import Listener, Notifier, channel_dir


def readable(listener, timeout=1.0):
    return bool(select.select([listener], [], [], timeout)[0])


def test_adding_a_task_wakes_listeners_of_the_same_store_file(sqlite_path, registry):
    scheduler_side = SqliteStore(sqlite_path)
    server_side = TaskQueue(SqliteStore(sqlite_path), registry)
    first, second = scheduler_side.listen(), scheduler_side.listen()
    try:
        assert not readable(first, 0)
        server_side.add([{"party": "Noop"}])
        assert readable(first) and readable(second)
        assert first.drain() == 1 and not readable(first, 0)
    finally:
        first.close()
        second.close()


def test_other_store_files_do_not_wake_each_other(tmp_path, registry):
    listener = SqliteStore(tmp_path / "a.db").listen()
    try:
        TaskQueue(SqliteStore(tmp_path / "b.db"), registry).add([{"party": "Noop"}])
        assert not readable(listener, 0.05)
    finally:
        listener.close()


def test_requeue_and_hand_back_wake_listeners_but_completion_does_not(sqlite_path, registry):
    store = SqliteStore(sqlite_path)
    queue = TaskQueue(store, registry)
    listener = store.listen()
    try:
        queue.add([{"party": "Noop"}, {"party": "Noop"}])
        listener.drain()
        a, b = queue.claim(2)
        assert queue.release([a]) == [True]
        assert readable(listener, 0.5)
        listener.drain()
        store.write_many([Write(b.id, {"status": Status.COMPLETED}, lease=b.lease)])
        assert not readable(listener, 0.05)
    finally:
        listener.close()


def test_socket_of_a_dead_listener_is_removed_by_the_next_sender(tmp_path):
    directory = tmp_path / "wake"
    directory.mkdir()
    stale = directory / "999999-dead.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(str(stale))
    dead.close()  # the file stays, nobody is bound: what a killed scheduler leaves behind
    live = Listener(directory)
    notifier = Notifier(directory)
    try:
        assert notifier.notify() == 1
        assert not stale.exists() and live.path.exists()
        assert readable(live)
    finally:
        live.close()
        notifier.close()
    assert not live.path.exists()


def test_a_socket_path_too_long_to_bind_is_a_clear_error(tmp_path):
    deep = tmp_path / ("d" * 120)
    with pytest.raises(OSError):
        Listener(deep)


def test_a_temporary_directory_too_long_for_socket_paths_falls_back_to_tmp(monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", "/" + "long-tmpdir-name/" * 8)
    folder = channel_dir("sqlite:/srv/party.db")
    assert folder.parent == Path("/tmp") and folder.name.startswith("party-wake-")
    listener = Listener(folder)  # binds: the path fits
    notifier = Notifier(folder)
    try:
        assert notifier.notify() == 1
        assert readable(listener)
    finally:
        listener.close()
        notifier.close()


def test_notify_without_any_listener_is_harmless(tmp_path):
    notifier = Notifier(tmp_path / "nobody")
    assert notifier.notify() == 0
    notifier.close()


def test_channel_folder_is_short_enough_for_socket_paths():
    deep = "/" + "very-long-directory-name/" * 20 + "party.db"
    path = channel_dir("sqlite:" + deep) / f"{os.getpid()}-abcdef.sock"
    assert len(str(path).encode()) < 100


def test_mongo_store_without_change_streams_falls_back_to_the_local_channel():
    import mongomock

    from party.stores.mongo import MongoStore

    store = MongoStore(mongomock.MongoClient().get_database("w").get_collection("tasks"))
    listener = store.listen()
    try:
        assert isinstance(listener, Listener)
        store.notify()
        assert readable(listener)
    finally:
        listener.close()
        store.close()
