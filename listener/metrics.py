"""Prometheus metrics for the web process, plus gauges read from the database and queue at
scrape time so one scrape shows the whole pipeline (intake, backlog, mismatches, mail)."""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Iterator
from datetime import UTC

from flask import Flask, Response, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from sqlalchemy import func, select

from db import EventStatus, EventTally, Mismatch, Notification, StripeEvent
from listener.context import current_config, current_db
from workers import LATENCY_BUCKETS_MS, delivery_figures, last_reconcile, queue_depth

log = logging.getLogger(__name__)

DELIVERIES = Counter(
    "mismatch_webhook_deliveries_total",
    "Webhook deliveries by endpoint and outcome (accepted, duplicate, rejected, store_failed)",
    ["endpoint", "outcome"],
)
VERIFICATION_FAILURES = Counter(
    "mismatch_webhook_verification_failures_total",
    "Rejected webhook deliveries by reason",
    ["endpoint", "reason"],
)
ENQUEUE_FAILURES = Counter(
    "mismatch_webhook_enqueue_failures_total",
    "Stored events whose job could not be queued (the sweeper queues them later)",
    ["endpoint"],
)
REQUEST_SECONDS = Histogram(
    "mismatch_webhook_request_seconds",
    "Time to verify, store and enqueue one delivery",
    ["endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


class PipelineCollector:
    """Gauges computed from the database and Redis on each scrape."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        events = GaugeMetricFamily("mismatch_events", "Inbox events by status", labels=["status"])
        outcomes = GaugeMetricFamily(
            "mismatch_events_by_outcome", "Processed events by outcome", labels=["outcome"]
        )
        mismatches = GaugeMetricFamily(
            "mismatch_mismatches", "Mismatches by status and case", labels=["status", "case"]
        )
        mail = GaugeMetricFamily("mismatch_notifications", "Outbox by status", labels=["status"])
        oldest = GaugeMetricFamily(
            "mismatch_oldest_pending_event_age_seconds",
            "Age of the oldest event not yet processed",
        )
        depth = GaugeMetricFamily("mismatch_queue_depth", "Jobs waiting in the RQ queue")
        missed = GaugeMetricFamily(
            "mismatch_reconcile_missed_subscriptions",
            "Subscriptions the last whole `mismatch reconcile` repaired because no event had "
            "reached us (the missed-webhook alarm)")
        reconciled = GaugeMetricFamily("mismatch_reconcile_last_run_timestamp_seconds",
                                       "When the last whole `mismatch reconcile` ran")
        up = GaugeMetricFamily("mismatch_dependency_up", "Database/Redis reachable", labels=["dep"])
        outbound = GaugeMetricFamily(
            "mismatch_outbound_deliveries",
            "Outbound messages owed to each destination, by status (pending, delivered, failed)",
            labels=["destination", "status"])
        latency = HistogramMetricFamily(
            "mismatch_outbound_response_seconds",
            "How long destinations took to answer the deliveries they accepted",
            labels=["destination"])
        with self.app.app_context():
            try:
                with current_db().session() as s:
                    # Unfinished events from the (status, received_at) index; finished ones
                    # from their tallies (db/history.py): the same cost at any inbox size.
                    unfinished = (EventStatus.RECEIVED, EventStatus.FAILED)
                    by_status = dict.fromkeys([str(x) for x in EventStatus], 0)
                    by_outcome: dict[str, int] = {}
                    for status, outcome, n in s.execute(
                        select(StripeEvent.status, StripeEvent.outcome, func.count())
                        .where(StripeEvent.status.in_(unfinished))
                        .group_by(StripeEvent.status, StripeEvent.outcome)
                    ):
                        by_status[status] += n
                        if outcome is not None:
                            by_outcome[outcome] = by_outcome.get(outcome, 0) + n
                    for status, outcome, n in s.execute(
                        select(EventTally.status, EventTally.outcome, func.sum(EventTally.n))
                        .group_by(EventTally.status, EventTally.outcome)
                    ):
                        by_status[status] = by_status.get(status, 0) + int(n)
                        if outcome:
                            by_outcome[outcome] = by_outcome.get(outcome, 0) + int(n)
                    for status, n in by_status.items():
                        events.add_metric([status], n)
                    for outcome, n in sorted(by_outcome.items()):
                        outcomes.add_metric([outcome], n)
                    for status, case, n in s.execute(
                        select(Mismatch.status, Mismatch.case, func.count()).group_by(
                            Mismatch.status, Mismatch.case
                        )
                    ):
                        mismatches.add_metric([status, str(case)], n)
                    for status, n in s.execute(
                        select(Notification.status, func.count()).group_by(Notification.status)
                    ):
                        mail.add_metric([status], n)
                    figures = delivery_figures(s)
                    for (name, status), n in sorted(figures.by_status.items()):
                        outbound.add_metric([name, status], n)
                    for name, (counted, total_ms, n) in sorted(figures.latency.items()):
                        latency.add_metric(
                            [name], [(str(b / 1000), c) for b, c in
                                     zip(LATENCY_BUCKETS_MS, counted, strict=True)]
                            + [("+Inf", n)], sum_value=total_ms / 1000)
                    first = s.execute(
                        select(func.min(StripeEvent.received_at)).where(
                            StripeEvent.status == EventStatus.RECEIVED
                        )
                    ).scalar()
                    if first is not None:
                        if first.tzinfo is None:
                            first = first.replace(tzinfo=UTC)
                        oldest.add_metric([], max(0.0, time.time() - first.timestamp()))
                    else:
                        oldest.add_metric([], 0.0)
                up.add_metric(["database"], 1)
            except Exception:  # noqa: BLE001 - a scrape must not fail because the DB is down
                log.warning("metrics: database unreachable")
                up.add_metric(["database"], 0)
            try:
                depth.add_metric([], queue_depth(current_config()))
                last = last_reconcile(current_config())
                if last is not None:
                    reconciled.add_metric([], last[0])
                    missed.add_metric([], last[1])
                up.add_metric(["redis"], 1)
            except Exception:  # noqa: BLE001
                log.warning("metrics: redis unreachable")
                up.add_metric(["redis"], 0)
        yield from (events, outcomes, mismatches, mail, oldest, depth, up, missed, reconciled,
                    outbound, latency)


def init_app(app: Flask) -> None:
    pipeline = PipelineCollector(app)

    @app.get("/metrics")
    def metrics() -> Response:
        token = app.config["MISMATCH"].metrics_token
        if token:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                     token.encode()):
                return Response("missing or wrong bearer token (METRICS_TOKEN)\n", 401,
                                {"WWW-Authenticate": "Bearer"}, mimetype="text/plain")
        registry = CollectorRegistry()
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            multiprocess.MultiProcessCollector(registry)
        else:
            registry = REGISTRY
        body = generate_latest(registry) + generate_latest(_OneShot(pipeline))
        return Response(body, mimetype=CONTENT_TYPE_LATEST)


class _OneShot(CollectorRegistry):
    def __init__(self, collector: PipelineCollector) -> None:
        super().__init__(auto_describe=False)
        self._collector = collector

    def collect(self) -> Iterator[Metric]:
        yield from self._collector.collect()
