"""Who may learn of an event, fan-out to subscriptions, and claiming and recording deliveries.

Everything here runs inside one database transaction per call (the dispatcher's units of
work); nothing here talks to the network. The rule of delivery: what a subscriber learns is
decided when it is sent, from the stored decisions in force then (a member that lost access
gets no content), and a withdrawal reaches every member that could read the report before.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Row,
    RowMapping,
    Table,
    and_,
    bindparam,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.auth.service import Principal
from app.config import Settings
from app.db import utcnow
from app.errors import NotFound
from app.keys.service import Envelope
from app.kit import crypto, jwe
from app.kit.crypto import CorruptionError, SecretBytes
from app.policy.service import READABLE_LEVELS, PolicyState
from app.reports import service as reports
from app.reports.models import Report, ReportAccess, effective_level
from app.reports.schemas import report_out
from app.webhooks import service as events
from app.webhooks.models import Attempt, Cursor, Delivery, Event, Subscription

log = logging.getLogger("tearline.webhooks")

_events = cast(Table, Event.__table__)
_subs = cast(Table, Subscription.__table__)
_deliveries = cast(Table, Delivery.__table__)
_attempts = cast(Table, Attempt.__table__)
_cursors = cast(Table, Cursor.__table__)
_access = cast(Table, ReportAccess.__table__)
_reports = cast(Table, Report.__table__)

FANOUT = "fanout"
# Levels at which a member may learn that a report matched (a hit names the report only).
VISIBLE_LEVELS = frozenset({"full", "tearline", "hit"})
# Events whose `jwe` form carries the report at the subscriber's level.
CONTENT_EVENTS = frozenset({"report.created", "report.updated", "report.access_changed"})
# A Retry-After is honoured up to this long; beyond it the subscriber is not believed.
MAX_RETRY_AFTER = 86400.0
CHUNK = 500


@dataclass(frozen=True)
class StoredEvent:
    id: int
    uid: str
    type: str
    occurred_at: datetime
    recipient: str | None
    report_id: str | None
    data: dict[str, Any]
    audience: frozenset[str]
    position: int

    @classmethod
    def from_row(cls, row: Row[Any] | Any, prefix: str = "") -> StoredEvent:
        """The event in a row of EVENT_COLUMNS, each labelled `prefix` + its name."""
        m = row._mapping
        return cls(
            id=m[f"{prefix}id"],
            uid=m[f"{prefix}uid"],
            type=m[f"{prefix}type"],
            occurred_at=m[f"{prefix}occurred_at"],
            recipient=m[f"{prefix}recipient"],
            report_id=m[f"{prefix}report_id"],
            data=dict(m[f"{prefix}data"]),
            audience=frozenset(m[f"{prefix}audience"] or ()),
            position=m[f"{prefix}position"],
        )

    @property
    def about(self) -> str | None:
        """The report whose stored decision says whether a member may learn of this event."""
        if self.type == "match.found":
            return cast(str, self.data["matched_report_id"])
        if self.type in events.REPORT_EVENTS:
            return self.report_id
        return None


EVENT_COLUMNS = (
    _events.c.id,
    _events.c.uid,
    _events.c.type,
    _events.c.occurred_at,
    _events.c.recipient,
    _events.c.report_id,
    _events.c.data,
    _events.c.audience,
    _events.c.position,
)

_AFTER = (
    select(*EVENT_COLUMNS)
    .where(_events.c.position > bindparam("position"))
    .order_by(_events.c.position)
    .limit(bindparam("limit"))
)


def events_after(conn: Connection, position: int, limit: int) -> list[StoredEvent]:
    """Up to `limit` sequenced events after `position`, in commit order."""
    rows = conn.execute(_AFTER, {"position": position, "limit": limit})
    return [StoredEvent.from_row(r) for r in rows]


Levels = Mapping[tuple[str, str], str]


def levels_of(
    conn: Connection, policy_hash: str, report_ids: Iterable[str], members: Iterable[str]
) -> dict[tuple[str, str], str]:
    """Each (report, member)'s level now under the bundle in force; absent means none."""
    ids = sorted(set(report_ids))
    codes = sorted(set(members))
    out: dict[tuple[str, str], str] = {}
    if not ids or not codes:
        return out
    now = utcnow()
    for start in range(0, len(ids), CHUNK):
        stmt = select(_access.c.report_id, _access.c.member_code, effective_level()).where(
            _access.c.report_id.in_(ids[start : start + CHUNK]),
            _access.c.member_code.in_(codes),
            _access.c.policy_hash == policy_hash,
        )
        for report_id, member, level in conn.execute(stmt, {"now": now}):
            if level is not None:
                out[(report_id, member)] = level
    return out


