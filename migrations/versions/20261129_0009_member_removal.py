"""members record when they were removed for good (their keys destroyed)

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29

Dropping a member from the roster suspends it; `tearline members remove` is the irreversible step
after that: its member keys are destroyed, so everything it originated is unrecoverable. A removed
member never comes back to life under the same code, even if the roster names it again.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.db import UTCDateTime

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("members") as batch:
        batch.add_column(sa.Column("removed_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("members") as batch:
        batch.drop_column("removed_at")
