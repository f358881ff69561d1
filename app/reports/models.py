"""Reports: clear metadata for the policy engine, content only as ciphertext."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ColumnElement,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    String,
    and_,
    bindparam,
    case,
    or_,
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
    # Set when `level` rests on an access grant that expires: from `expires_at` on, the level
    # is `level_after` (what the policy gives without the grant; "none" hides the report).
    # Reads compare with the clock, so an expiry takes effect without any job running first.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    level_after: Mapped[str | None] = mapped_column(String(16), default=None)

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


class ReportGrant(Base):
    """Full access the originator granted one member by approving its access request.

    The policy engine sees unexpired grants (rule 4 of the base policy; clearance still applies);
    a later approval for the same member replaces the earlier grant.
    """

    __tablename__ = "report_grants"

    report_id: Mapped[str] = mapped_column(ForeignKey("reports.id"), primary_key=True)
    member_code: Mapped[str] = mapped_column(ForeignKey("members.code"), primary_key=True)
    access_request_id: Mapped[str] = mapped_column(String(36))
    granted_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # None: until revoked or purged.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


_LEVELS = frozenset({"full", "tearline", "hit"})


def level_in(levels: tuple[str, ...]) -> ColumnElement[bool]:
    """A stored decision's level as of bind parameter `now` is one of `levels`.

    Literal text: SQLite uses the partial index ix_report_access_readable only for a query that
    repeats its condition, and a literal (unlike an expanding IN parameter) lets a compiled
    statement be reused as is. A level resting on a grant that has expired counts only if the
    level after it is in `levels` too.
    """
    if not levels or not set(levels) <= _LEVELS:
        raise ValueError(f"levels must be some of {sorted(_LEVELS)}")
    listed = ", ".join(f"'{level}'" for level in levels)
    access = ReportAccess.__table__.c
    return and_(
        text(f"report_access.level IN ({listed})"),
        or_(
            access.expires_at.is_(None),
            access.expires_at > bindparam("now", type_=UTCDateTime()),
            text(f"report_access.level_after IN ({listed})"),
        ),
    )


def effective_level() -> ColumnElement[str]:
    """A stored decision's level as of bind parameter `now`: `level_after` once the grant it
    rests on has expired (None stands for none)."""
    access = ReportAccess.__table__.c
    expired = and_(
        access.expires_at.is_not(None), access.expires_at <= bindparam("now", type_=UTCDateTime())
    )
    return case((expired, access.level_after), else_=access.level).label("level")


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
