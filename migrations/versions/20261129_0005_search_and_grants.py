"""blind index of entities, access requests and grants, and the event outbox

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29

Reports already stored have no index rows: `tearline search reindex` builds them (it decrypts
each report's current entities, so it needs the keyring, which a migration must not).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("report_access") as batch:
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("level_after", sa.String(length=16), nullable=True))

    op.create_table(
        "report_grants",
        sa.Column("report_id", sa.String(length=36), nullable=False),
        sa.Column("member_code", sa.String(length=16), nullable=False),
        sa.Column("access_request_id", sa.String(length=36), nullable=False),
        sa.Column("granted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["member_code"], ["members.code"], name=op.f("fk_report_grants_member_code_members")
        ),
        sa.ForeignKeyConstraint(
            ["report_id"], ["reports.id"], name=op.f("fk_report_grants_report_id_reports")
        ),
        sa.PrimaryKeyConstraint("report_id", "member_code", name=op.f("pk_report_grants")),
    )

    op.create_table(
        "entity_index",
        sa.Column("report_id", sa.String(length=36), nullable=False),
        sa.Column("entity_type", sa.String(length=16), nullable=False),
        sa.Column("digest", sa.LargeBinary(length=32), nullable=False),
        sa.Column("key_id", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(
            ["report_id"], ["reports.id"], name=op.f("fk_entity_index_report_id_reports")
        ),
        sa.PrimaryKeyConstraint("report_id", "entity_type", "digest", name=op.f("pk_entity_index")),
    )
    op.create_index("ix_entity_index_lookup", "entity_index", ["digest", "key_id"])

    op.create_table(
        "access_requests",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("report_id", sa.String(length=36), nullable=False),
        sa.Column("originator", sa.String(length=16), nullable=False),
        sa.Column("requester", sa.String(length=16), nullable=False),
        sa.Column("requester_client", sa.String(length=80), nullable=False),
        sa.Column("justification", sa.String(length=2000), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_by", sa.String(length=80), nullable=True),
        sa.Column("note", sa.String(length=2000), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["originator"], ["members.code"], name=op.f("fk_access_requests_originator_members")
        ),
        sa.ForeignKeyConstraint(
            ["report_id"], ["reports.id"], name=op.f("fk_access_requests_report_id_reports")
        ),
        sa.ForeignKeyConstraint(
            ["requester"], ["members.code"], name=op.f("fk_access_requests_requester_members")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_access_requests")),
    )
    op.create_index(
        "ix_access_requests_originator", "access_requests", ["originator", "created_at", "id"]
    )
    op.create_index(
        "ix_access_requests_requester", "access_requests", ["requester", "created_at", "id"]
    )
    op.create_index(
        "uq_access_requests_pending",
        "access_requests",
        ["report_id", "requester"],
        unique=True,
        postgresql_where=sa.text("status = 'pending'"),
        sqlite_where=sa.text("status = 'pending'"),
    )

    op.create_table(
        "events",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("type", sa.String(length=40), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recipient", sa.String(length=16), nullable=True),
        sa.Column("report_id", sa.String(length=36), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["recipient"], ["members.code"], name=op.f("fk_events_recipient_members")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    op.create_index("ix_events_recipient", "events", ["recipient", "id"])
    op.create_index("ix_events_report", "events", ["report_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_events_report", table_name="events")
    op.drop_index("ix_events_recipient", table_name="events")
    op.drop_table("events")
    op.drop_index("uq_access_requests_pending", table_name="access_requests")
    op.drop_index("ix_access_requests_requester", table_name="access_requests")
    op.drop_index("ix_access_requests_originator", table_name="access_requests")
    op.drop_table("access_requests")
    op.drop_index("ix_entity_index_lookup", table_name="entity_index")
    op.drop_table("entity_index")
    op.drop_table("report_grants")
    with op.batch_alter_table("report_access") as batch:
        batch.drop_column("level_after")
        batch.drop_column("expires_at")
