"""Recording audit entries in the caller's transaction."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

from sqlalchemy import Connection, Table
from sqlalchemy.orm import Session

from app.audit.models import AuditEntry
from app.db import utcnow
from app.middleware import request_id_var

TARGET_MAX = 128
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def encode_controls(text: str) -> str:
    """Control characters in free text become visible escapes, so entries cannot forge lines."""
    return _CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


@dataclass(frozen=True)
class Actor:
    """Who acted, as far as it is known (a failed token has no verified identity)."""

    member: str | None
    client: str | None


ANONYMOUS = Actor(member=None, client=None)
# Changes made from the command line by whoever operates the service.
OPERATOR = Actor(member=None, client="operator")


@dataclass(frozen=True)
class Entry:
    action: str
    decision: str
    target: str | None = None
    reasons: Sequence[str] = field(default_factory=tuple)
    policy_hash: str | None = None
    purpose: str | None = None


def row(actor: Actor, entry: Entry) -> dict[str, object]:
    """The stored form of an entry, stamped now with the current request's id."""
    return {
        "time": utcnow(),
        "actor": actor.member,
        "client": actor.client,
        "action": entry.action,
        # Targets embed caller-chosen text (a requested id, a path): encoded, and cut to the
        # column so a long one cannot turn a refusal into a server error.
        "target": encode_controls(entry.target)[:TARGET_MAX] if entry.target is not None else None,
        "decision": entry.decision,
        "reasons": [encode_controls(r) for r in entry.reasons],
        "policy_hash": entry.policy_hash,
        "purpose": encode_controls(entry.purpose) if entry.purpose is not None else None,
        "request_id": request_id_var.get(),
    }


_entries = cast(Table, AuditEntry.__table__)


def insert_rows(conn: Connection, rows: list[dict[str, object]]) -> None:
    """Insert stored forms made by `row` in the connection's transaction."""
    if rows:
        conn.execute(_entries.insert(), rows)


def record(session: Session, actor: Actor, *entries: Entry) -> None:
    """Append entries to the caller's transaction: they commit or vanish with the action."""
    insert_rows(session.connection(), [row(actor, e) for e in entries])


def record_refusal(session: Session, actor: Actor, entry: Entry) -> None:
    """Record a refusal that must survive the rollback of the request it refuses."""
    stored = row(actor, entry)

    def add(s: Session) -> None:
        insert_rows(s.connection(), [stored])

    session.info.setdefault("on_rollback", []).append(add)
    # Also in the current transaction, in case the caller answers without raising.
    add(session)