def undecided(conn: Connection, policy_hash: str, report_ids: Iterable[str]) -> frozenset[str]:
    """Reports whose stored decisions were made under another bundle than `policy_hash`.

    Until they are decided again nobody may be told of them (reads fail closed), and nobody may
    be passed over either: fan-out and the sync feed stop before the first such event and come
    back to it.
    """
    ids = sorted(set(report_ids))
    out: set[str] = set()
    for start in range(0, len(ids), CHUNK):
        out.update(
            conn.scalars(
                select(_access.c.report_id)
                .where(
                    _access.c.report_id.in_(ids[start : start + CHUNK]),
                    # Two ranges rather than "!=", which no index serves.
                    or_(_access.c.policy_hash < policy_hash, _access.c.policy_hash > policy_hash),
                )
                .distinct()
            )
        )
    return frozenset(out)


def decided_prefix(
    conn: Connection, policy_hash: str, batch: list[StoredEvent]
) -> list[StoredEvent]:
    """The events of `batch` before the first one about a report awaiting re-decision."""
    waiting = undecided(conn, policy_hash, (e.about for e in batch if e.about is not None))
    if not waiting:
        return batch
    for i, event in enumerate(batch):
        if event.about in waiting:
            return batch[:i]
    return batch


@dataclass(frozen=True)
class Entitlement:
    """A member may learn of an event; `access` is its level on the report it is about."""

    access: str | None


def entitlement(
    event: StoredEvent, member: str, levels: Levels, chairs: frozenset[str]
) -> Entitlement | None:
    """Whether `member` may learn of `event` now (None: it may not, and must not notice)."""
    kind = event.type
    if kind in events.REPORT_EVENTS:
        level = levels.get((event.report_id or "", member), "none")
        if kind in ("report.created", "report.updated"):
            allowed = level in READABLE_LEVELS or member in event.audience
        else:
            # A withdrawal reaches those that could read before; a change of access, exactly
            # the members whose level changed.
            allowed = member in event.audience
        return Entitlement(level) if allowed else None
    if kind == "audit.checkpoint":
        return Entitlement(None) if member in chairs else None
    if event.recipient != member:
        return None
    if kind == "match.found":
        level = levels.get((cast(str, event.about), member), "none")
        return Entitlement(level) if level in VISIBLE_LEVELS else None
    return Entitlement(None)


def thin_data(event: StoredEvent, allowed: Entitlement) -> dict[str, Any]:
    """The event's `data` as this member may see it, with its level where there is a report."""
    data = dict(event.data)
    if event.type in events.REPORT_EVENTS:
        if allowed.access not in READABLE_LEVELS:
            # It learns of the change (a withdrawal, a lost access), not the new markings.
            data.pop("topics", None)
        data["access"] = allowed.access
    elif event.type == "match.found":
        data["access"] = allowed.access
    return data


def payload(event: StoredEvent, data: dict[str, Any]) -> dict[str, Any]:
    """The shape shared by webhook bodies and the sync feed."""
    return {
        "id": event.uid,
        "type": event.type,
        "timestamp": event.occurred_at.isoformat(),
        "data": data,
    }


def chairs_of(state: PolicyState) -> frozenset[str]:
    return frozenset(code for code, m in state.bundle.members.items() if m.is_chair)


