"""Reports: clear metadata for the policy engine, content only as ciphertext."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    String,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime, utcnow


class Report(Base):
    """The current state of a report: markings in clear (the engine decides on them)."""

    __tablename__ = "reports"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    originator: Mapped[str] = mapped_column(ForeignKey("members.code"))
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    classification: Mapped[str] = mapped_column(String(16))
    tlp: Mapped[str] = mapped_column(String(16))
    orcon: Mapped[bool] = mapped_column(Boolean)
    topics: Mapped[list[str]] = mapped_column(JSON)
    grading: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    releasable_to: Mapped[list[str]] = mapped_column(JSON)
    tearline_to: Mapped[list[str]] = mapped_column(JSON)
    tearline_classification: Mapped[str] = mapped_column(String(16))
    has_summary: Mapped[bool] = mapped_column(Boolean)

    __table_args__ = (Index("ix_reports_originator_updated", "originator", "updated_at"),)


class ReportVersion(Base):
    """One version's content, each field AES-256-GCM under that version's own data key."""

    __tablename__ = "report_versions"

    report_id: Mapped[str] = mapped_column(ForeignKey("reports.id"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The markings this version was released under (classification, topics, audiences, ...):
    # the reports row holds only the current ones.
    markings: Mapped[dict[str, Any]] = mapped_column(JSON)
    # None once purged (its key is destroyed as well, see ReportKey).
    title_ct: Mapped[bytes | None] = mapped_column(LargeBinary)
    body_ct: Mapped[bytes | None] = mapped_column(LargeBinary)
    summary_ct: Mapped[bytes | None] = mapped_column(LargeBinary)
    entities_ct: Mapped[bytes | None] = mapped_column(LargeBinary)


class ReportKey(Base):
    """One version's data key, wrapped by the originator's member key, apart from its content.

    Kept in a table of its own on purpose: a purge destroys this row's key, and then no copy of
    the version's ciphertext row — an export, a replica, a cache — can be decrypted with any key
    the service still holds.
    """

    __tablename__ = "report_keys"

    report_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_member: Mapped[str] = mapped_column(String(16))
    key_version: Mapped[int] = mapped_column(Integer)
    # None once destroyed (purge): the version's content can never be decrypted again.
    wrapped_data_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    destroyed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        ForeignKeyConstraint(
            ["report_id", "version"], ["report_versions.report_id", "report_versions.version"]
        ),
        ForeignKeyConstraint(
            ["key_member", "key_version"], ["member_keys.member_code", "member_keys.version"]
        ),
    )


# The levels a listing shows, spelled the same in the partial index and in the queries (SQLite
# uses a partial index only for a query that repeats its condition).
READABLE_PREDICATE = "level IN ('full', 'tearline')"


class ReportAccess(Base):
    """The stored decision of the policy engine for one (report, member): reads look it up.

    Only levels above ``none`` are stored; a missing row is ``none``.
    """

    __tablename__ = "report_access"

    report_id: Mapped[str] = mapped_column(ForeignKey("reports.id"), primary_key=True)
    member_code: Mapped[str] = mapped_column(ForeignKey("members.code"), primary_key=True)
    level: Mapped[str] = mapped_column(String(16))
    # Copy of reports.updated_at so a member's listing is one index range scan.
    report_updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Copy of the report's topics (",MOV.HAW,REV.OIL,"), so a listing filtered by topic tests the
    # row it already visits instead of probing report_topics for every candidate.
    topic_codes: Mapped[str] = mapped_column(String(200))
    policy_hash: Mapped[str] = mapped_column(String(64))
    policy_ids: Mapped[list[str]] = mapped_column(JSON)
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        # A member's listing, newest first: one backward range scan of this index, stopping
        # after a page, whatever the number of reports (hits are never listed, so not indexed).
        Index(
            "ix_report_access_readable",
            "member_code",
            "report_updated_at",
            "report_id",
            postgresql_where=text(READABLE_PREDICATE),
            sqlite_where=text(READABLE_PREDICATE),
        ),
        # Finds decisions made under another bundle without scanning every decision.
        Index("ix_report_access_policy_hash", "policy_hash"),
    )


class IdempotencyKey(Base):
    """A client's `Idempotency-Key`, the hash of the request it came with, and its result."""

    __tablename__ = "idempotency_keys"

    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    report_id: Mapped[str] = mapped_column(ForeignKey("reports.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ReportTopic(Base):
    """One row per (report, topic), so listings can filter by topic through an index."""

    __tablename__ = "report_topics"

    report_id: Mapped[str] = mapped_column(ForeignKey("reports.id"), primary_key=True)
    topic: Mapped[str] = mapped_column(String(16), primary_key=True, index=True)
