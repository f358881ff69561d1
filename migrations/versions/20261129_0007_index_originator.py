"""entity index rows carry their report's originator; the lookup index includes it

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29

A match check then skips the member's own reports inside the index: a member reporting the
same IBAN for the thousandth time no longer visits the 999 reports before.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("entity_index") as batch:
        batch.add_column(sa.Column("originator", sa.String(length=16), nullable=True))
    op.execute(
        "UPDATE entity_index SET originator = "
        "(SELECT reports.originator FROM reports WHERE reports.id = entity_index.report_id)"
    )
    with op.batch_alter_table("entity_index") as batch:
        batch.alter_column("originator", existing_type=sa.String(length=16), nullable=False)
        batch.drop_index("ix_entity_index_lookup")
        batch.create_index("ix_entity_index_lookup", ["digest", "key_id", "originator"])


def downgrade() -> None:
    with op.batch_alter_table("entity_index") as batch:
        batch.drop_index("ix_entity_index_lookup")
        batch.create_index("ix_entity_index_lookup", ["digest", "key_id"])
        batch.drop_column("originator")