# -- fan-out ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A subscription as fan-out and claiming see it."""

    id: str
    member: str
    events: frozenset[str]
    topics: frozenset[str] | None
    created_at: datetime

    def wants(self, event: StoredEvent, allowed: Entitlement) -> bool:
        if event.type not in self.events or event.occurred_at < self.created_at:
            return False
        if event.type in events.REPORT_EVENTS and allowed.access not in READABLE_LEVELS:
            # A withdrawal or lost access reaches a former reader whatever its topic filter:
            # filtering on the report's current topics would tell it what they are now.
            return True
        topics = event.data.get("topics")
        return self.topics is None or topics is None or not self.topics.isdisjoint(topics)


def _targets(conn: Connection, state: PolicyState) -> list[Target]:
    rows = conn.execute(
        select(
            _subs.c.id, _subs.c.member_code, _subs.c.events, _subs.c.topics, _subs.c.created_at
        ).where(_subs.c.status == "active")
    )
    taxonomy = state.bundle.taxonomy
    return [
        Target(
            id=r.id,
            member=r.member_code,
            events=frozenset(r.events),
            # Branches in a filter stand for their leaves (reports carry leaf codes only).
            topics=taxonomy.expand(r.topics) if r.topics is not None else None,
            created_at=r.created_at,
        )
        for r in rows
    ]


def fan_out(session: Session, state: PolicyState, *, limit: int = CHUNK) -> int:
    """Turn the next sequenced events into deliveries for the subscriptions entitled to them.

    Returns how many events were passed (0: none waiting, or another worker is at it). The
    cursor row is locked for the transaction, so two workers never fan out the same event.
    """
    conn = session.connection()
    locked = conn.execute(
        select(_cursors.c.position)
        .where(_cursors.c.name == FANOUT)
        .with_for_update(skip_locked=True)
    ).first()
    if locked is None:
        return 0
    batch = decided_prefix(conn, state.bundle.hash, events_after(conn, locked.position, limit))
    if not batch:
        return 0
    targets = _targets(conn, state)
    rows: list[dict[str, Any]] = []
    if targets:
        levels = levels_of(
            conn,
            state.bundle.hash,
            (e.about for e in batch if e.about is not None),
            (t.member for t in targets),
        )
        chairs = chairs_of(state)
        now = utcnow()
        for event in batch:
            for target in targets:
                allowed = entitlement(event, target.member, levels, chairs)
                if allowed is not None and target.wants(event, allowed):
                    rows.append(_new_delivery(target.id, event.id, "event", now))
    if rows:
        conn.execute(_deliveries.insert(), rows)
    conn.execute(
        update(_cursors).where(_cursors.c.name == FANOUT).values(position=batch[-1].position)
    )
    return len(batch)


def _new_delivery(
    subscription_id: str, event_id: int | None, kind: str, now: datetime
) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "subscription_id": subscription_id,
        "event_id": event_id,
        "kind": kind,
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
    }


def queue_ping(conn: Connection, subscription_id: str) -> str:
    """A ping delivery, due now; its id."""
    row = _new_delivery(subscription_id, None, "ping", utcnow())
    conn.execute(_deliveries.insert(), [row])
    return cast(str, row["id"])


# -- secrets ---------------------------------------------------------------------------------


def secret_aad(subscription_id: str, serial: int) -> bytes:
    return crypto.associated_data("webhook_subscriptions.secret", subscription_id, serial)


def signing_secrets(
    conn: Connection, envelope: Envelope, sub: Row[Any], now: datetime
) -> tuple[SecretBytes, ...]:
    """The secrets that sign now: the current one, and the previous during its overlap."""
    m = sub._mapping
    member = m["member_code"]
    current = envelope.open_secret(
        conn,
        member,
        m["secret_key_version"],
        m["secret_ct"],
        secret_aad(m["id"], m["secret_serial"]),
    )
    until = m["previous_until"]
    if m["previous_ct"] is None or until is None or until <= now:
        return (current,)
    previous = envelope.open_secret(
        conn,
        member,
        m["previous_key_version"],
        m["previous_ct"],
        secret_aad(m["id"], m["secret_serial"] - 1),
    )
    return (current, previous)


