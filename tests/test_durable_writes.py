"""Durable writes on SQLite: a write returns only once its log is on disk, an add is visible to the
workers before that sync ends, concurrent writes share a sync, and relaxed connections never sync.

The sync is observed by wrapping ``os.fdatasync`` and keeping the calls made on the store's log
file (``-wal``): a real file on a real disk, only watched.
"""

from __future__ import annotations

import os
import select
import sqlite3
import threading
import time
from datetime import timedelta

import pytest

from party.errors import StoreUnavailable
from party.queue import TaskQueue
from party.stores import open_store
from party.stores.sqlite import SqliteStore
from party.timestamps import system_now


@pytest.fixture
def log_syncs(monkeypatch, tmp_path):
    """The syncs of ``tmp_path/p.db-wal``, as a list the test reads; ``log_syncs.during`` holds a
    callable run inside each sync (before the real one), to look at the store meanwhile."""
    real = os.fdatasync
    log = tmp_path / "p.db-wal"

    class Syncs(list):
        during = None

    syncs = Syncs()

    def watched(fd: int) -> None:
        if log.exists() and os.fstat(fd).st_ino == log.stat().st_ino:
            syncs.append(time.monotonic())
            if syncs.during is not None:
                syncs.during()
        real(fd)

    monkeypatch.setattr(os, "fdatasync", watched)
    return syncs


@pytest.fixture
def durable_queue(tmp_path, registry):
    """A queue on ``tmp_path/p.db`` opened with the defaults (a durable store), closed after."""
    queue = TaskQueue(SqliteStore(tmp_path / "p.db"), registry)
    yield queue
    queue.store.close()


def test_a_durable_add_returns_only_once_its_log_is_synced(durable_queue, log_syncs):
    queue, store = durable_queue, durable_queue.store
    assert store.durable
    before = len(log_syncs)
    queue.add([{"party": "Noop"}])
    assert len(log_syncs) == before + 1


def test_an_add_is_visible_to_the_workers_while_its_sync_runs(tmp_path, durable_queue, log_syncs):
    # The workers are woken before the sync: a task may start while its add is made durable.
    queue = durable_queue
    counted: list[int] = []

    def count_from_another_connection() -> None:
        db = sqlite3.connect(tmp_path / "p.db")
        try:
            counted.append(db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0])
        finally:
            db.close()

    queue.add([{"party": "Noop"}])  # the log exists from here on
    log_syncs.during = count_from_another_connection
    queue.add([{"party": "Noop"}])
    log_syncs.during = None
    assert counted == [2]


def test_a_listening_worker_is_woken_before_the_sync_of_an_add(tmp_path, registry, log_syncs):
    store = SqliteStore(tmp_path / "p.db")
    worker = SqliteStore(tmp_path / "p.db")
    listener = worker.listen()
    assert listener is not None
    queue = TaskQueue(store, registry)
    woken: list[bool] = []
    try:
        queue.add([{"party": "Noop"}])  # learns that someone listens
        listener.drain()
        log_syncs.during = lambda: woken.append(bool(select.select([listener], [], [], 0)[0]))
        queue.add([{"party": "Noop"}])
    finally:
        log_syncs.during = None
        listener.close()
        worker.close()
        store.close()
    assert woken == [True]


def test_a_failed_sync_says_the_write_is_committed_but_not_known_durable(durable_queue, log_syncs):
    queue = durable_queue
    queue.add([{"party": "Noop"}])

    def refuse() -> None:
        raise OSError(5, "Input/output error")

    log_syncs.during = refuse
    with pytest.raises(StoreUnavailable) as info:
        queue.add([{"party": "Noop"}])
    assert "committed" in str(info.value) and "could not be synced" in str(info.value)
    log_syncs.during = None
    queue.add([{"party": "Noop"}])  # the next write syncs again


def test_concurrent_durable_adds_share_a_sync(durable_queue, log_syncs):
    queue = durable_queue
    queue.add([{"party": "Noop"}])
    log_syncs.clear()
    # A slow disk (0.2 s a sync): while one sync runs, the other threads commit and queue behind
    # it; the next sync covers all of them. Syncing inside the connection's lock would take one
    # per add.
    log_syncs.during = lambda: time.sleep(0.2)
    start = threading.Barrier(8)

    def add() -> None:
        start.wait(10)
        queue.add([{"party": "Noop"}])

    threads = [threading.Thread(target=add) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert queue.stats()["statuses"]["queued"] == 9
    assert 1 <= len(log_syncs) <= 3


def test_every_write_of_a_durable_store_is_synced_not_only_adds(durable_queue, log_syncs):
    queue, store = durable_queue, durable_queue.store
    task = queue.add([{"party": "Noop"}])[0]
    before = len(log_syncs)
    queue.delete(task.id)
    assert len(log_syncs) == before + 1
    before = len(log_syncs)
    store.check_writable()
    assert len(log_syncs) == before + 1


def test_a_durable_write_that_changes_nothing_does_not_sync(durable_queue, log_syncs):
    # A claim that finds nothing due (a write transaction that changes no row).
    queue = durable_queue
    queue.add([{"party": "Noop"}])
    before = len(log_syncs)
    assert queue.claim(5, now=system_now() - timedelta(days=1)) == []
    assert len(log_syncs) == before
    assert len(queue.claim(5, now=system_now() + timedelta(seconds=1))) == 1
    assert len(log_syncs) == before + 1


def test_relaxed_and_normal_connections_never_sync(tmp_path, registry, log_syncs):
    adds = open_store(f"sqlite:///{tmp_path}/p.db")
    TaskQueue(adds, registry).add([{"party": "Noop"}, {"party": "Noop"}])
    worker = open_store(f"sqlite:///{tmp_path}/p.db")
    worker.relax_commits()
    normal = open_store(f"sqlite:///{tmp_path}/p.db?synchronous=normal")
    try:
        assert adds.durable and not worker.durable and not normal.durable
        before = len(log_syncs)
        queue = TaskQueue(worker, registry)
        claimed = queue.claim(1, now=system_now() + timedelta(seconds=1))
        assert len(claimed) == 1
        TaskQueue(normal, registry).add([{"party": "Noop"}])
        assert len(log_syncs) == before
    finally:
        for store in (adds, worker, normal):
            store.close()
