"""The audit log: entries (the leaves of an RFC 9162 Merkle tree), stored tree nodes, checkpoints.

Entries, nodes and checkpoints are append-only: the migrations make the database refuse UPDATE
and DELETE on them. Only `audit_tree`, the maintainer's progress, changes.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime, utcnow

_BIGINT = BigInteger().with_variant(Integer, "sqlite")


class AuditEntry(Base):
    __tablename__ = "audit_entries"

    # The entry's leaf index: 0, 1, 2, ... in commit order, without gaps, given at commit under
    # the log's lock (app.audit.service.insert_rows), never by a database sequence (which leaves
    # gaps). The database refuses a negative one (it would sort before the tree's first leaf).
    id: Mapped[int] = mapped_column(_BIGINT, primary_key=True, autoincrement=False)
    time: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str | None] = mapped_column(String(16))
    client: Mapped[str | None] = mapped_column(String(80))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(128))
    decision: Mapped[str] = mapped_column(String(16))
    reasons: Mapped[list[str]] = mapped_column(JSON)
    policy_hash: Mapped[str | None] = mapped_column(String(64))
    # Up to 200 characters as sent; control characters become 6-character escapes.
    purpose: Mapped[str | None] = mapped_column(String(1200))
    request_id: Mapped[str | None] = mapped_column(String(64))
    # SHA-256(0x00 || the entry's canonical bytes), see app.audit.canonical.
    leaf_hash: Mapped[bytes] = mapped_column(LargeBinary(32))

    __table_args__ = (
        CheckConstraint("id >= 0", name="leaf_index"),
        Index("ix_audit_entries_target", "target", "id"),
        Index("ix_audit_entries_actor", "actor", "id"),
        Index("ix_audit_entries_time", "time"),
    )


class AuditNode(Base):
    """The hash of a perfect subtree: leaves [idx << level, (idx + 1) << level), level >= 1."""

    __tablename__ = "audit_nodes"

    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    idx: Mapped[int] = mapped_column(_BIGINT, primary_key=True, autoincrement=False)
    hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class AuditTree(Base):
    """How far the stored nodes reach: every perfect subtree inside [0, size) is stored."""

    __tablename__ = "audit_tree"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    size: Mapped[int] = mapped_column(_BIGINT)


class Checkpoint(Base):
    """A signed tree head: the root over the first `tree_size` entries at `timestamp`."""

    __tablename__ = "audit_checkpoints"

    tree_size: Mapped[int] = mapped_column(_BIGINT, primary_key=True, autoincrement=False)
    root_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    timestamp: Mapped[datetime] = mapped_column(UTCDateTime)
    # Compact JWS (ES256, service key) over {tree_size, root_hash, timestamp}.
    signature: Mapped[str] = mapped_column(String(1024))

    __table_args__ = (Index("ix_audit_checkpoints_timestamp", "timestamp"),)