# -- claiming --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One attempt to make: what to send where, signed by whom."""

    delivery_id: str
    subscription_id: str
    url: str
    msg_id: str
    body: bytes
    secrets: tuple[SecretBytes, ...]
    attempt: int

    def __repr__(self) -> str:  # the secrets and the body stay out of logs
        return f"Job(delivery={self.delivery_id}, attempt={self.attempt})"


@dataclass(frozen=True)
class DeliveryServices:
    """What claiming needs from the application."""

    policy: PolicyState
    envelope: Envelope
    settings: Settings


_DUE = (
    select(_deliveries.c.id)
    .join(_subs, _subs.c.id == _deliveries.c.subscription_id)
    .where(
        _deliveries.c.status == "pending",
        _deliveries.c.next_attempt_at <= bindparam("now"),
        _subs.c.status == "active",
    )
    .order_by(_deliveries.c.next_attempt_at)
    .limit(bindparam("limit"))
    .with_for_update(of=_deliveries, skip_locked=True)
)
# Claims whose worker died (its lease ran out without an outcome): tried again.
_ABANDONED = (
    select(_deliveries.c.id)
    .join(_subs, _subs.c.id == _deliveries.c.subscription_id)
    .where(
        _deliveries.c.status == "sending",
        _deliveries.c.lease_until < bindparam("now"),
        _subs.c.status == "active",
    )
    .limit(bindparam("limit"))
    .with_for_update(of=_deliveries, skip_locked=True)
)


def claim(session: Session, services: DeliveryServices, *, limit: int) -> list[Job]:
    """Claim up to `limit` due deliveries for this worker and prepare their attempts.

    Rows are taken with FOR UPDATE SKIP LOCKED on PostgreSQL (SQLite has one writer at a time),
    then marked `sending` under a lease: no other worker claims them until the lease runs out.
    Whether the subscriber may learn of each event is decided here, and the decision audited.
    """
    conn = session.connection()
    now = utcnow()
    params = {"now": now, "limit": limit}
    ids = list(conn.scalars(_DUE, params))
    if len(ids) < limit:
        ids += conn.scalars(_ABANDONED, {"now": now, "limit": limit - len(ids)})
    if not ids:
        return []
    rows = conn.execute(
        select(
            _deliveries.c.id.label("delivery_id"),
            _deliveries.c.kind,
            _deliveries.c.attempts,
            _subs,
            *[c.label(f"event_{c.name}") for c in EVENT_COLUMNS],
        )
        .join(_subs, _subs.c.id == _deliveries.c.subscription_id)
        .outerjoin(_events, _events.c.id == _deliveries.c.event_id)
        .where(_deliveries.c.id.in_(ids))
    ).all()
    state = services.policy
    found = [_event_of(r) for r in rows]
    waiting = undecided(conn, state.bundle.hash, (e.about for e in found if e and e.about))
    if waiting:
        # Decided again within moments (the re-decider is at it); neither sent nor withheld now.
        later = [
            r.delivery_id for r, e in zip(rows, found, strict=True) if e and e.about in waiting
        ]
        conn.execute(
            update(_deliveries)
            .where(_deliveries.c.id.in_(later))
            .values(next_attempt_at=now + timedelta(seconds=1))
        )
        kept = [(r, e) for r, e in zip(rows, found, strict=True) if not (e and e.about in waiting)]
        rows = [r for r, _ in kept]
        found = [e for _, e in kept]
    levels = levels_of(
        conn,
        state.bundle.hash,
        (e.about for e in found if e is not None and e.about is not None),
        (r.member_code for r in rows),
    )
    chairs = chairs_of(state)
    red = _red_reports(conn, [e.report_id for e in found if e is not None and e.report_id])
    lease = now + timedelta(seconds=services.settings.webhook_timeout_seconds + 30)
    context = _Context(conn, services, levels, chairs, red, now)
    jobs: list[Job] = []
    trace: list[dict[str, object]] = []
    withheld: list[str] = []
    broken: list[str] = []
    for row, event in zip(rows, found, strict=True):
        m = row._mapping
        try:
            job, entry = context.prepare(row, event)
        except Exception:
            # One delivery that cannot be prepared (a secret or key that fails to open) must
            # not hold up the others, nor the recording of finished sends in this transaction.
            log.exception("webhook delivery %s could not be prepared", m["delivery_id"])
            broken.append(m["delivery_id"])
            job, entry = (
                None,
                audit.Entry(
                    action="webhook.deliver",
                    decision="error",
                    target=f"webhook:{m['id']}",
                    reasons=(f"delivery:{m['delivery_id']}", "not_prepared"),
                ),
            )
            trace.append(
                audit.row(audit.Actor(member=m["member_code"], client=m["created_by"]), entry)
            )
            continue
        trace.append(audit.row(audit.Actor(member=m["member_code"], client=m["created_by"]), entry))
        if job is None:
            withheld.append(m["delivery_id"])
        else:
            jobs.append(job)
    if broken:
        conn.execute(
            update(_deliveries)
            .where(_deliveries.c.id.in_(broken))
            .values(
                status="failed",
                last_error="could not be prepared",
                next_attempt_at=None,
                completed_at=now,
            )
        )
    if withheld:
        conn.execute(
            update(_deliveries)
            .where(_deliveries.c.id.in_(withheld))
            .values(status="withheld", lease_until=None, next_attempt_at=None, completed_at=now)
        )
    if jobs:
        # One statement for the batch: the rows are locked, so each job's attempt number
        # (read above) is the stored one plus one.
        conn.execute(
            update(_deliveries)
            .where(_deliveries.c.id.in_([j.delivery_id for j in jobs]))
            .values(
                status="sending",
                lease_until=lease,
                attempts=_deliveries.c.attempts + 1,
                next_attempt_at=None,
            )
        )
    audit.insert_rows(conn, trace)
    return jobs


