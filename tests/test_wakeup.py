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
    assert folder.parent == Path("/tmp") / f"party-{os.getuid()}"
    assert folder.name.startswith("wake-")
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


def test_a_notifier_that_found_no_folder_wakes_a_scheduler_that_listens_later(tmp_path):
    # An application adds before any scheduler ran (each add then costs one failed stat), and
    # the first scheduler's folder is checked and used from the next add on.
    directory = tmp_path / "wake"
    notifier = Notifier(directory)
    try:
        assert notifier.notify() == 0 and notifier.notify() == 0
        listener = Listener(directory)
        try:
            assert notifier.notify() == 1 and readable(listener)
        finally:
            listener.close()
    finally:
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


@pytest.fixture
def short_tmp():
    """A temporary directory short enough that channel folders stay in it (not in /tmp)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="pw", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_channel_sits_in_a_private_parent_of_its_user(short_tmp, monkeypatch):
    import tempfile

    tmp_path = short_tmp
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    folder = channel_dir("sqlite:/srv/party.db")
    assert folder.parent == tmp_path / f"party-{os.getuid()}"
    old = os.umask(0)
    try:
        listener = Listener(folder)
    finally:
        os.umask(old)
    try:
        assert folder.parent.stat().st_mode & 0o777 == 0o710  # others cannot list nor plant
        assert folder.stat().st_mode & 0o777 == 0o770
    finally:
        listener.close()


def planted(tmp_path, monkeypatch, what):
    """The channel of a store whose folder another local user prepared before Party ran."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    folder = channel_dir("sqlite:" + str(tmp_path / "p.db"))
    what(folder)
    return folder


PLANTS = {
    "a regular file": lambda folder: folder.parent.write_text("x"),
    "a file in a real parent": lambda f: (f.parent.mkdir(0o710), f.write_text("x")),
    "a symbolic link": lambda folder: folder.parent.symlink_to("/"),
    "a parent open to all": lambda folder: (folder.parent.mkdir(), folder.parent.chmod(0o777)),
    "a parent of another user": lambda folder: (
        folder.parent.mkdir(0o710),
        os.chown(folder.parent, 4242, 4242),
    ),
}


@pytest.mark.parametrize("plant", PLANTS, ids=list(PLANTS))
def test_a_planted_channel_never_fails_an_add_and_warns_once(
    short_tmp, monkeypatch, registry, caplog, plant
):
    import logging

    tmp_path = short_tmp
    folder = planted(tmp_path, monkeypatch, PLANTS[plant])
    store = SqliteStore(tmp_path / "p.db")
    assert store._wake_dir == folder
    queue = TaskQueue(store, registry)
    with caplog.at_level(logging.WARNING, logger="party.stores.wakeup"):
        assert store.listen() is None  # refused, said why; the scheduler polls
        for _ in range(3):
            queue.add([{"party": "Noop"}])  # no exception after the commit
    assert len(queue.store.query()) == 3
    notify_warnings = [r for r in caplog.records if "cannot wake schedulers" in r.getMessage()]
    listen_warnings = [r for r in caplog.records if "no wake-ups on" in r.getMessage()]
    assert len(notify_warnings) <= 1 and len(listen_warnings) == 1
    store.close()


def test_a_notifier_whose_folder_became_a_file_warns_once_and_never_raises(tmp_path, caplog):
    import logging

    folder = tmp_path / "wake"
    listener = Listener(folder)
    notifier = Notifier(folder)
    assert notifier.notify() == 1
    listener.close()
    os.rmdir(folder)
    folder.write_text("planted")
    notifier._mtime = None  # as after any change of the folder
    with caplog.at_level(logging.WARNING, logger="party.stores.wakeup"):
        assert notifier.notify() == 0
        assert notifier.notify() == 0
    assert len([r for r in caplog.records if "cannot wake" in r.getMessage()]) == 1
    notifier.close()
