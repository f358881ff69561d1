"""A member's webhook subscriptions: create, read, delete, rotate the secret, ping, deliveries.

A subscription belongs to its member (any of its clients holding `webhooks` manages it); for
every other member it does not exist: the same 404 as for an unknown id.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Row, Table, and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.auth.service import Principal
from app.db import utcnow
from app.errors import Conflict, NotFound, Unprocessable
from app.keys.service import Envelope
from app.kit import jwe, pagination, standard_webhooks
from app.policy.service import PolicyState
from app.webhooks import delivery
from app.webhooks.models import Attempt, Delivery, Event, Subscription
from app.webhooks.schemas import WebhookIn

_subs = cast(Table, Subscription.__table__)
_deliveries = cast(Table, Delivery.__table__)
_attempts = cast(Table, Attempt.__table__)
_events = cast(Table, Event.__table__)

# Enough for every partner system of a member; a bound so one member cannot fill the dispatcher.
MAX_PER_MEMBER = 25
# Deliveries never shown to the subscriber: `withheld` ones concern events it may not learn of.
LISTED_STATUSES = ("pending", "sending", "succeeded", "failed")


@dataclass(frozen=True)
class SubscriptionView:
    id: str
    url: str
    events: list[str]
    topics: list[str] | None
    format: str
    status: str
    disabled_reason: str | None
    created_at: datetime
    updated_at: datetime
    previous_secret_expires_at: datetime | None

    @classmethod
    def from_row(cls, row: Row[Any]) -> SubscriptionView:
        m = row._mapping
        until = m["previous_until"]
        return cls(
            id=m["id"],
            url=m["url"],
            events=list(m["events"]),
            topics=list(m["topics"]) if m["topics"] is not None else None,
            format=m["format"],
            status=m["status"],
            disabled_reason=m["disabled_reason"],
            created_at=m["created_at"],
            updated_at=m["updated_at"],
            previous_secret_expires_at=until if until is not None and until > utcnow() else None,
        )


def _invalid(field: str, message: str) -> Unprocessable:
    return Unprocessable(message, [{"loc": ["body", field], "msg": message, "type": field}])


def validate(state: PolicyState, payload: WebhookIn) -> dict[str, Any] | None:
    """Check topics and the key against the format; the normalised public JWK, if any."""
    if payload.topics is not None:
        try:
            state.bundle.taxonomy.expand(payload.topics)
        except ValueError as exc:
            raise _invalid("topics", str(exc)) from None
    if len(set(payload.events)) != len(payload.events):
        raise _invalid("events", "each event type may be named once")
    if payload.format == "thin":
        if payload.encryption_jwk is not None:
            raise _invalid("encryption_jwk", "encryption_jwk is only for the jwe format")
        return None
    if payload.encryption_jwk is None:
        raise _invalid("encryption_jwk", "the jwe format needs encryption_jwk (an RSA public key)")
    try:
        return jwe.parse_encryption_jwk(payload.encryption_jwk)
    except jwe.InvalidJwk as exc:
        raise _invalid("encryption_jwk", str(exc)) from None


def _entry(action: str, decision: str, target: str, *reasons: str) -> audit.Entry:
    return audit.Entry(action=action, decision=decision, target=target, reasons=reasons)


def _seal(
    conn: Connection, envelope: Envelope, member: str, sub_id: str, serial: int
) -> tuple[str, int, bytes]:
    secret = standard_webhooks.new_secret()
    key_version, sealed = envelope.seal_secret(
        conn, member, standard_webhooks.secret_bytes(secret), delivery.secret_aad(sub_id, serial)
    )
    return secret, key_version, sealed


def create(
    session: Session,
    state: PolicyState,
    envelope: Envelope,
    principal: Principal,
    payload: WebhookIn,
    url: str,
) -> tuple[SubscriptionView, str]:
    """Store a subscription (URL checked by the caller); returns it and its secret, once."""
    jwk = validate(state, payload)
    conn = session.connection()
    count = conn.scalar(
        select(func.count()).select_from(_subs).where(_subs.c.member_code == principal.member)
    )
    if (count or 0) >= MAX_PER_MEMBER:
        audit.record_refusal(
            session, principal.actor, _entry("webhook.create", "deny", "webhook", "limit")
        )
        raise Conflict(f"A member may hold at most {MAX_PER_MEMBER} subscriptions.")
    sub_id = str(uuid.uuid4())
    secret, key_version, sealed = _seal(conn, envelope, principal.member, sub_id, 1)
    now = utcnow()
    conn.execute(
        _subs.insert(),
        [
            {
                "id": sub_id,
                "member_code": principal.member,
                "created_by": principal.client_id,
                "url": url,
                "events": list(payload.events),
                "topics": list(payload.topics) if payload.topics is not None else None,
                "format": payload.format,
                "encryption_jwk": jwk,
                "secret_key_version": key_version,
                "secret_ct": sealed,
                "secret_serial": 1,
                "status": "active",
                "created_at": now,
                "updated_at": now,
            }
        ],
    )
    audit.record(
        session,
        principal.actor,
        _entry("webhook.create", "allow", f"webhook:{sub_id}", f"format:{payload.format}"),
    )
    return _load(conn, principal.member, sub_id), secret


def _row(conn: Connection, member: str, sub_id: str, *, lock: bool = False) -> Row[Any]:
    stmt = select(_subs).where(_subs.c.id == sub_id, _subs.c.member_code == member)
    row = conn.execute(stmt.with_for_update() if lock else stmt).first()
    if row is None:
        raise NotFound
    return row


def _load(conn: Connection, member: str, sub_id: str) -> SubscriptionView:
    return SubscriptionView.from_row(_row(conn, member, sub_id))


def get(conn: Connection, member: str, sub_id: str) -> SubscriptionView:
    """The member's subscription; NotFound for another member's, as for none."""
    return _load(conn, member, sub_id)


def list_all(conn: Connection, member: str) -> list[SubscriptionView]:
    rows = conn.execute(
        select(_subs).where(_subs.c.member_code == member).order_by(_subs.c.created_at, _subs.c.id)
    )
    return [SubscriptionView.from_row(r) for r in rows]


def _owned(session: Session, principal: Principal, sub_id: str, action: str) -> Row[Any]:
    try:
        return _row(session.connection(), principal.member, sub_id, lock=True)
    except NotFound:
        audit.record_refusal(
            session, principal.actor, _entry(action, "deny", f"webhook:{sub_id[:64]}", "not_found")
        )
        raise


def remove(session: Session, principal: Principal, sub_id: str) -> None:
    """Delete a subscription with its queued deliveries and their attempts."""
    _owned(session, principal, sub_id, "webhook.delete")
    conn = session.connection()
    delivery_ids = select(_deliveries.c.id).where(_deliveries.c.subscription_id == sub_id)
    conn.execute(delete(_attempts).where(_attempts.c.delivery_id.in_(delivery_ids)))
    conn.execute(delete(_deliveries).where(_deliveries.c.subscription_id == sub_id))
    conn.execute(delete(_subs).where(_subs.c.id == sub_id))
    audit.record(session, principal.actor, _entry("webhook.delete", "allow", f"webhook:{sub_id}"))


def rotate(
    session: Session,
    envelope: Envelope,
    principal: Principal,
    sub_id: str,
    overlap_seconds: float,
) -> tuple[str, datetime | None]:
    """A new secret; the one it replaces keeps signing for `overlap_seconds`, then never again.

    A secret still in its overlap from an earlier rotation stops at once: two at most sign.
    """
    row = _owned(session, principal, sub_id, "webhook.rotate_secret")
    conn = session.connection()
    m = row._mapping
    serial = m["secret_serial"] + 1
    secret, key_version, sealed = _seal(conn, envelope, principal.member, sub_id, serial)
    now = utcnow()
    until = now + timedelta(seconds=overlap_seconds) if overlap_seconds > 0 else None
    conn.execute(
        update(_subs)
        .where(_subs.c.id == sub_id)
        .values(
            secret_key_version=key_version,
            secret_ct=sealed,
            secret_serial=serial,
            previous_key_version=m["secret_key_version"] if until else None,
            previous_ct=m["secret_ct"] if until else None,
            previous_until=until,
            updated_at=now,
        )
    )
    audit.record(
        session,
        principal.actor,
        _entry(
            "webhook.rotate_secret",
            "allow",
            f"webhook:{sub_id}",
            f"serial:{serial}",
            f"overlap_seconds:{int(overlap_seconds)}",
        ),
    )
    return secret, until


def ping(session: Session, principal: Principal, sub_id: str) -> str:
    """Queue a `webhook.ping` delivery to an active subscription; its delivery id."""
    row = _owned(session, principal, sub_id, "webhook.ping")
    if row._mapping["status"] != "active":
        audit.record_refusal(
            session,
            principal.actor,
            _entry("webhook.ping", "deny", f"webhook:{sub_id}", "disabled"),
        )
        raise Conflict("The subscription is disabled.")
    delivery_id = delivery.queue_ping(session.connection(), sub_id)
    audit.record(
        session,
        principal.actor,
        _entry("webhook.ping", "allow", f"webhook:{sub_id}", f"delivery:{delivery_id}"),
    )
    return delivery_id


def retry(session: Session, principal: Principal, sub_id: str, delivery_id: str) -> str:
    """Send one delivery again now (with the same webhook-id); its status."""
    action = "webhook.retry"
    row = _owned(session, principal, sub_id, action)
    conn = session.connection()
    target = f"webhook:{sub_id}"
    current = conn.execute(
        select(_deliveries.c.status)
        .where(
            _deliveries.c.id == delivery_id,
            _deliveries.c.subscription_id == sub_id,
            _deliveries.c.status.in_(LISTED_STATUSES),
        )
        .with_for_update()
    ).first()
    if current is None:
        audit.record_refusal(
            session, principal.actor, _entry(action, "deny", target, "delivery_not_found")
        )
        raise NotFound
    refusal = None
    if row._mapping["status"] != "active":
        refusal = ("disabled", "The subscription is disabled.")
    elif current.status in ("pending", "sending"):
        refusal = (current.status, f"The delivery is {current.status} already.")
    if refusal is not None:
        audit.record_refusal(
            session, principal.actor, _entry(action, "deny", target, f"status:{refusal[0]}")
        )
        raise Conflict(refusal[1])
    conn.execute(
        update(_deliveries)
        .where(_deliveries.c.id == delivery_id)
        .values(status="pending", next_attempt_at=utcnow(), completed_at=None)
    )
    audit.record(
        session, principal.actor, _entry(action, "allow", target, f"delivery:{delivery_id}")
    )
    return "pending"


@dataclass(frozen=True)
class AttemptView:
    number: int
    started_at: datetime
    duration_ms: int
    status_code: int | None
    error: str | None


@dataclass(frozen=True)
class DeliveryView:
    id: str
    event_id: str | None
    event_type: str
    status: str
    attempts: int
    next_attempt_at: datetime | None
    created_at: datetime
    completed_at: datetime | None
    last_status: int | None
    last_error: str | None
    attempt_log: list[AttemptView]


def deliveries(
    conn: Connection,
    member: str,
    sub_id: str,
    *,
    status: str | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[DeliveryView], str | None]:
    """A subscription's deliveries, newest first, each with its attempts (never the responses)."""
    _row(conn, member, sub_id)
    stmt = (
        select(
            _deliveries.c.id,
            _deliveries.c.status,
            _deliveries.c.kind,
            _deliveries.c.attempts,
            _deliveries.c.next_attempt_at,
            _deliveries.c.created_at,
            _deliveries.c.completed_at,
            _deliveries.c.last_status,
            _deliveries.c.last_error,
            _events.c.uid,
            _events.c.type,
        )
        .outerjoin(_events, _events.c.id == _deliveries.c.event_id)
        .where(
            _deliveries.c.subscription_id == sub_id,
            _deliveries.c.status.in_((status,) if status else LISTED_STATUSES),
        )
        .order_by(_deliveries.c.created_at.desc(), _deliveries.c.id.desc())
        .limit(limit + 1)
    )
    if cursor is not None:
        try:
            stamp, last_id = pagination.decode_position(cursor)
        except ValueError:
            raise _invalid_cursor() from None
        stmt = stmt.where(
            or_(
                _deliveries.c.created_at < stamp,
                and_(_deliveries.c.created_at == stamp, _deliveries.c.id < last_id),
            )
        )
    rows = conn.execute(stmt).all()
    more = len(rows) > limit
    rows = rows[:limit]
    log: dict[str, list[AttemptView]] = {r.id: [] for r in rows}
    if rows:
        attempts = conn.execute(
            select(
                _attempts.c.delivery_id,
                _attempts.c.number,
                _attempts.c.started_at,
                _attempts.c.duration_ms,
                _attempts.c.status_code,
                _attempts.c.error,
            )
            .where(_attempts.c.delivery_id.in_(list(log)))
            .order_by(_attempts.c.delivery_id, _attempts.c.number)
        )
        for a in attempts:
            log[a.delivery_id].append(
                AttemptView(a.number, a.started_at, a.duration_ms, a.status_code, a.error)
            )
    views = [
        DeliveryView(
            id=r.id,
            event_id=r.uid,
            event_type=r.type if r.type is not None else "webhook.ping",
            status=r.status,
            attempts=r.attempts,
            next_attempt_at=r.next_attempt_at,
            created_at=r.created_at,
            completed_at=r.completed_at,
            last_status=r.last_status,
            last_error=r.last_error,
            attempt_log=log[r.id],
        )
        for r in rows
    ]
    next_cursor = (
        pagination.encode_position(rows[-1].created_at, rows[-1].id) if more and rows else None
    )
    return views, next_cursor


def _invalid_cursor() -> Unprocessable:
    return Unprocessable(
        "The cursor is not one this service gave.",
        [{"loc": ["query", "cursor"], "msg": "invalid cursor", "type": "cursor"}],
    )
