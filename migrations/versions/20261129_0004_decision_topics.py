"""each stored decision carries its report's topics, for topic-filtered listings

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29

A listing filtered by topic walks the member's decisions in listing order; with the topics on the
row it tests each candidate where it stands instead of probing report_topics for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("report_access") as batch:
        batch.add_column(sa.Column("topic_codes", sa.String(length=200), nullable=True))
    joined = (
        "string_agg(t.topic, ',' ORDER BY t.topic)"
        if op.get_bind().dialect.name == "postgresql"
        else "group_concat(t.topic, ',')"
    )
    op.execute(
        # Constant text: `joined` is one of two fixed strings, nothing comes from outside.
        "UPDATE report_access SET topic_codes = ',' || (SELECT "  # noqa: S608  # nosec B608
        + joined
        + " FROM report_topics t WHERE t.report_id = report_access.report_id) || ','"
    )
    with op.batch_alter_table("report_access") as batch:
        batch.alter_column("topic_codes", existing_type=sa.String(length=200), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("report_access") as batch:
        batch.drop_column("topic_codes")