@dataclass
class _Context:
    """What preparing the attempts of one claim shares."""

    conn: Connection
    services: DeliveryServices
    levels: Levels
    chairs: frozenset[str]
    red: frozenset[str]
    now: datetime
    secrets: dict[str, tuple[SecretBytes, ...]] = dataclasses.field(default_factory=dict)

    def prepare(self, row: Row[Any], event: StoredEvent | None) -> tuple[Job | None, audit.Entry]:
        """The attempt to make (None: withheld) and the audit entry recording the decision."""
        m = row._mapping
        reasons = (f"webhook:{m['id']}", f"delivery:{m['delivery_id']}")
        policy_hash = self.services.policy.bundle.hash
        if event is None:
            body: dict[str, Any] = {
                "id": m["delivery_id"],
                "type": "webhook.ping",
                "timestamp": self.now.isoformat(),
                "data": {"webhook_id": m["id"]},
            }
            msg_id, target, level = m["delivery_id"], f"webhook:{m['id']}", ["level:n/a"]
        else:
            allowed = entitlement(event, m["member_code"], self.levels, self.chairs)
            target = f"report:{event.about}" if event.about else f"event:{event.uid}"
            if allowed is None:
                denied = (*reasons, f"event:{event.type}", "level:none")
                return None, audit.Entry(
                    action="webhook.deliver",
                    decision="deny",
                    target=target,
                    reasons=denied,
                    policy_hash=policy_hash,
                )
            data = thin_data(event, allowed)
            level = [f"level:{allowed.access}" if allowed.access else "level:n/a"]
            if (
                m["format"] == "jwe"
                and event.type in CONTENT_EVENTS
                and allowed.access in READABLE_LEVELS
            ):
                if event.report_id in self.red:
                    # TLP:RED never leaves the service, in any format.
                    level.append("content:withheld_tlp_red")
                else:
                    data["content"] = _sealed_view(self.conn, self.services, m, event)
                    level.append("content:jwe")
            body = payload(event, data)
            msg_id = event.uid
        attempt = m["attempts"] + 1
        if m["id"] not in self.secrets:
            self.secrets[m["id"]] = signing_secrets(
                self.conn, self.services.envelope, row, self.now
            )
        job = Job(
            delivery_id=m["delivery_id"],
            subscription_id=m["id"],
            url=m["url"],
            msg_id=msg_id,
            body=json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode(),
            secrets=self.secrets[m["id"]],
            attempt=attempt,
        )
        entry = audit.Entry(
            action="webhook.deliver",
            decision="allow",
            target=target,
            reasons=(*reasons, f"event:{body['type']}", f"attempt:{attempt}", *level),
            policy_hash=policy_hash,
        )
        return job, entry


