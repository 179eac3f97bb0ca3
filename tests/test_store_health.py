"""``Store.check_writable``: each way a store can stop taking writes gives StoreUnavailable with a
reason a person can act on, within about a second. A read-only *file system* could not be produced
here: remounting one read-only fails (EBUSY) while the store holds its files open for writing, so
SQLite's own read-only answer stands in for it (``PRAGMA query_only``)."""

import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time

import mongomock
import pytest

from party.errors import StoreUnavailable
from party.stores.mongo import MongoStore
from party.stores.sqlite import SqliteStore

HOLD_LOCK = (
    "import fcntl, sys, time\n"
    "lock = open(sys.argv[1], 'a')\n"
    "fcntl.flock(lock, fcntl.LOCK_EX)\n"
    "print('held', flush=True)\n"
    "time.sleep(60)\n"
)


@pytest.mark.processes
def test_a_write_lock_held_by_another_process_is_unavailable_within_about_a_second(sqlite_path):
    store = SqliteStore(sqlite_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, f"{sqlite_path}.lock"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "held\n"  # ends at EOF if the child dies
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="write lock was not had within a second"):
            store.check_writable()
        assert time.monotonic() - started < 3
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    store.check_writable()  # the lock is free again


def test_sqlite_busy_lock_of_a_foreign_writer_is_unavailable(sqlite_path):
    store = SqliteStore(sqlite_path)
    other = sqlite3.connect(sqlite_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # SQLite's own write lock, outside Party's lock file
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="write lock was not had within a second"):
            store.check_writable()
        assert time.monotonic() - started < 3
    finally:
        other.execute("ROLLBACK")
        other.close()
    store.check_writable()


def test_a_read_only_store_is_unavailable(sqlite_path):
    store = SqliteStore(sqlite_path)
    store._db.execute("PRAGMA query_only = 1")
    with pytest.raises(StoreUnavailable, match="read-only"):
        store.check_writable()


def test_a_file_overwritten_under_an_open_store_is_corrupt(sqlite_path):
    store = SqliteStore(sqlite_path)
    store.check_writable()
    store.maintain()
    size = os.path.getsize(sqlite_path)
    with open(sqlite_path, "r+b") as file:
        file.write(os.urandom(size))
    with pytest.raises(StoreUnavailable, match="corrupt"):
        store.check_writable()


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_store_whose_file_was_deleted_or_replaced_refuses_writes(sqlite_path, registry, how):
    from party.queue import TaskQueue

    queue = TaskQueue(SqliteStore(sqlite_path), registry)
    try:
        queue.add([{"party": "Noop"}])
        for suffix in ("-wal", "-shm", ""):
            if os.path.exists(f"{sqlite_path}{suffix}"):
                os.unlink(f"{sqlite_path}{suffix}")
        if how == "replaced":
            SqliteStore(sqlite_path).close()  # a fresh file at the same path
        with pytest.raises(StoreUnavailable, match="its file was deleted or replaced"):
            queue.add([{"party": "Noop"}])  # not acknowledged into an unlinked file
        with pytest.raises(StoreUnavailable):
            queue.store.check_writable()
    finally:
        queue.store.close()


FULL_DISK = textwrap.dedent(
    """
    import sys
    from party.errors import StoreUnavailable
    from party.stores.sqlite import SqliteStore

    folder = sys.argv[1]
    store = SqliteStore(folder + "/party.db")
    store.check_writable()
    with open(folder + "/filler", "wb") as filler:
        try:
            while True:
                filler.write(bytes(65536))
                filler.flush()
        except OSError:
            pass
    try:
        store.check_writable()
    except StoreUnavailable as exc:
        print(exc)
    """
)


@pytest.mark.processes
def test_a_full_disk_is_unavailable(tmp_path):
    """A tiny tmpfs filled up, in a private mount namespace (skipped where that is not allowed)."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    folder = tmp_path / "small"
    folder.mkdir()
    script = tmp_path / "full.py"
    script.write_text(FULL_DISK)
    command = (
        f"mount -t tmpfs -o size=4m tmpfs {folder} || exit 77; "
        f"exec {sys.executable} {script} {folder}"
    )
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", command], capture_output=True, text=True, env=env, timeout=60
    )
    if done.returncode == 77 or "unshare failed" in done.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    assert "the disk is full" in done.stdout


def test_mongo_check_writable_upserts_one_health_document():
    collection = mongomock.MongoClient().get_database("t").get_collection("tasks")
    store = MongoStore(collection)
    store.check_writable()
    store.check_writable()
    health = collection.database.get_collection("tasks.health")
    assert [doc["_id"] for doc in health.find()] == ["health"]
    assert collection.count_documents({}) == 0


def test_an_unreachable_mongodb_is_unavailable_within_about_a_second():
    from pymongo import MongoClient

    store = MongoStore(mongomock.MongoClient().get_database("t").get_collection("tasks"))
    # A real client towards a port nobody listens on: what a server that went away looks like.
    client = MongoClient("mongodb://127.0.0.1:9/t", serverSelectionTimeoutMS=30000, connect=False)
    store._tasks = client.get_database("t").get_collection("tasks")
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="MongoDB cannot take a write"):
            store.check_writable()
        assert time.monotonic() - started < 5
    finally:
        client.close()
