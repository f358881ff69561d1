"""webhook subscriptions, deliveries and attempts; events get a public id and a commit position

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29

Events stored before this revision were committed already: they take their id as position,
and a fresh public id each.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TIME = sa.DateTime(timezone=True)


def _events() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("uid", sa.String(length=36), nullable=True))
        batch.add_column(sa.Column("audience", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("position", sa.BigInteger(), nullable=True))
    conn = op.get_bind()
    events = sa.table(
        "events",
        sa.column("id", _BIG_ID),
        sa.column("uid", sa.String()),
        sa.column("position", sa.BigInteger()),
    )
    ids = list(conn.scalars(sa.select(events.c.id).order_by(events.c.id)))
    for start in range(0, len(ids), 1000):
        conn.execute(
            events.update().where(events.c.id == sa.bindparam("event_id")),
            [
                {"event_id": i, "uid": str(uuid.uuid4()), "position": i}
                for i in ids[start : start + 1000]
            ],
        )
    with op.batch_alter_table("events") as batch:
        batch.alter_column("uid", existing_type=sa.String(length=36), nullable=False)
        batch.create_index("ix_events_position", ["position"], unique=True)
        batch.create_index(
            "ix_events_unsequenced",
            ["id"],
            postgresql_where=sa.text("position IS NULL"),
            sqlite_where=sa.text("position IS NULL"),
        )


def upgrade() -> None:
    _events()
    op.create_table(
        "webhook_cursors",
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_webhook_cursors")),
    )
    # Fan-out starts after the events there are now: no subscription exists yet to receive them.
    last = op.get_bind().scalar(sa.text("SELECT coalesce(max(position), 0) FROM events"))
    op.bulk_insert(
        sa.table("webhook_cursors", sa.column("name"), sa.column("position")),
        [{"name": "fanout", "position": int(last)}],
    )
    op.create_table(
        "webhook_subscriptions",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("member_code", sa.String(length=16), nullable=False),
        sa.Column("created_by", sa.String(length=80), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("events", sa.JSON(), nullable=False),
        sa.Column("topics", sa.JSON(), nullable=True),
        sa.Column("format", sa.String(length=8), nullable=False),
        sa.Column("encryption_jwk", sa.JSON(), nullable=True),
        sa.Column("secret_key_version", sa.Integer(), nullable=False),
        sa.Column("secret_ct", sa.LargeBinary(), nullable=False),
        sa.Column("secret_serial", sa.Integer(), nullable=False),
        sa.Column("previous_key_version", sa.Integer(), nullable=True),
        sa.Column("previous_ct", sa.LargeBinary(), nullable=True),
        sa.Column("previous_until", _TIME, nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("disabled_reason", sa.String(length=40), nullable=True),
        sa.Column("failing_since", _TIME, nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["member_code"],
            ["members.code"],
            name=op.f("fk_webhook_subscriptions_member_code_members"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_subscriptions")),
    )
    op.create_index(
        "ix_webhook_subscriptions_member", "webhook_subscriptions", ["member_code", "created_at"]
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("subscription_id", sa.String(length=36), nullable=False),
        sa.Column("event_id", _BIG_ID, nullable=True),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", _TIME, nullable=True),
        sa.Column("lease_until", _TIME, nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(length=200), nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("completed_at", _TIME, nullable=True),
        sa.ForeignKeyConstraint(
            ["event_id"], ["events.id"], name=op.f("fk_webhook_deliveries_event_id_events")
        ),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["webhook_subscriptions.id"],
            name=op.f("fk_webhook_deliveries_subscription_id_webhook_subscriptions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
        sa.UniqueConstraint(
            "subscription_id", "event_id", name=op.f("uq_webhook_deliveries_subscription_id")
        ),
    )
    op.create_index(
        "ix_webhook_deliveries_due",
        "webhook_deliveries",
        ["next_attempt_at"],
        postgresql_where=sa.text("status = 'pending'"),
        sqlite_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "ix_webhook_deliveries_leased",
        "webhook_deliveries",
        ["lease_until"],
        postgresql_where=sa.text("status = 'sending'"),
        sqlite_where=sa.text("status = 'sending'"),
    )
    op.create_index(
        "ix_webhook_deliveries_subscription",
        "webhook_deliveries",
        ["subscription_id", "created_at", "id"],
    )
    op.create_table(
        "webhook_attempts",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("delivery_id", sa.String(length=36), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("started_at", _TIME, nullable=False),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.String(length=200), nullable=True),
        sa.Column("response_excerpt", sa.LargeBinary(), nullable=True),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["webhook_deliveries.id"],
            name=op.f("fk_webhook_attempts_delivery_id_webhook_deliveries"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_attempts")),
    )
    op.create_index("ix_webhook_attempts_delivery", "webhook_attempts", ["delivery_id", "number"])


def downgrade() -> None:
    op.drop_table("webhook_attempts")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_subscriptions")
    op.drop_table("webhook_cursors")
    with op.batch_alter_table("events") as batch:
        batch.drop_index("ix_events_unsequenced")
        batch.drop_index("ix_events_position")
        batch.drop_column("position")
        batch.drop_column("audience")
        batch.drop_column("uid")