def _event_of(row: Row[Any]) -> StoredEvent | None:
    if row._mapping["event_id"] is None:
        return None  # a ping
    return StoredEvent.from_row(row, prefix="event_")


def _red_reports(conn: Connection, report_ids: list[str]) -> frozenset[str]:
    if not report_ids:
        return frozenset()
    stmt = select(_reports.c.id).where(_reports.c.id.in_(report_ids), _reports.c.tlp == "RED")
    return frozenset(conn.scalars(stmt))


def _sealed_view(
    conn: Connection, services: DeliveryServices, sub: RowMapping, event: StoredEvent
) -> str | None:
    """The report at the subscriber's level now, as a compact JWE to its key."""
    if event.report_id is None:
        return None
    member = sub["member_code"]
    # The subscriber's view, as its own read would give it (no token: a delivery).
    principal = Principal(
        client_id=sub["created_by"], member=member, scopes=frozenset(), token_id=""
    )
    try:
        view = reports.read(
            conn,
            services.policy,
            services.envelope,
            principal,
            event.report_id,
            # This delivery's own entry is its trace.
            [],
            purpose=None,
        )
    except (NotFound, CorruptionError):
        return None
    content = report_out(view, member).model_dump(mode="json", exclude_unset=True)
    return jwe.encrypt(json.dumps(content, separators=(",", ":")).encode(), sub["encryption_jwk"])


