"""The reads: ``waiting`` with its order of precedence, ``no_handler`` in the stats, the live
schedulers over HTTP and the command line, and one read of the schedulers per list."""

import json
from datetime import datetime, timedelta

import pytest

from party import cli
from party.client import BlockingHTTPClient
from party.model import Status, Task
from party.views import DEAD_AFTER, Live, Views, is_live, waiting
from tests.serving import ServerThread

NOW = datetime(2030, 1, 1, 12, 0, 0)
ID = "0123456789abcdef01234567"


def task(**changes):
    past = NOW - timedelta(seconds=5)
    fields = dict(id=ID, party="Noop", data={}, timestamp=past, created=past, run_at=past)
    fields.update(changes)
    return Task(**fields)


def record(id_="s1", handlers=("Noop",), running=(), beat=NOW, **more):
    return {"id": id_, "host": "h", "pid": 7, "started": "2030-01-01T11:00:00.000000Z",
            "workers": 2, "handlers": list(handlers), "running": list(running),
            "beat_every": 2.0, "stopped": None, "heartbeat": beat, **more}  # fmt: skip


def beat(store, rec, at):
    """Write ``rec`` as a scheduler's heartbeat at ``at`` (the store adds ``heartbeat``)."""
    store.beat({k: v for k, v in rec.items() if k != "heartbeat"}, at)


LIVE = Live(at=NOW, schedulers=(record(),))


def reason(t, live=LIVE):
    found = waiting(t, live, NOW)
    return None if found is None else found["reason"]


@pytest.mark.parametrize("status", [Status.COMPLETED, Status.FAILED, Status.DELETED])
def test_ended_tasks_wait_for_nothing(status):
    assert waiting(task(status=status), LIVE, NOW) is None


def test_a_due_task_of_a_live_handler_waits_for_a_worker():
    found = waiting(task(), LIVE, NOW)
    assert found == {"reason": "due", "until": None,
                     "detail": "due for 5.0 s, waiting for a free worker"}  # fmt: skip


def test_running_names_the_scheduler_and_worker_and_the_lease_end():
    run = {"_id": ID, "party": "Noop", "since": "2030-01-01T11:59:59.000000Z", "worker": 1,
           "pid": 99}  # fmt: skip
    live = Live(at=NOW, schedulers=(record(running=[run]),))
    found = waiting(task(status=Status.RUNNING, lease_expires=NOW + timedelta(seconds=60),
                         timestamp=NOW + timedelta(hours=1)), live, NOW)  # fmt: skip
    assert found["reason"] == "running"
    assert found["until"] == "2030-01-01T12:01:00.000000Z"
    assert "worker 1 (pid 99) of scheduler s1 on h" in found["detail"]
    # Not yet in a heartbeat (or a force-run): the lease's owner is named instead.
    found = waiting(task(status=Status.RUNNING, lease="abc~me.1.2.3"), LIVE, NOW)
    assert found["reason"] == "running" and "me.1.2.3" in found["detail"]


def test_no_handler_names_the_handler_and_wins_over_scheduled_and_retry():
    later = NOW + timedelta(hours=1)
    for t in (task(party="Typo"), task(party="Typo", timestamp=later, run_at=later),
              task(party="Typo", run_at=later, attempts=1)):  # fmt: skip
        found = waiting(t, LIVE, NOW)
        assert found["reason"] == "no_handler" and "'Typo'" in found["detail"]
    found = waiting(task(), Live(at=NOW), NOW)
    assert found["reason"] == "no_handler" and "no scheduler is live" in found["detail"]


def test_scheduled_then_retry_delay_then_limited_then_due():
    later = NOW + timedelta(minutes=5)
    limited = Live(at=NOW, schedulers=(record(),), limited={"Noop": 2})
    scheduled = task(timestamp=later, run_at=later + timedelta(seconds=1))
    assert reason(scheduled, limited) == "scheduled"
    assert waiting(scheduled, LIVE, NOW)["until"] == "2030-01-01T12:05:01.000000Z"
    retry = task(run_at=later, attempts=2)
    assert reason(retry, limited) == "retry_delay"
    assert waiting(retry, LIVE, NOW)["until"] == "2030-01-01T12:05:00.000000Z"
    found = waiting(task(), limited, NOW)
    assert found["reason"] == "limited" and "max_running of 2" in found["detail"]
    assert reason(task()) == "due"


