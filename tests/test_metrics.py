"""GET /metrics: parsed with prometheus_client's own parsers, exact counts after a known workload
run by a real scheduler process, and counters that survive the scheduler's restart."""

import os
import signal
import subprocess
import sys
import urllib.request

import pytest
from conftest import wait_for
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families

from party.metrics import LATENESS_BUCKETS, RUN_BUCKETS, ServerCounters, observe
from tests.serving import HANDLERS, ROOT, ServerThread

TOKEN = "m"


def scrape(server, accept=None):
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}/metrics")
    request.add_header("Authorization", f"Bearer {TOKEN}")
    if accept:
        request.add_header("Accept", accept)
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.headers["Content-Type"], answer.read().decode()


def samples(text):
    """{(sample name, sorted labels): value} of a text-format scrape."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found, name, **labels):
    return found.get((name, tuple(sorted(labels.items()))))


def test_a_histogram_keeps_counts_per_bucket_with_inf_last():
    hist = {}
    for seconds in (0.001, 0.3, 0.3, 10_000):
        observe(hist, seconds, RUN_BUCKETS)
    assert hist["count"] == 4 and hist["sum"] == pytest.approx(10_000.601)
    assert hist["buckets"][0] == 1 and hist["buckets"][-1] == 1
    assert sum(hist["buckets"]) == 4 and len(hist["buckets"]) == len(RUN_BUCKETS) + 1
    assert list(LATENESS_BUCKETS) == sorted(LATENESS_BUCKETS)


@pytest.fixture
def served(tmp_path):
    server = ServerThread(tmp_path / "party.db", tmp_path / "party.sock", token=TOKEN).start()
    yield server
    server.stop()


def start_scheduler(tmp_path, n):
    cmd = [sys.executable, str(ROOT / "scheduler"), "--store", f"sqlite:///{tmp_path}/party.db",
           "--tasks", str(HANDLERS), "--workers", "2", "--lease", "30", "--grace", "10",
           "--poll-interval", "0.2"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARTY_")}
    with open(tmp_path / f"scheduler-{n}.err", "w") as err:
        return subprocess.Popen(cmd, cwd=tmp_path, stderr=err, env=env)


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0


@pytest.mark.processes
def test_metrics_count_a_known_workload_exactly_across_a_scheduler_restart(served, tmp_path):
    queue = served.queue
    queue.add([{"party": "Noop"}] * 3 + [{"party": "FlakyTwice"}, {"party": "Boom"}])
    proc = start_scheduler(tmp_path, 0)
    try:
        want = {("Noop", "completed"): 3, ("FlakyTwice", "retried"): 2,
                ("FlakyTwice", "completed"): 1, ("Boom", "retried"): 5,
                ("Boom", "failed"): 1}  # fmt: skip

        def counted():
            found = samples(scrape(served)[1])
            got = {key: value(found, "party_runs_total", party=key[0], outcome=key[1])
                   for key in want}  # fmt: skip
            return found if got == want else None

        found = wait_for(counted, timeout=30, what="the runs to reach the heartbeat")
        assert value(found, "party_schedulers") == 1
        assert value(found, "party_workers") == 2
        assert value(found, "party_run_seconds_count", party="Noop") == 3
        assert value(found, "party_run_seconds_count", party="Boom") == 6
        assert value(found, "party_run_seconds_bucket", party="Noop", le="+Inf") == 3
        assert value(found, "party_start_lateness_seconds_count", party="FlakyTwice") == 3
        assert value(found, "party_tasks", status="completed", party="Noop") == 3
        assert value(found, "party_tasks", status="failed", party="Boom") == 1
        assert value(found, "party_due_tasks") == 0
        assert value(found, "party_no_handler_tasks") == 0
        assert value(found, "party_lease_recoveries_total", party="Noop") is None
        assert value(found, "party_worker_restarts_total") == 0
    finally:
        stop(proc)

    # The stopped scheduler's record still counts; a new one adds to it, never resets it.
    queue.add([{"party": "Noop"}])
    found = samples(scrape(served)[1])
    assert value(found, "party_schedulers") == 0
    assert value(found, "party_no_handler_tasks") == 1
    assert value(found, "party_runs_total", party="Noop", outcome="completed") == 3
    proc = start_scheduler(tmp_path, 1)
    try:
        wait_for(
            lambda: value(samples(scrape(served)[1]), "party_runs_total", party="Noop",
                          outcome="completed") == 4,
            timeout=30, what="the new scheduler's run to count",
        )  # fmt: skip
    finally:
        stop(proc)
    found = samples(scrape(served)[1])
    assert value(found, "party_runs_total", party="Boom", outcome="retried") == 5
    assert value(found, "party_run_seconds_count", party="Noop") == 4
    assert value(found, "party_http_requests_total", method="GET", status="200") >= 3


def test_text_format_by_default_and_openmetrics_when_asked(served):
    served.queue.add([{"party": "Noop"}])
    content_type, text = scrape(served)
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    found = samples(text)
    assert value(found, "party_tasks", status="queued", party="Noop") == 1
    assert value(found, "party_no_handler_tasks") == 1  # no scheduler is live
    assert value(found, "party_oldest_due_seconds") >= 0
    content_type, text = scrape(served, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    names = {f.name for f in parse_openmetrics(text)}
    assert {"party_tasks", "party_runs", "party_run_seconds", "party_schedulers"} <= names


def test_metrics_need_the_token(served):
    request = urllib.request.Request(f"http://127.0.0.1:{served.port}/metrics")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401
    refused.value.close()


def test_methods_a_client_makes_up_share_one_request_series():
    counters = ServerCounters()
    for k in range(300):
        counters.request(f"M{k:05d}", 405)
    counters.request("GET", 200)
    counters.request("DELETE", 405)
    assert counters.requests == {("other", "405"): 300, ("GET", "200"): 1, ("DELETE", "405"): 1}
