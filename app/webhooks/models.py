"""Events (the transactional outbox), subscriptions, deliveries and their attempts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime, utcnow

_BIG_ID = BigInteger().with_variant(Integer, "sqlite")


class Event(Base):
    """One event, stored in the transaction of the change it describes.

    `position` is its place in commit order, the order of the sync feed and of fan-out. On SQLite
    (one writer at a time) it is given at insert; on PostgreSQL, where transactions commit in
    another order than they took ids, the sequencer gives it to committed events only, so a
    reader past position n never meets an event that commits later with a smaller number.

    `recipient` names the one member an event is for (a match alert, an access request). For
    events about a report it is None and who learns of it is decided at delivery time from the
    stored decisions and `audience`: for `report.created|updated`, the current readers and the
    members that could read the report before the change; for `report.revoked|purged`, those
    that could read it before (withdrawn intelligence must reach them although they can read it
    no longer); for `report.access_changed`, exactly the members whose level changed. `data`
    holds only ids and codes, never report content.
    """

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(_BIG_ID, primary_key=True, autoincrement=True)
    # The public id (payload `id`, `webhook-id`): the serial id would tell every member how
    # many events there are in all, its own or not.
    uid: Mapped[str] = mapped_column(String(36))
    type: Mapped[str] = mapped_column(String(40))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    recipient: Mapped[str | None] = mapped_column(ForeignKey("members.code"))
    report_id: Mapped[str | None] = mapped_column(String(36))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    audience: Mapped[list[str] | None] = mapped_column(JSON)
    position: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (
        Index("ix_events_recipient", "recipient", "id"),
        Index("ix_events_report", "report_id", "id"),
        Index("ix_events_position", "position", unique=True),
        Index(
            "ix_events_unsequenced",
            "id",
            postgresql_where=text("position IS NULL"),
            sqlite_where=text("position IS NULL"),
        ),
    )


class Subscription(Base):
    """A member's webhook endpoint; its signing secrets are sealed under the member's key."""

    __tablename__ = "webhook_subscriptions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    member_code: Mapped[str] = mapped_column(ForeignKey("members.code"))
    created_by: Mapped[str] = mapped_column(String(80))
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[str]] = mapped_column(JSON)
    topics: Mapped[list[str] | None] = mapped_column(JSON)
    format: Mapped[str] = mapped_column(String(8))
    encryption_jwk: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    secret_key_version: Mapped[int] = mapped_column(Integer)
    secret_ct: Mapped[bytes] = mapped_column(LargeBinary)
    # Number of the current secret (1, 2, ...): bound into each secret's associated data.
    secret_serial: Mapped[int] = mapped_column(Integer)
    # The secret before the last rotation, still signing beside the new one until this time.
    previous_key_version: Mapped[int | None] = mapped_column(Integer)
    previous_ct: Mapped[bytes | None] = mapped_column(LargeBinary)
    previous_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16), default="active")
    disabled_reason: Mapped[str | None] = mapped_column(String(40))
    # Since when every attempt has failed (None after a success): past the configured period
    # the subscription is disabled and its owner told.
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("ix_webhook_subscriptions_member", "member_code", "created_at"),)


class Delivery(Base):
    """One event (or a ping) for one subscription, tried until it succeeds or gives up.

    `status`: pending (due at `next_attempt_at`), sending (claimed by a worker until
    `lease_until`), succeeded, failed (retries exhausted or the subscription gone), withheld
    (the subscriber may no longer learn of it: never sent, never listed).
    """

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    subscription_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_subscriptions.id", ondelete="CASCADE")
    )
    event_id: Mapped[int | None] = mapped_column(ForeignKey("events.id"))
    kind: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("subscription_id", "event_id"),
        Index("ix_webhook_deliveries_subscription", "subscription_id", "created_at", "id"),
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
        Index(
            "ix_webhook_deliveries_leased",
            "lease_until",
            postgresql_where=text("status = 'sending'"),
            sqlite_where=text("status = 'sending'"),
        ),
    )


class Attempt(Base):
    """One HTTP attempt of a delivery. The response excerpt is kept for operators only: it is
    never shown to the subscriber (a target's answer must not be readable through us)."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(_BIG_ID, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE")
    )
    number: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    duration_ms: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(200))
    response_excerpt: Mapped[bytes | None] = mapped_column(LargeBinary)

    __table_args__ = (Index("ix_webhook_attempts_delivery", "delivery_id", "number"),)


class Cursor(Base):
    """A named position in the event order (fan-out's: up to where deliveries exist)."""

    __tablename__ = "webhook_cursors"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger)
