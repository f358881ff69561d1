"""Storing events in the transaction of the change they describe; delivery reads them later."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Connection, Table

from app.db import utcnow
from app.webhooks.models import Event

_events = cast(Table, Event.__table__)

EVENT_TYPES = (
    "report.created",
    "report.updated",
    "report.revoked",
    "report.purged",
    "report.access_changed",
    "match.found",
    "access_request.created",
    "access_request.decided",
    "audit.checkpoint",
)


def emit(
    conn: Connection,
    event_type: str,
    data: dict[str, Any],
    *,
    recipient: str | None = None,
    report_id: str | None = None,
) -> None:
    """Store one event with the change that caused it: both commit, or neither does.

    `data` holds ids and codes only; `recipient` is the one member it is meant for, if any.
    """
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    conn.execute(
        _events.insert(),
        [
            {
                "type": event_type,
                "occurred_at": utcnow(),
                "recipient": recipient,
                "report_id": report_id,
                "data": data,
            }
        ],
    )
