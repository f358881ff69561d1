"""Storing events in the transaction of the change they describe, and their commit order.

Delivery (fan-out, the dispatcher) and the sync feed read them later, in `position` order.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, func, select, text, update

from app.db import PreparedInsert, utcnow
from app.webhooks.models import Event

_events = cast(Table, Event.__table__)

REPORT_EVENTS = (
    "report.created",
    "report.updated",
    "report.revoked",
    "report.purged",
    "report.access_changed",
)
EVENT_TYPES = (
    *REPORT_EVENTS,
    "match.found",
    "access_request.created",
    "access_request.decided",
    "audit.checkpoint",
    # Told to the owner of a subscription the dispatcher had to disable (on the sync feed, and
    # to its other subscriptions that ask for it).
    "webhook.disabled",
)

# One sequencer at a time on PostgreSQL (a transaction-scoped advisory lock; the key is
# arbitrary but fixed: "TLSEQ" in ASCII).
_SEQUENCER_LOCK = 0x544C534551

_NEXT_POSITION = select(func.coalesce(func.max(_events.c.position), 0) + 1).scalar_subquery()
_EVENT_KEYS = ["uid", "type", "occurred_at", "recipient", "report_id", "data", "audience"]
_INSERT = PreparedInsert(_events, _EVENT_KEYS)
_INSERT_POSITIONED = PreparedInsert(_events, _EVENT_KEYS, fixed={"position": _NEXT_POSITION})


def emit(
    conn: Connection,
    event_type: str,
    data: dict[str, Any],
    *,
    recipient: str | None = None,
    report_id: str | None = None,
    audience: Iterable[str] | None = None,
) -> None:
    """Store one event with the change that caused it: both commit, or neither does.

    `data` holds ids and codes only; `recipient` is the one member it is meant for, if any;
    `audience` the members beyond the report's current readers it concerns (see Event).
    """
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    row: dict[str, Any] = {
        "uid": str(uuid.uuid4()),
        "type": event_type,
        "occurred_at": utcnow(),
        "recipient": recipient,
        "report_id": report_id,
        "data": data,
        "audience": sorted(set(audience)) if audience is not None else None,
    }
    if conn.dialect.name == "sqlite":
        # One writer at a time: the position taken inside this transaction is the commit order.
        _INSERT_POSITIONED.run(conn, [row])
    else:
        _INSERT.run(conn, [row])


_UNSEQUENCED = (
    select(_events.c.id)
    .where(_events.c.position.is_(None))
    .order_by(_events.c.id)
    .limit(bindparam("limit"))
)
_SET_POSITION = (
    update(_events)
    .where(_events.c.id == bindparam("event_id"))
    .values(position=bindparam("new_position"))
)


def sequence(conn: Connection, *, limit: int = 5000, wait: bool = False) -> int:
    """Give committed events without a position the next ones, in id order; how many.

    PostgreSQL only (SQLite positions events at insert). Run in a transaction of its own: a
    reader that has passed position n can never meet a smaller one later, because positions are
    only ever given, under one lock, to events whose transactions have committed. Without
    `wait`, returns 0 at once when another sequencer holds the lock.
    """
    if conn.dialect.name != "postgresql":
        return 0
    if wait:
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SEQUENCER_LOCK})
    elif not conn.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": _SEQUENCER_LOCK}):
        return 0
    ids = list(conn.scalars(_UNSEQUENCED, {"limit": limit}))
    if not ids:
        return 0
    start = int(conn.scalar(select(func.coalesce(func.max(_events.c.position), 0))) or 0)
    conn.execute(
        _SET_POSITION,
        [{"event_id": i, "new_position": start + n} for n, i in enumerate(ids, start=1)],
    )
    return len(ids)
