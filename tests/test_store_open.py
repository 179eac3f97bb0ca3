"""Opening an SQLite store: safe when many processes open one fresh file at once, durable by
default, tunable by URL options, and never readable by other users."""

import os
import subprocess
import sys
import textwrap

import pytest

OPEN_AT_ONCE = textwrap.dedent(
    """
    import os, sys, time
    from party.stores.sqlite import SqliteStore

    path, start = sys.argv[1], float(sys.argv[2])
    time.sleep(max(0.0, start - time.time()))
    store = SqliteStore(path)
    store.check_writable()
    store.close()
    """
)


@pytest.mark.processes
def test_many_processes_open_one_fresh_file_at_once(tmp_path):
    import time

    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    failures = []
    for round_ in range(5):
        path = tmp_path / f"fresh{round_}.db"
        start = time.time() + 0.5  # every process is imported and waiting by then
        children = [
            subprocess.Popen(
                [sys.executable, "-c", OPEN_AT_ONCE, str(path), str(start)],
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for _ in range(8)
        ]
        for child in children:
            _, err = child.communicate(timeout=60)
            if child.returncode:
                failures.append(err.strip().splitlines()[-1])
    assert not failures


def synchronous_of(store):
    """Full when a write returns only once it is on disk (tests/test_durable_writes.py shows
    how), else "normal"."""
    return "full" if store.durable else "normal"


def test_acknowledged_adds_are_synced_in_full_by_default(tmp_path):
    from party.stores import open_store

    store = open_store(f"sqlite:///{tmp_path}/a.db")
    assert synchronous_of(store) == "full"
    store.close()


def test_the_url_trades_durability_for_speed_with_synchronous_normal(tmp_path):
    from party.stores import open_store

    store = open_store(f"sqlite:///{tmp_path}/a.db?synchronous=normal")
    assert synchronous_of(store) == "normal" and store.path == f"{tmp_path}/a.db"
    store.close()
    store = open_store(f"sqlite:///{tmp_path}/a.db?synchronous=FULL")
    assert synchronous_of(store) == "full"
    store.close()


@pytest.mark.parametrize(
    ("query", "named"),
    [("journal=wal", "'journal'"), ("synchronous=off", "synchronous='off'")],
)
def test_a_url_option_that_is_not_understood_is_refused_before_opening(tmp_path, query, named):
    from party.errors import ConfigError
    from party.stores import describe_store_url, open_store

    url = f"sqlite:///{tmp_path}/a.db?{query}"
    for call in (describe_store_url, open_store):
        with pytest.raises(ConfigError) as info:
            call(url)
        assert named in str(info.value) and "synchronous=full" in str(info.value)
    assert not (tmp_path / "a.db").exists()


def test_store_files_are_never_readable_by_other_users_whatever_the_umask(tmp_path, registry):
    from party.queue import TaskQueue
    from party.stores.sqlite import SqliteStore

    old = os.umask(0)
    try:
        store = SqliteStore(tmp_path / "p.db")
        TaskQueue(store, registry).add([{"party": "Noop"}])
        names = ["p.db", "p.db-wal", "p.db-shm", "p.db.lock"]
        modes = {name: (tmp_path / name).stat().st_mode & 0o777 for name in names}
        store.close()
    finally:
        os.umask(old)
    assert modes == dict.fromkeys(names, 0o660)


def test_a_workers_connection_skips_the_sync_and_the_adds_keep_it(tmp_path):
    from party.stores import open_store

    adds = open_store(f"sqlite:///{tmp_path}/a.db")
    worker = open_store(f"sqlite:///{tmp_path}/a.db")
    worker.relax_commits()
    try:
        assert (synchronous_of(adds), synchronous_of(worker)) == ("full", "normal")
        # A durable write waits for the disk: a server never runs one on its event loop.
        assert not adds.inline_writes
        assert open_store(f"sqlite:///{tmp_path}/a.db?synchronous=normal").inline_writes
    finally:
        adds.close()
        worker.close()