def test_a_scheduler_is_live_until_three_beats_are_missed_or_it_stopped():
    assert is_live(record(beat=NOW - timedelta(seconds=DEAD_AFTER)), NOW)
    assert not is_live(record(beat=NOW - timedelta(seconds=DEAD_AFTER + 0.1)), NOW)
    assert not is_live(record(stopped="2030-01-01T11:59:59.000000Z"), NOW)
    assert is_live(record(beat=NOW - timedelta(seconds=20), beat_every=10.0), NOW)


class Capped:
    """A registry whose Noop declares max_running = 1 (the policies issue adds the attribute)."""

    names = ["Noop"]

    def get(self, name):
        return type("Noop", (), {"max_running": 1})


def test_stats_count_no_handler_tasks_and_limited_comes_from_max_running(store, queue, clock):
    queue.add([{"party": "Noop"}, {"party": "Noop"}, {"party": "Sleepy", "data": {}}])
    views = Views(store, queue.registry, clock=clock)
    stats = views.stats()
    assert stats["no_handler"] == 3 and stats["pruned"] == 0  # no scheduler is live
    beat(store, record(handlers=["Noop"]), clock.now)
    assert views.stats()["no_handler"] == 1
    assert views.live().limited == {}
    queue.claim(1, now=clock.now)
    assert Views(store, Capped(), clock=clock).live().limited == {"Noop": 1}


def test_the_live_schedulers_are_the_recent_unstopped_beats(store, clock):
    views = Views(store, clock=clock)
    beat(store, record("old"), clock.now - timedelta(seconds=30))
    beat(store, record("stopped", stopped="2030-01-01T11:59:59.000000Z"), clock.now)
    beat(store, record("live"), clock.now - timedelta(seconds=1))
    assert [r["id"] for r in views.schedulers()] == ["live"]
    assert len(views.schedulers(live=False)) == 3


@pytest.fixture
def served(tmp_path):
    server = ServerThread(tmp_path / "party.db", tmp_path / "party.sock", token="t").start()
    yield server
    server.stop()


def test_http_answers_carry_waiting_and_the_live_schedulers(served):
    store = served.queue.store
    calls = []
    schedulers = store.schedulers
    store.schedulers = lambda since=None: calls.append(since) or schedulers(since)
    with BlockingHTTPClient(served.sock, token="t") as con:
        added = con.request("/tasks", None, data={"tasks": [{"party": "Noop"}] * 30},
                            method="POST")  # fmt: skip
        assert {t["waiting"]["reason"] for t in added} == {"no_handler"}
        assert con.request("/stats")["no_handler"] == 30
        assert con.request("/schedulers") == {"schedulers": []}
        run = {"_id": added[0]["_id"], "party": "Noop", "since": "2030-01-01T11:00:00.000000Z",
               "worker": 0, "pid": 5}  # fmt: skip
        from party.timestamps import system_now

        beat(store, record(running=[run]), system_now())
        (live,) = _wait_live(con)
        assert live["id"] == "s1" and live["handlers"] == ["Noop"] and live["running"] == [run]
        calls.clear()
        page = con.request("/tasks", {"limit": 30})
        assert {t["waiting"]["reason"] for t in page["tasks"]} == {"due"}
        assert len(calls) <= 1, "one read of the schedulers per list, not one per task"
        one = con.request(f"/task/{added[1]['_id']}")
        assert one["waiting"]["reason"] == "due"


def _wait_live(con):
    from tests.conftest import wait_for

    # The server caches the live schedulers for about a second.
    return wait_for(lambda: con.request("/schedulers")["schedulers"], timeout=5,
                    what="the scheduler to show")  # fmt: skip


def test_party_schedulers_prints_them(served, capsys, monkeypatch):
    from party.timestamps import system_now

    monkeypatch.setenv("PARTY_TOKEN", "t")
    run = {"_id": ID, "party": "Noop", "since": "2030-01-01T11:00:00.000000Z", "worker": 3,
           "pid": 55}  # fmt: skip
    beat(served.queue.store, record(running=[run]), system_now())
    from tests.conftest import wait_for

    def listed():
        assert cli.main(["schedulers", "--socket", served.sock, "--json"]) == 0
        return json.loads(capsys.readouterr().out)["schedulers"]

    wait_for(listed, timeout=5, what="the scheduler to show")
    assert cli.main(["schedulers", "--socket", served.sock]) == 0
    out = capsys.readouterr().out
    assert "s1" in out and "1/2 busy" in out and ID in out and "55" in out
