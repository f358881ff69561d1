"""The blind index of report entities, and access requests from members that got a hit."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, LargeBinary, String, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime, utcnow


class EntityIndex(Base):
    """One entity of a report's current version: a keyed HMAC of its normalised value.

    Never the value itself: the digest is computed with a key derived for its entity type from
    the keyring's index key (not an encryption key), so the table alone reveals nothing and two
    reports holding the same IBAN can still be found without decrypting either.
    """

    __tablename__ = "entity_index"

    report_id: Mapped[str] = mapped_column(ForeignKey("reports.id"), primary_key=True)
    entity_type: Mapped[str] = mapped_column(String(16), primary_key=True)
    digest: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    # Which index key made the digest: after a rotation, rows of the old key are rebuilt by
    # `tearline search reindex` and searches only look at rows of the key in force.
    key_id: Mapped[str] = mapped_column(String(16))
    # Copy of the report's originator: a match check skips the member's own reports inside the
    # index (two ranges of it), instead of visiting every earlier report of its own that holds
    # the same entity.
    originator: Mapped[str] = mapped_column(String(16))

    __table_args__ = (Index("ix_entity_index_lookup", "digest", "key_id", "originator"),)


class AccessRequest(Base):
    """A member asking an originator for full access to one report it knows of (hit or tearline)."""

    __tablename__ = "access_requests"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    report_id: Mapped[str] = mapped_column(ForeignKey("reports.id"))
    # Copy of the report's originator: the originator's incoming list is one index range.
    originator: Mapped[str] = mapped_column(ForeignKey("members.code"))
    requester: Mapped[str] = mapped_column(ForeignKey("members.code"))
    requester_client: Mapped[str] = mapped_column(String(80))
    justification: Mapped[str] = mapped_column(String(2000))
    # pending, approved or denied; "expired" is an approved request past expires_at, computed
    # when read so that it needs no job to become true.
    status: Mapped[str] = mapped_column(String(16), default="pending")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    decided_by: Mapped[str | None] = mapped_column(String(80), default=None)
    note: Mapped[str | None] = mapped_column(String(2000), default=None)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)

    __table_args__ = (
        Index("ix_access_requests_originator", "originator", "created_at", "id"),
        Index("ix_access_requests_requester", "requester", "created_at", "id"),
        # One open request per member and report: asking again while one is pending is a 409.
        Index(
            "uq_access_requests_pending",
            "report_id",
            "requester",
            unique=True,
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
    )
