"""report versions keep their markings; data keys move to a table of their own

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29

A purge destroys a version's data key. Kept beside the ciphertext, the wrapped key would travel
with every copy of the row; in `report_keys` it can be destroyed on its own, leaving any copy of
the ciphertext row undecryptable.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MARKINGS: dict[str, sa.types.TypeEngine[object]] = {
    "classification": sa.String(),
    "tlp": sa.String(),
    "orcon": sa.Boolean(),
    "topics": sa.JSON(),
    "grading": sa.JSON(),
    "releasable_to": sa.JSON(),
    "tearline_to": sa.JSON(),
    "tearline_classification": sa.String(),
}


def upgrade() -> None:
    # The keys are set aside first: on SQLite, report_versions is rebuilt below (drop and
    # rename), which a table referring to it would forbid.
    op.execute(
        "CREATE TABLE report_keys_moving AS"
        " SELECT report_id, version, key_member, key_version, wrapped_data_key"
        " FROM report_versions"
    )
    with op.batch_alter_table("report_versions") as batch:
        batch.add_column(sa.Column("markings", sa.JSON(), nullable=True))
        batch.drop_constraint("fk_report_versions_key_member_member_keys", type_="foreignkey")
        batch.drop_column("wrapped_data_key")
        batch.drop_column("key_version")
        batch.drop_column("key_member")
    # Until now a report could not be changed, so every stored version carries the markings
    # its report row holds.
    bind = op.get_bind()
    reports = sa.table(
        "reports", sa.column("id", sa.String), *(sa.column(m, t) for m, t in MARKINGS.items())
    )
    versions = sa.table(
        "report_versions", sa.column("report_id", sa.String), sa.column("markings", sa.JSON)
    )
    for row in bind.execute(sa.select(reports)).mappings():
        bind.execute(
            versions.update()
            .where(versions.c.report_id == row["id"])
            .values(markings={m: row[m] for m in MARKINGS})
        )
    with op.batch_alter_table("report_versions") as batch:
        batch.alter_column("markings", existing_type=sa.JSON(), nullable=False)
    op.create_table(
        "report_keys",
        sa.Column("report_id", sa.String(length=36), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("key_member", sa.String(length=16), nullable=False),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("wrapped_data_key", sa.LargeBinary(), nullable=True),
        sa.Column("destroyed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["key_member", "key_version"],
            ["member_keys.member_code", "member_keys.version"],
            name=op.f("fk_report_keys_key_member_member_keys"),
        ),
        sa.ForeignKeyConstraint(
            ["report_id", "version"],
            ["report_versions.report_id", "report_versions.version"],
            name=op.f("fk_report_keys_report_id_report_versions"),
        ),
        sa.PrimaryKeyConstraint("report_id", "version", name=op.f("pk_report_keys")),
    )
    op.execute(
        "INSERT INTO report_keys (report_id, version, key_member, key_version, wrapped_data_key)"
        " SELECT report_id, version, key_member, key_version, wrapped_data_key"
        " FROM report_keys_moving"
    )
    op.drop_table("report_keys_moving")


def downgrade() -> None:
    op.execute(
        "CREATE TABLE report_keys_moving AS"
        " SELECT report_id, version, key_member, key_version, wrapped_data_key FROM report_keys"
    )
    op.drop_table("report_keys")
    with op.batch_alter_table("report_versions") as batch:
        batch.add_column(sa.Column("key_member", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("key_version", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("wrapped_data_key", sa.LargeBinary(), nullable=True))
        batch.drop_column("markings")
    moving = (
        " FROM report_keys_moving k WHERE"
        " k.report_id = report_versions.report_id AND k.version = report_versions.version)"
    )
    op.execute(
        "UPDATE report_versions SET"
        + f" key_member = (SELECT k.key_member{moving},"
        + f" key_version = (SELECT k.key_version{moving},"
        + f" wrapped_data_key = (SELECT k.wrapped_data_key{moving}"
    )
    op.drop_table("report_keys_moving")
    with op.batch_alter_table("report_versions") as batch:
        batch.alter_column("key_member", existing_type=sa.String(length=16), nullable=False)
        batch.alter_column("key_version", existing_type=sa.Integer(), nullable=False)
        batch.create_foreign_key(
            "fk_report_versions_key_member_member_keys",
            "member_keys",
            ["key_member", "key_version"],
            ["member_code", "version"],
        )
