"""a partial index for listings: readable levels only, in listing order

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29

The former index began (member_code, level, ...): a listing asks for two levels (full or
tearline), so the database read two ranges and sorted every readable report of the member to
return one page. This one is in listing order for the readable rows alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

READABLE = sa.text("level IN ('full', 'tearline')")


def upgrade() -> None:
    with op.batch_alter_table("report_access") as batch:
        batch.drop_index("ix_report_access_member_listing")
        batch.create_index(
            "ix_report_access_readable",
            ["member_code", "report_updated_at", "report_id"],
            postgresql_where=READABLE,
            sqlite_where=READABLE,
        )


def downgrade() -> None:
    with op.batch_alter_table("report_access") as batch:
        batch.drop_index("ix_report_access_readable")
        batch.create_index(
            "ix_report_access_member_listing",
            ["member_code", "level", "report_updated_at", "report_id"],
        )
