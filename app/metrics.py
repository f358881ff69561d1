"""Prometheus metrics: the instruments of one application instance, and `GET /metrics`.

Counters and histograms live in a registry of the instance's own, not the process-wide default:
tests build many apps in one process, and each instance's figures are its own. The figures held
by the database (backlogs, sizes, stored decisions) are read at each scrape, on one connection
of the read engine; when it fails they are left out and the rest is still served.

Labels are route templates, methods, status codes, levels and outcomes: never an id, a token, a
member's code or anything a member wrote, so nothing confidential reaches the monitoring system
and no caller can grow the number of series.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from sqlalchemy import Connection, func, select, text
from sqlalchemy.exc import SQLAlchemyError

from app.audit import checkpoints, tree
from app.db import Database, utcnow
from app.policy.bundle import Level
from app.reports.models import effective_level

log = logging.getLogger("tearline.metrics")

# The text format generate_latest writes. prometheus_client's CONTENT_TYPE_LATEST names version
# 1.0.0 since 0.22; 0.0.4 is the one every Prometheus server reads.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# The route label of a request no route matched: its path is the caller's to choose.
UNMATCHED = "unmatched"
# Methods are the caller's to choose too; any other is counted as "other".
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Seconds; most answers take a few milliseconds, searches and exports longer.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

OUTCOMES = ("succeeded", "failed")

# No `_created` series beside each counter and histogram: they double the series and Prometheus
# finds resets without them. (A setting of the library, for the whole process.)
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in the library

DECIDED_LEVELS = tuple(level.value for level in Level if level is not Level.NONE)


class Metrics:
    """The counters and histograms of one application instance, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tearline_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ("route", "method", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "tearline_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template and method.",
            ("route", "method"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.webhook_attempts = Counter(
            "tearline_webhook_attempts",
            "Webhook delivery attempts recorded by this process's dispatcher, by outcome "
            "(a failed attempt may be tried again).",
            ("outcome",),
            registry=self.registry,
        )
        for outcome in OUTCOMES:
            self.webhook_attempts.labels(outcome)
        self.checkpoints = Counter(
            "tearline_audit_checkpoints_issued",
            "Signed audit checkpoints issued by this process's maintainer.",
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        method = method if method in METHODS else "other"
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)

    def count_attempts(self, succeeded: int, failed: int) -> None:
        """Count recorded webhook attempts by outcome."""
        if succeeded:
            self.webhook_attempts.labels("succeeded").inc(succeeded)
        if failed:
            self.webhook_attempts.labels("failed").inc(failed)


@dataclass(frozen=True)
class Snapshot:
    """The figures the database holds, as of one scrape."""

    decisions: dict[str, int]
    events_waiting: int
    deliveries: dict[str, int]
    log_size: int
    tree_size: int
    checkpoint_size: int


# Literal statements: the ones on deliveries and unsequenced events repeat the conditions of the
# partial indexes that answer them (SQLite uses a partial index only then). "fanout" is
# app.webhooks.delivery.FANOUT, not imported: that module imports most of the application.
_WAITING_SEQUENCED = text(
    "SELECT count(*) FROM events"
    " WHERE position > (SELECT position FROM webhook_cursors WHERE name = 'fanout')"
)
_WAITING_UNSEQUENCED = text("SELECT count(*) FROM events WHERE position IS NULL")
_QUEUED = {
    "pending": text("SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'"),
    "sending": text("SELECT count(*) FROM webhook_deliveries WHERE status = 'sending'"),
}


def _decisions(conn: Connection) -> dict[str, int]:
    # The level in force now: one resting on an expired grant counts as the level after it.
    levels = select(effective_level()).subquery()
    rows = conn.execute(
        select(levels.c.level, func.count()).group_by(levels.c.level), {"now": utcnow()}
    )
    counted = {str(level): int(n) for level, n in rows if level is not None}
    return {level: counted.get(level, 0) for level in DECIDED_LEVELS}


def snapshot(conn: Connection) -> Snapshot:
    """Read the database's figures: a handful of counts, each answered from an index or a row,
    except the stored decisions, which are counted in one pass over their table."""
    latest = checkpoints.latest(conn)
    return Snapshot(
        decisions=_decisions(conn),
        # Events the fan-out has not passed yet (on PostgreSQL also those not yet sequenced).
        events_waiting=int(conn.execute(_WAITING_SEQUENCED).scalar_one())
        + int(conn.execute(_WAITING_UNSEQUENCED).scalar_one()),
        deliveries={s: int(conn.execute(q).scalar_one()) for s, q in _QUEUED.items()},
        log_size=tree.log_size(conn),
        tree_size=tree.tree_size(conn),
        checkpoint_size=0 if latest is None else latest.tree_size,
    )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _labelled(name: str, documentation: str, label: str, values: dict[str, int]) -> Metric:
    family = GaugeMetricFamily(name, documentation, labels=(label,))
    for key, value in values.items():
        family.add_metric((key,), value)
    return family


def database_families(snap: Snapshot | None) -> list[Metric]:
    """The gauges of a snapshot; only `tearline_database_up 0` when there is none."""
    up = _gauge(
        "tearline_database_up",
        "Whether the database answered this scrape (its gauges are left out when not).",
        0 if snap is None else 1,
    )
    if snap is None:
        return [up]
    return [
        up,
        _labelled(
            "tearline_report_access_decisions",
            "Stored access decisions (report, member) by the level in force.",
            "level",
            snap.decisions,
        ),
        _gauge(
            "tearline_webhook_events_waiting",
            "Outbox events not yet fanned out to subscriptions.",
            snap.events_waiting,
        ),
        _labelled(
            "tearline_webhook_deliveries_queued",
            "Webhook deliveries not yet done, by status (pending: due later or now; sending: "
            "claimed by a worker).",
            "status",
            snap.deliveries,
        ),
        _gauge("tearline_audit_log_entries", "Committed audit log entries.", snap.log_size),
        _gauge("tearline_audit_tree_size", "Audit entries the Merkle tree covers.", snap.tree_size),
        _gauge(
            "tearline_audit_checkpoint_tree_size",
            "Tree size of the latest signed checkpoint (0: none yet).",
            snap.checkpoint_size,
        ),
    ]


@dataclass(frozen=True)
class _Scrape:
    """The instance's registry and this scrape's database gauges, as one collector."""

    registry: CollectorRegistry
    extra: Iterable[Metric]

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()
        yield from self.extra


async def exposition(metrics: Metrics, db: Database) -> bytes:
    """Every metric in the Prometheus text format; without the database's when it is down."""
    snap: Snapshot | None
    try:
        snap = await db.read(snapshot)
    except SQLAlchemyError as exc:
        # The request figures still help most when the database is down; /readyz says why.
        log.warning("metrics scrape without database gauges: %s", type(exc).__name__)
        snap = None
    return generate_latest(_Scrape(metrics.registry, database_families(snap)))
