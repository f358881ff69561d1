"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_entries",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=16), nullable=True),
        sa.Column("client", sa.String(length=80), nullable=True),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target", sa.String(length=128), nullable=True),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("policy_hash", sa.String(length=64), nullable=True),
        sa.Column("purpose", sa.String(length=1200), nullable=True),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_entries")),
    )
    with op.batch_alter_table("audit_entries", schema=None) as batch_op:
        batch_op.create_index("ix_audit_entries_actor", ["actor", "id"], unique=False)
        batch_op.create_index("ix_audit_entries_target", ["target", "id"], unique=False)

    op.create_table(
        "members",
        sa.Column("code", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_members")),
    )
    op.create_table(
        "clients",
        sa.Column("id", sa.String(length=80), nullable=False),
        sa.Column("member_code", sa.String(length=16), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["member_code"], ["members.code"], name=op.f("fk_clients_member_code_members")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_clients")),
    )
    with op.batch_alter_table("clients", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_clients_member_code"), ["member_code"], unique=False)

    op.create_table(
        "member_keys",
        sa.Column("member_code", sa.String(length=16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("master_version", sa.Integer(), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("destroyed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["member_code"], ["members.code"], name=op.f("fk_member_keys_member_code_members")
        ),
        sa.PrimaryKeyConstraint("member_code", "version", name=op.f("pk_member_keys")),
    )
    op.create_table(
        "reports",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("originator", sa.String(length=16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("classification", sa.String(length=16), nullable=False),
        sa.Column("tlp", sa.String(length=16), nullable=False),
        sa.Column("orcon", sa.Boolean(), nullable=False),
        sa.Column("topics", sa.JSON(), nullable=False),
        sa.Column("grading", sa.JSON(), nullable=True),
        sa.Column("releasable_to", sa.JSON(), nullable=False),
        sa.Column("tearline_to", sa.JSON(), nullable=False),
        sa.Column("tearline_classification", sa.String(length=16), nullable=False),
        sa.Column("has_summary", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["originator"], ["members.code"], name=op.f("fk_reports_originator_members")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reports")),
    )
    with op.batch_alter_table("reports", schema=None) as batch_op:
        batch_op.create_index(
            "ix_reports_originator_updated", ["originator", "updated_at"], unique=False
        )

    op.create_table(
        "client_keys",
        sa.Column("kid", sa.String(length=128), nullable=False),
        sa.Column("client_id", sa.String(length=80), nullable=False),
        sa.Column("alg", sa.String(length=8), nullable=False),
        sa.Column("public_pem", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["client_id"], ["clients.id"], name=op.f("fk_client_keys_client_id_clients")
        ),
        sa.PrimaryKeyConstraint("kid", name=op.f("pk_client_keys")),
    )
    with op.batch_alter_table("client_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_client_keys_client_id"), ["client_id"], unique=False)

    op.create_table(
        "idempotency_keys",
        sa.Column("client_id", sa.String(length=80), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("report_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["client_id"], ["clients.id"], name=op.f("fk_idempotency_keys_client_id_clients")
        ),
        sa.ForeignKeyConstraint(
            ["report_id"], ["reports.id"], name=op.f("fk_idempotency_keys_report_id_reports")
        ),
        sa.PrimaryKeyConstraint("client_id", "key", name=op.f("pk_idempotency_keys")),
    )
    op.create_table(
        "report_access",
        sa.Column("report_id", sa.String(length=36), nullable=False),
        sa.Column("member_code", sa.String(length=16), nullable=False),
        sa.Column("level", sa.String(length=16), nullable=False),
        sa.Column("report_updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("policy_hash", sa.String(length=64), nullable=False),
        sa.Column("policy_ids", sa.JSON(), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["member_code"], ["members.code"], name=op.f("fk_report_access_member_code_members")
        ),
        sa.ForeignKeyConstraint(
            ["report_id"], ["reports.id"], name=op.f("fk_report_access_report_id_reports")
        ),
        sa.PrimaryKeyConstraint("report_id", "member_code", name=op.f("pk_report_access")),
    )
    with op.batch_alter_table("report_access", schema=None) as batch_op:
        batch_op.create_index(
            "ix_report_access_member_listing",
            ["member_code", "level", "report_updated_at", "report_id"],
            unique=False,
        )
        batch_op.create_index("ix_report_access_policy_hash", ["policy_hash"], unique=False)

    op.create_table(
        "report_topics",
        sa.Column("report_id", sa.String(length=36), nullable=False),
        sa.Column("topic", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(
            ["report_id"], ["reports.id"], name=op.f("fk_report_topics_report_id_reports")
        ),
        sa.PrimaryKeyConstraint("report_id", "topic", name=op.f("pk_report_topics")),
    )
    with op.batch_alter_table("report_topics", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_report_topics_topic"), ["topic"], unique=False)

    op.create_table(
        "report_versions",
        sa.Column("report_id", sa.String(length=36), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key_member", sa.String(length=16), nullable=False),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("wrapped_data_key", sa.LargeBinary(), nullable=True),
        sa.Column("title_ct", sa.LargeBinary(), nullable=True),
        sa.Column("body_ct", sa.LargeBinary(), nullable=True),
        sa.Column("summary_ct", sa.LargeBinary(), nullable=True),
        sa.Column("entities_ct", sa.LargeBinary(), nullable=True),
        sa.ForeignKeyConstraint(
            ["key_member", "key_version"],
            ["member_keys.member_code", "member_keys.version"],
            name=op.f("fk_report_versions_key_member_member_keys"),
        ),
        sa.ForeignKeyConstraint(
            ["report_id"], ["reports.id"], name=op.f("fk_report_versions_report_id_reports")
        ),
        sa.PrimaryKeyConstraint("report_id", "version", name=op.f("pk_report_versions")),
    )
    op.create_table(
        "used_assertions",
        sa.Column("client_id", sa.String(length=80), nullable=False),
        sa.Column("jti", sa.String(length=256), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["client_id"], ["clients.id"], name=op.f("fk_used_assertions_client_id_clients")
        ),
        sa.PrimaryKeyConstraint("client_id", "jti", name=op.f("pk_used_assertions")),
    )
    with op.batch_alter_table("used_assertions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_used_assertions_expires_at"), ["expires_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("used_assertions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_used_assertions_expires_at"))

    op.drop_table("used_assertions")
    op.drop_table("report_versions")
    with op.batch_alter_table("report_topics", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_report_topics_topic"))

    op.drop_table("report_topics")
    with op.batch_alter_table("report_access", schema=None) as batch_op:
        batch_op.drop_index("ix_report_access_policy_hash")
        batch_op.drop_index("ix_report_access_member_listing")

    op.drop_table("report_access")
    op.drop_table("idempotency_keys")
    with op.batch_alter_table("client_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_client_keys_client_id"))

    op.drop_table("client_keys")
    with op.batch_alter_table("reports", schema=None) as batch_op:
        batch_op.drop_index("ix_reports_originator_updated")

    op.drop_table("reports")
    op.drop_table("member_keys")
    with op.batch_alter_table("clients", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_clients_member_code"))

    op.drop_table("clients")
    op.drop_table("members")
    with op.batch_alter_table("audit_entries", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_entries_target")
        batch_op.drop_index("ix_audit_entries_actor")

    op.drop_table("audit_entries")
