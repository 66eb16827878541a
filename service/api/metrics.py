"""Prometheus metrics: request counts and latency per route, jobs by status, queue length, task durations.

Request metrics are recorded by a plain ASGI middleware (no per-request task or thread, unlike Starlette's
BaseHTTPMiddleware) and labelled by the route *template* (``/v1/jobs/{job_id}``), never the raw path, so
ids cannot blow up the number of series. Job counts and the queue length are read at scrape time: they
live in the database and the broker, and a scrape every few seconds is cheaper than keeping counters in
sync across API replicas and workers. Task durations come from the same place: every finished unit of work
stores its run time, so the histogram covers all workers on all hosts without a metrics port per worker.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core.db import Database
from service.core.kinds import KINDS, work_tables
from service.core.models import JOB_STATUSES, Job

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


TASK_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 4 * 3600.0)


def _duration_histograms(session: Any) -> Iterator[Metric]:
    """``bnrank_task_duration_seconds`` by task kind and outcome, from the finished rows (one query each)."""
    family = HistogramMetricFamily(
        "bnrank_task_duration_seconds", "Run time of finished tasks", labels=["task", "status"]
    )
    for rows in work_tables():
        buckets = [func.sum(case((rows.seconds <= b, 1), else_=0)) for b in TASK_BUCKETS]
        query = (
            select(Job.kind, rows.status, func.count(), func.sum(rows.seconds), *buckets)
            .join(Job, Job.id == rows.job_id)
            .where(rows.status.in_(("ok", "failed")))
            .group_by(Job.kind, rows.status)
        )
        for job_kind, status, count, total, *cumulative in session.execute(query):
            task = TASK_LABELS.get(job_kind, job_kind)
            points = [(str(b), int(c or 0)) for b, c in zip(TASK_BUCKETS, cumulative, strict=True)]
            family.add_metric([task, status], [*points, ("+Inf", int(count))], float(total or 0.0))
    yield family


TASK_LABELS = {kind.name: kind.task_label for kind in KINDS.values()}


class StateCollector(Collector):
    """Jobs by status and task durations (from the database), tasks waiting in the queue (from the broker)."""

    def __init__(self, db: Database, queue_length: Callable[[], int | None]) -> None:
        self.db = db
        self.queue_length = queue_length

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("bnrank_jobs", "Jobs by status", labels=["status"])
        try:
            with self.db.sessions() as session:
                counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        except Exception as exc:  # a scrape must not fail because the database is down
            log.warning("metrics: cannot count jobs: %s", exc)
            counts = None
        if counts is not None:
            for status in JOB_STATUSES:
                jobs.add_metric([status], counts.get(status, 0))
            yield jobs
        try:
            with self.db.sessions() as session:
                yield from list(_duration_histograms(session))
        except Exception as exc:
            log.warning("metrics: cannot read task durations: %s", exc)
        try:
            length = self.queue_length()
        except Exception as exc:
            log.warning("metrics: cannot read the queue length: %s", exc)
            length = None
        if length is not None:
            yield GaugeMetricFamily("bnrank_queue_length", "Tasks waiting in the broker queue", value=length)


class Metrics:
    """One registry per app, so several apps in one process (tests) do not collide.

    Behind several API processes (``PROMETHEUS_MULTIPROC_DIR`` set by `bnrank serve`) each process writes its
    counters to files there, and a scrape, whichever process answers it, adds up every process's
    (prometheus_client's multiprocess mode); ``registry`` is then what a scrape reads.
    """

    def __init__(self) -> None:
        own = CollectorRegistry()
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            self.registry = CollectorRegistry()
            MultiProcessCollector(self.registry)
        else:
            self.registry = own
        self.requests = Counter(
            "bnrank_http_requests",
            "HTTP requests by method, route template and status",
            ["method", "route", "status"],
            registry=own,
        )
        self.latency = Histogram(
            "bnrank_http_request_duration_seconds",
            "HTTP request latency (to the end of the response body)",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=own,
        )

    def add_state(self, collector: StateCollector) -> None:
        self.registry.register(collector)


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(method, template, str(status[0])).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - started)
