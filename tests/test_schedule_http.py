"""GET /schedules and `party schedules`: the declared schedules of the live schedulers' records,
each with its next slot and its live task, over a real server on a Unix socket."""

from party import cli
from party.client import BlockingHTTPClient
from party.model import NewTask
from party.schedule import declare
from party.timestamps import format_timestamp, system_now
from tests.conftest import wait_for
from tests.serving import ServerThread


def _record(id_, started, schedules):
    return {"id": id_, "host": "h", "pid": 7, "started": started, "workers": 1,
            "handlers": list(schedules), "running": [], "beat_every": 2.0, "stopped": None,
            "schedules": schedules}  # fmt: skip


def test_get_schedules_lists_declarations_with_next_slot_and_task(tmp_path, capsys, monkeypatch):
    server = ServerThread(tmp_path / "party.db", tmp_path / "party.sock", token="t").start()
    try:
        store = server.queue.store
        now = system_now()
        every = declare(every=60)
        cron = declare("0 9 * * MON-FRI", timezone="Europe/Berlin", data={"list": "all"})
        old = declare(every=5)
        store.beat(_record("a", "2030-01-01T10:00:00.000000Z", {"Noop": old.record()}), now)
        store.beat(_record("b", "2030-01-01T11:00:00.000000Z",
                           {"Noop": every.record(), "Other": cron.record()}), now)  # fmt: skip
        server.queue.registry.get("Noop").is_recurring = True
        try:
            (task,) = server.queue.add([NewTask("Noop", {}, now, schedule=every.text)])
        finally:
            server.queue.registry.get("Noop").is_recurring = False
        with BlockingHTTPClient(server.sock, token="t") as con:
            rows = wait_for(lambda: con.request("/schedules")["schedules"], 5, "the schedules")
        by_party = {row["party"]: row for row in rows}
        assert by_party["Noop"]["every"] == 60 and by_party["Noop"]["schedule"] is None
        assert by_party["Noop"]["task"] == {"_id": task.id, "timestamp": format_timestamp(now)}
        assert by_party["Noop"]["next"] == format_timestamp(now)
        other = by_party["Other"]
        assert other["schedule"] == "0 9 * * MON-FRI" and other["timezone"] == "Europe/Berlin"
        assert other["task"] is None and other["next"] > format_timestamp(now)
        monkeypatch.setenv("PARTY_TOKEN", "t")
        assert cli.main(["schedules", "--socket", str(server.sock)]) == 0
        out = capsys.readouterr().out
        assert "Noop" in out and "0 9 * * MON-FRI" in out and task.id in out
    finally:
        server.stop()
