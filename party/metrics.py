"""The metrics of a Party deployment, for ``GET /metrics`` (prometheus_client's one home).

``render`` writes one scrape from a ``Sample``: the gauges read from the store (tasks by status and
handler, due tasks, the oldest one's wait, ``no_handler`` tasks, live schedulers and workers), the
schedulers' counters and histograms summed over every heartbeat record in the store, live and past
(so one scrape target covers every scheduler, and a restarted scheduler adds a record instead of
resetting one: a counter never goes down), and this server's own counters (``ServerCounters``).
The histogram buckets are defined here once; ``scheduler.heartbeat`` keeps its counts per bucket.

prometheus_client is imported when a scrape is rendered, not with the module: the scheduler imports
the buckets and must not pay for it. Imports ``views`` and the standard library only.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .views import Live, Views, sum_runs

#: Upper bounds (seconds) of ``party_run_seconds``: a handler's run, from start to outcome.
RUN_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
)  # fmt: skip
#: Upper bounds (seconds) of ``party_start_lateness_seconds``: from due (or the retry's end) to
#: the run's start.
LATENESS_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip
#: The histograms of a heartbeat record: record key -> (metric name, buckets, help).
HISTOGRAMS: Mapping[str, tuple[str, tuple[float, ...], str]] = {
    "run_seconds": ("party_run_seconds", RUN_BUCKETS, "Duration of finished runs, by handler."),
    "lateness": (
        "party_start_lateness_seconds",
        LATENESS_BUCKETS,
        "Seconds from a task's due time to its run's start, by handler.",
    ),
}
OUTCOMES = ("completed", "retried", "failed")
#: The text format 0.0.4 content type (prometheus_client's CONTENT_TYPE_LATEST).
TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def observe(histogram: dict[str, Any], value: float, buckets: Sequence[float]) -> None:
    """Count ``value`` in ``histogram``, in place (see ``observe_all``)."""
    observe_all(histogram, (value,), buckets)


def observe_all(
    histogram: dict[str, Any], values: Sequence[float], buckets: Sequence[float]
) -> None:
    """Count each of ``values`` in ``histogram`` (``{"buckets": [n per bucket, +Inf last], "sum",
    "count"}``, the non-cumulative form a heartbeat record keeps), in place, in one call for a
    batch of runs: the sum is added in the values' order."""
    counts = histogram.setdefault("buckets", [0] * (len(buckets) + 1))
    total = histogram.get("sum", 0.0)
    for value in values:
        counts[bisect_left(buckets, value)] += 1
        total += value
    histogram["sum"] = total
    histogram["count"] = histogram.get("count", 0) + len(values)


#: The methods ``party_http_requests_total`` labels by name; any other is ``other``.
HTTP_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"))


class ServerCounters:
    """This server process's own counters: requests by method and status, singleton conflicts.

    Per process (a restart starts them again at 0, as any process counter does); thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str], int] = {}
        self.singleton_conflicts = 0

    def request(self, method: str, status: int, path: str = "") -> None:
        """Count one answered request (a 409 to ``POST /tasks`` is a singleton conflict). A method
        outside HTTP's own is counted as ``other``: each one a client makes up would otherwise be
        a series of its own, for as long as the server lives."""
        if method not in HTTP_METHODS:
            method = "other"
        with self._lock:
            key = (method, str(status))
            self.requests[key] = self.requests.get(key, 0) + 1
            if status == 409 and method == "POST" and path.rstrip("/") == "/tasks":
                self.singleton_conflicts += 1


@dataclass
class Sample:
    """What one scrape reports, read from the store (``sample``) off the event loop."""

    stats: dict[str, Any]
    live: list[dict[str, Any]]
    records: list[dict[str, Any]]
    runs: dict[str, dict[str, int]] = field(default_factory=dict)
    recoveries: dict[str, int] = field(default_factory=dict)
    restarts: int = 0


def sample(views: Views) -> Sample:
    """Read a scrape's figures: the stats, then every heartbeat record (two store reads)."""
    records = views.schedulers(live=False)
    now = views.clock()
    live_ids = {r["id"] for r in views.schedulers(now=now)}
    live = [r for r in records if r["id"] in live_ids]
    recoveries: dict[str, int] = {}
    for record in records:
        for party, n in (record.get("recovered") or {}).items():
            recoveries[party] = recoveries.get(party, 0) + int(n)
    return Sample(
        stats=views.stats(Live(at=now, schedulers=tuple(live))),
        live=live,
        records=records,
        runs=sum_runs(records),
        recoveries=recoveries,
        restarts=sum(int(r.get("worker_restarts", 0)) for r in records),
    )


