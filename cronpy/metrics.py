"""Prometheus metrics for `cronpy run --metrics-port` (the `metrics` extra: prometheus-client).

Imported only when asked for: without the option, prometheus-client is never loaded.
"""

from __future__ import annotations

from typing import Callable

from cronpy.errors import UsageError
from cronpy.models import JobSpec, RunRecord, RunStatus

BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, float("inf"))


class Metrics:
    """An Observer of runs that keeps Prometheus series, served over HTTP."""

    def __init__(self, port: int, address: str, running: Callable[[], int],
                 next_runs: Callable[[], dict[str, float]]) -> None:
        try:
            from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
            from prometheus_client.core import GaugeMetricFamily
        except ImportError:
            raise UsageError("--metrics-port needs prometheus-client: pip install 'cronpy-runner[metrics]'") from None
        self.registry = CollectorRegistry()
        self.runs = Counter("cronpy_runs", "Finished runs by job and status.", ["job", "status"], registry=self.registry)
        self.duration = Histogram("cronpy_run_duration_seconds", "Duration of finished runs.", ["job"],
                                  buckets=BUCKETS, registry=self.registry)
        self.last_success = Gauge("cronpy_last_success_timestamp_seconds",
                                  "When the job's latest successful run finished (Unix time).", ["job"],
                                  registry=self.registry)
        self.notifications_dropped = Counter(
            "cronpy_notifications_dropped", "Pings, webhooks and hooks dropped because the endpoints were too "
            "slow and the queue was full.", registry=self.registry)
        gauge_running = Gauge("cronpy_running", "Runs in progress.", registry=self.registry)
        gauge_running.set_function(lambda: float(running()))

        class NextRuns:
            def collect(self):  # type: ignore[no-untyped-def]
                family = GaugeMetricFamily("cronpy_next_run_timestamp_seconds",
                                           "When the job is next due (Unix time).", labels=["job"])
                for job, when in sorted(next_runs().items()):
                    family.add_metric([job], when)
                yield family

        self.registry.register(NextRuns())
        try:
            self.server, self.thread = start_http_server(port, addr=address, registry=self.registry)
        except OSError as exc:
            raise UsageError(f"--metrics-port {port}: cannot listen on {address}: {exc.strerror or exc}") from None

    def run_started(self, spec: JobSpec, run_id: int) -> None:
        pass

    def run_finished(self, spec: JobSpec, record: RunRecord, will_retry: bool) -> None:
        self.runs.labels(spec.name, record.status.value).inc()
        if record.duration is not None and record.status is not RunStatus.SKIPPED:
            self.duration.labels(spec.name).observe(record.duration)
        if record.status is RunStatus.SUCCESS and record.finished_at is not None:
            self.last_success.labels(spec.name).set(record.finished_at.timestamp())

    def close(self) -> None:
        self.server.shutdown()