# -- recording -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    """What one attempt came to."""

    job: Job
    started_at: datetime
    status: int | None
    error: str | None
    duration_ms: int
    retry_after: float | None
    excerpt: bytes

    @property
    def succeeded(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def retry_delay(settings: Settings, attempt: int, retry_after: float | None) -> float | None:
    """Seconds until the next attempt after failed attempt number `attempt`; None: give up."""
    schedule = settings.webhook_retry_schedule
    if attempt > len(schedule):
        return None
    # Up to 20 % jitter, so the retries of many deliveries that failed together spread out.
    delay = schedule[attempt - 1] * random.uniform(1.0, 1.2)  # noqa: S311 - not security
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return delay


def record(session: Session, settings: Settings, results: Sequence[Result]) -> None:
    """Store each attempt and move its delivery (and subscription) on accordingly."""
    if not results:
        return
    conn = session.connection()
    now = utcnow()
    # A subscription deleted while its delivery was being sent took the delivery with it.
    alive = set(
        conn.scalars(
            select(_deliveries.c.id).where(
                _deliveries.c.id.in_([r.job.delivery_id for r in results])
            )
        )
    )
    results = [r for r in results if r.job.delivery_id in alive]
    if not results:
        return
    # Subscriptions before their deliveries, in id order, as every other path takes them
    # (DELETE, retry, ping): two transactions never wait on each other the other way round.
    conn.execute(
        select(_subs.c.id)
        .where(_subs.c.id.in_(sorted({r.job.subscription_id for r in results})))
        .order_by(_subs.c.id)
        .with_for_update()
    ).all()
    conn.execute(
        _attempts.insert(),
        [
            {
                "delivery_id": r.job.delivery_id,
                "number": r.job.attempt,
                "started_at": r.started_at,
                "duration_ms": r.duration_ms,
                "status_code": r.status,
                "error": r.error[:200] if r.error else None,
                "response_excerpt": r.excerpt or None,
            }
            for r in results
        ],
    )
    # One statement per kind of outcome (under load nearly all are "succeeded, 200"); only
    # retries, each due at its own time, go one by one.
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in results:
        moved = _moved_on(settings, r, now)
        key = (moved["new_status"], moved["code"], moved["error"], moved["due"])
        groups.setdefault(key, []).append(moved)
    for (new_status, code, error, due), rows in groups.items():
        conn.execute(
            update(_deliveries)
            .where(
                # Only the claim this worker holds: a lease that ran out may have passed on.
                tuple_(_deliveries.c.id, _deliveries.c.attempts).in_(
                    [(m["delivery_id"], m["attempt"]) for m in rows]
                ),
                _deliveries.c.status == "sending",
            )
            .values(
                status=new_status,
                next_attempt_at=due,
                completed_at=None if new_status == "pending" else now,
                last_status=code,
                last_error=error,
                lease_until=None,
            )
        )
    _update_subscriptions(conn, settings, results, now)


def _moved_on(settings: Settings, r: Result, now: datetime) -> dict[str, Any]:
    """The delivery's next state after attempt `r`: done, due again later, or failed."""
    status, due = "failed", None
    if r.succeeded:
        status = "succeeded"
    elif r.status != 410:
        delay = retry_delay(settings, r.job.attempt, r.retry_after)
        if delay is not None:
            status, due = "pending", now + timedelta(seconds=delay)
    return {
        "delivery_id": r.job.delivery_id,
        "attempt": r.job.attempt,
        "new_status": status,
        "due": due,
        "done": None if status == "pending" else now,
        "code": r.status,
        "error": r.error[:200] if r.error else None,
    }


def _update_subscriptions(
    conn: Connection, settings: Settings, results: Sequence[Result], now: datetime
) -> None:
    """A success clears a subscription's failing period; 410 or too long failing disables it."""
    ok_subs = sorted({r.job.subscription_id for r in results if r.succeeded})
    if ok_subs:
        conn.execute(
            update(_subs)
            .where(_subs.c.id.in_(ok_subs), _subs.c.failing_since.is_not(None))
            .values(failing_since=None)
        )
    failed = {r.job.subscription_id: r for r in results if not r.succeeded}
    for sub_id, r in sorted(failed.items()):
        if sub_id in ok_subs:
            continue
        if r.status == 410:
            disable(conn, sub_id, "gone", now)
            continue
        conn.execute(
            update(_subs)
            .where(_subs.c.id == sub_id, _subs.c.failing_since.is_(None))
            .values(failing_since=r.started_at)
        )
        since = conn.scalar(select(_subs.c.failing_since).where(_subs.c.id == sub_id))
        if since is not None and (now - since).total_seconds() >= (
            settings.webhook_disable_after_seconds
        ):
            disable(conn, sub_id, "failing", now)


def disable(conn: Connection, subscription_id: str, reason: str, now: datetime) -> None:
    """Disable an active subscription, fail what it still had queued, and tell its owner."""
    owner = conn.scalar(
        update(_subs)
        .where(_subs.c.id == subscription_id, _subs.c.status == "active")
        .values(status="disabled", disabled_reason=reason, updated_at=now)
        .returning(_subs.c.member_code)
    )
    if owner is None:
        return
    conn.execute(
        update(_deliveries)
        .where(
            _deliveries.c.subscription_id == subscription_id,
            or_(
                _deliveries.c.status == "pending",
                and_(_deliveries.c.status == "sending", _deliveries.c.lease_until < now),
            ),
        )
        .values(
            status="failed",
            last_error="subscription disabled",
            next_attempt_at=None,
            lease_until=None,
            completed_at=now,
        )
    )
    events.emit(
        conn,
        "webhook.disabled",
        {"webhook_id": subscription_id, "reason": reason},
        recipient=owner,
    )
