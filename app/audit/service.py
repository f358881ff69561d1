"""Recording audit entries in the caller's transaction."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import cast

from sqlalchemy import BigInteger, Connection, Table, bindparam, event, func, select
from sqlalchemy.orm import Session, SessionTransaction

from app.audit import canonical
from app.audit.models import AuditEntry
from app.db import Prepared, PreparedInsert, utcnow
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

# One appender at a time on PostgreSQL, from taking the next index to commit (a transaction-scoped
# advisory lock; the key is arbitrary but fixed: "TLAUDIT" in ASCII). SQLite has one writer anyway.
_APPEND_LOCK = 0x544C4155444954
_NEXT_INDEX = Prepared(select(func.coalesce(func.max(_entries.c.id), -1).label("last")))
_TAKE_LOCK = Prepared(select(func.pg_advisory_xact_lock(bindparam("key", type_=BigInteger))))
_INSERT = PreparedInsert(_entries, [c.key for c in _entries.columns])


def insert_rows(conn: Connection, rows: list[dict[str, object]]) -> None:
    """Append stored forms made by `row` in the connection's transaction, as the log's next leaves.

    Each entry gets the next index and its leaf hash here. On PostgreSQL the log's lock is held
    from here to the commit, so indexes are given in commit order and without gaps: a reader
    never sees index n + 1 before n. Callers append last in their transaction (see `record`),
    so that the lock is held only for the insert and the commit.
    """
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        _TAKE_LOCK.all(conn, {"key": _APPEND_LOCK})
    last = _NEXT_INDEX.first(conn, {})
    start = int(last.last if last is not None else -1) + 1
    stored = []
    for offset, entry in enumerate(rows):
        leaf = {**entry, "id": start + offset}
        leaf["leaf_hash"] = canonical.leaf_hash(leaf)
        stored.append(leaf)
    # Statements on the driver's cursor: this runs for every request (see app.db.Prepared).
    _INSERT.run(conn, stored)


_PENDING = "tearline_audit_pending"


def record(session: Session, actor: Actor, *entries: Entry) -> None:
    """Add entries to the caller's transaction: they commit or vanish with the action.

    They are written when the session commits, after everything else (see `_append_pending`).
    """
    _pending(session).extend(row(actor, e) for e in entries)


class _Pending(list[dict[str, object]]):
    """Rows waiting for the commit, recorded under the session's innermost transaction."""

    def __init__(self, session: Session) -> None:
        super().__init__()
        self._session = session
        self.under: list[SessionTransaction | None] = []

    def extend(self, rows: Iterable[dict[str, object]]) -> None:
        for r in rows:
            self.append(r)

    def append(self, row: dict[str, object]) -> None:
        # The transaction is begun now, so that its rollback (which drops these) is one to see.
        self._session.connection()
        super().append(row)
        self.under.append(self._session.get_nested_transaction() or self._session.get_transaction())

    def drop_under(self, ended: SessionTransaction) -> None:
        """Forget the rows recorded under `ended` or a savepoint inside it."""
        kept = [(row, t) for row, t in zip(self, self.under, strict=True) if not _inside(t, ended)]
        self[:] = [row for row, _ in kept]
        self.under = [t for _, t in kept]


def _inside(transaction: SessionTransaction | None, ended: SessionTransaction) -> bool:
    while transaction is not None:
        if transaction is ended:
            return True
        transaction = transaction.parent
    return False


def _pending(session: Session) -> _Pending:
    pending: _Pending = session.info.setdefault(_PENDING, _Pending(session))
    return pending


@event.listens_for(Session, "before_commit")
def _append_pending(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint released: the rows wait for the real commit
    rows: list[dict[str, object]] = list(session.info.pop(_PENDING, ()))
    if rows:
        # The session's own changes first: once the log's lock is taken, nothing else may wait.
        session.flush()
        insert_rows(session.connection(), rows)


@event.listens_for(Session, "after_soft_rollback")
def _drop_pending(session: Session, ended: SessionTransaction) -> None:
    # Entries recorded in a rolled-back transaction or savepoint vanish with it (refusals are
    # added again after the rollback of the whole transaction).
    pending: _Pending | None = session.info.get(_PENDING)
    if pending is not None:
        pending.drop_under(ended)


def record_refusal(session: Session, actor: Actor, entry: Entry) -> None:
    """Record a refusal that must survive the rollback of the request it refuses."""
    stored = row(actor, entry)

    def add(s: Session) -> None:
        _pending(s).append(stored)

    session.info.setdefault("on_rollback", []).append(add)
    # Also in the current transaction, in case the caller answers without raising.
    add(session)