def render(
    figures: Sample, server: ServerCounters | None = None, *, openmetrics: bool = False
) -> tuple[bytes, str]:
    """The scrape's body and content type: text format 0.0.4, or OpenMetrics when asked."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import generate_latest
    from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS
    from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(figures, server))
    if openmetrics:
        return generate_openmetrics(registry), OPENMETRICS
    # PRODUCT names 0.0.4 (what every Prometheus scrapes); the library's own "latest" moved on.
    return generate_latest(registry), TEXT_TYPE


def wants_openmetrics(accept: str | None) -> bool:
    """True when an ``Accept`` header asks for OpenMetrics (as Prometheus sends it)."""
    return bool(accept) and "application/openmetrics-text" in accept


class _Collector:
    """Yields the families of one ``Sample`` (a custom collector: values read, not tracked)."""

    def __init__(self, figures: Sample, server: ServerCounters | None) -> None:
        self.figures = figures
        self.server = server

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        f = self.figures
        tasks = GaugeMetricFamily(
            "party_tasks", "Tasks in the store by status and handler.", labels=["status", "party"]
        )
        for party, counts in sorted(f.stats["parties"].items()):
            for status in f.stats["statuses"]:
                tasks.add_metric([status, party], counts.get(status, 0))
        yield tasks
        yield GaugeMetricFamily("party_due_tasks", "Queued tasks whose time has come.",
                                value=f.stats["due"])  # fmt: skip
        oldest = f.stats.get("oldest_due_seconds")
        yield GaugeMetricFamily(
            "party_oldest_due_seconds",
            "How long the oldest due task has waited (0 when none is due).",
            value=oldest or 0.0,
        )
        yield GaugeMetricFamily(
            "party_no_handler_tasks",
            "Queued tasks whose handler no live scheduler has loaded.",
            value=f.stats.get("no_handler", 0),
        )
        yield GaugeMetricFamily(
            "party_pruned_tasks",
            "Tasks removed by retention since the store was created.",
            value=f.stats.get("pruned", 0),
        )
        yield GaugeMetricFamily("party_schedulers", "Live schedulers on the store.",
                                value=len(f.live))  # fmt: skip
        yield GaugeMetricFamily(
            "party_workers", "Worker processes of the live schedulers.",
            value=sum(int(r.get("workers", 0)) for r in f.live),
        )  # fmt: skip
        yield GaugeMetricFamily(
            "party_running_runs", "Runs in progress that the live schedulers report.",
            value=sum(len(r.get("running", ())) for r in f.live),
        )  # fmt: skip
        runs = CounterMetricFamily(
            "party_runs",
            "Finished runs by handler and outcome (completed; retried: failed and queued again; "
            "failed: for good), over every scheduler of the store.",
            labels=["party", "outcome"],
        )
        for party, counts in sorted(f.runs.items()):
            for outcome in OUTCOMES:
                runs.add_metric([party, outcome], counts.get(outcome, 0))
        yield runs
        recoveries = CounterMetricFamily(
            "party_lease_recoveries",
            "Runs lost to a crash whose lease was recovered, by handler.",
            labels=["party"],
        )
        for party, n in sorted(f.recoveries.items()):
            recoveries.add_metric([party], n)
        yield recoveries
        yield CounterMetricFamily(
            "party_worker_restarts",
            "Worker processes the schedulers replaced after they died.",
            value=f.restarts,
        )
        for key, (name, buckets, text) in HISTOGRAMS.items():
            family = HistogramMetricFamily(name, text, labels=["party"])
            for party, hist in sorted(_sum_histograms(f.records, key, len(buckets)).items()):
                cumulative, running = [], 0
                for bound, n in zip((*map(_bound, buckets), "+Inf"), hist["buckets"], strict=True):
                    running += n
                    cumulative.append((bound, running))
                family.add_metric([party], cumulative, sum_value=hist["sum"])
            yield family
        if self.server is not None:
            requests = CounterMetricFamily(
                "party_http_requests",
                "Requests this server answered, by method and status.",
                labels=["method", "status"],
            )
            for (method, status), n in sorted(self.server.requests.items()):
                requests.add_metric([method, status], n)
            yield requests
            yield CounterMetricFamily(
                "party_singleton_conflicts",
                "Adds this server refused with 409 (a recurring task already live).",
                value=self.server.singleton_conflicts,
            )


def _bound(value: float) -> str:
    return repr(float(value))


def _sum_histograms(
    records: Sequence[Mapping[str, Any]], key: str, size: int
) -> dict[str, dict[str, Any]]:
    total: dict[str, dict[str, Any]] = {}
    for record in records:
        for party, hist in (record.get(key) or {}).items():
            counts = hist.get("buckets") or []
            if len(counts) != size + 1:
                continue  # written with other buckets (another version): cannot be summed
            into = total.setdefault(party, {"buckets": [0] * (size + 1), "sum": 0.0})
            into["buckets"] = [a + b for a, b in zip(into["buckets"], counts, strict=True)]
            into["sum"] += float(hist.get("sum", 0.0))
    return total
