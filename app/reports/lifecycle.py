"""A report after submission: new versions, revocation, purge, and what its originator can review.

Every action here belongs to the originator alone. Another member gets the answer `read` would
give it for the same id: 404 when it cannot read the report (deny looks like absence), 403 when it
can. Each action, and each refusal, is audited.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, and_, bindparam, delete, select, update
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.audit.models import AuditEntry
from app.auth.service import Principal
from app.db import utcnow
from app.errors import (
    Conflict,
    Forbidden,
    NotFound,
    PreconditionFailed,
    PreconditionRequired,
    Unprocessable,
)
from app.keys.service import Envelope
from app.kit.crypto import CorruptionError
from app.policy.service import PolicyState
from app.reports import service
from app.reports.models import Report, ReportKey, ReportTopic, ReportVersion
from app.reports.schemas import ReportIn
from app.reports.service import REPORT_COLUMNS, ReportView, StoredReport
from app.search.index import BlindIndex, current_entries, drop_entries

_reports = cast(Table, Report.__table__)
_versions = cast(Table, ReportVersion.__table__)
_keys = cast(Table, ReportKey.__table__)
_topics = cast(Table, ReportTopic.__table__)
_entries = cast(Table, AuditEntry.__table__)

# Reads of a report that its access log shows (the originator's own included).
READ_ACTIONS = (
    "report.read",
    "report.list_item",
    "report.create.replay",
    "search.result",
    "access_request.create",
)

# The caller's own report only: another member's row is never locked (its lock waits could tell
# a hidden report from a missing one).
_OWN_REPORT = select(*REPORT_COLUMNS).where(
    _reports.c.id == bindparam("report_id"), _reports.c.originator == bindparam("member")
)
# If-Match compares strongly (RFC 9110, 13.1.1): a weak tag never matches.
_ETAG = re.compile(r'^"(\d{1,9})"$')
_CURSOR = re.compile(r"[0-9]{1,18}")


class NotOriginator(Exception):
    """The caller may not act on this report; `error` is what it must be told."""

    def __init__(self, error: NotFound | Forbidden, reason: str) -> None:
        super().__init__(reason)
        self.error = error
        self.reason = reason


def etag(version: int) -> str:
    """The entity tag of a report version, for `ETag` and `If-Match`."""
    return f'"{version}"'


def locate_own(
    conn: Connection,
    state: PolicyState,
    principal: Principal,
    report_id: str,
    *,
    lock: bool = False,
) -> StoredReport:
    """The caller's own report, or NotOriginator carrying 404 or 403 as api.md prescribes.

    With `lock`, the row stays locked until the transaction ends (PostgreSQL; SQLite already
    runs one writer at a time), so concurrent changes to one report apply one after the other.
    """
    if not service.is_report_id(report_id):
        raise NotOriginator(NotFound(), "level:none")
    statement = _OWN_REPORT.with_for_update() if lock else _OWN_REPORT
    row = conn.execute(statement, {"report_id": report_id, "member": principal.member}).first()
    if row is not None:
        return StoredReport.from_row(row)
    # The same two statements whether the report is missing or hidden: neither the answer nor
    # the work behind it tells them apart.
    if not service.is_readable(conn, principal.member, state.bundle.hash, report_id):
        raise NotOriginator(NotFound(), "level:none")
    raise NotOriginator(Forbidden("Only the originator of a report may do this."), "not_originator")


def _own_for_change(
    session: Session, state: PolicyState, principal: Principal, report_id: str, action: str
) -> StoredReport:
    """locate_own for a change, the refusal audited so it survives the rollback."""
    try:
        return locate_own(session.connection(), state, principal, report_id, lock=True)
    except NotOriginator as refused:
        _refuse(session, state, principal, action, report_id, refused.reason)
        raise refused.error from None


def _refuse(
    session: Session,
    state: PolicyState,
    principal: Principal,
    action: str,
    report_id: str,
    *reasons: str,
) -> None:
    entry = _entry(state, action, "deny", report_id[:64], *reasons)
    audit.record_refusal(session, principal.actor, entry)


def _record(
    session: Session,
    state: PolicyState,
    principal: Principal,
    action: str,
    report_id: str,
    *reasons: str,
) -> None:
    audit.record(session, principal.actor, _entry(state, action, "allow", report_id, *reasons))


def _originator_view(
    conn: Connection, state: PolicyState, envelope: Envelope, principal: Principal, report_id: str
) -> ReportView:
    # The originator's own view right after its change; the change's entry is its trace.
    return service.read(conn, state, envelope, principal, report_id, [], purpose=None)


def update_report(
    session: Session,
    state: PolicyState,
    envelope: Envelope,
    index: BlindIndex,
    principal: Principal,
    report_id: str,
    payload: ReportIn,
    if_match: str | None,
) -> ReportView:
    """Replace content and markings as version n+1, under a fresh data key; decide again."""
    action = "report.update"
    current = _own_for_change(session, state, principal, report_id, action)
    if if_match is None:
        _refuse(session, state, principal, action, report_id, "if_match_missing")
        raise PreconditionRequired('Send If-Match: "<version>" with the version you changed.')
    if current.status != "active":
        _refuse(session, state, principal, action, report_id, f"status:{current.status}")
        raise Conflict(f"A {current.status} report cannot be changed.")
    tag = if_match.strip()
    matched = _ETAG.match(tag)
    # "*" asks only that the report exist (RFC 9110); the client then forgoes the check.
    if tag != "*" and (matched is None or int(matched.group(1)) != current.version):
        _refuse(session, state, principal, action, report_id, "stale", f"version:{current.version}")
        raise PreconditionFailed(
            f"The report is at version {current.version}; fetch it and apply your change again."
        )
    service.validate_codes(state, payload)
    entries = service.index_entries(index, payload)
    now = utcnow()
    report = dataclasses.replace(
        service.new_report(report_id, principal.member, payload),
        version=current.version + 1,
        created_at=current.created_at,
        updated_at=now,
    )
    conn = session.connection()
    unchanged = ("id", "originator", "status", "created_at")
    changed = {k: v for k, v in dataclasses.asdict(report).items() if k not in unchanged}
    moved = conn.execute(
        update(_reports)
        # The version in the condition lets exactly one of two concurrent updates through.
        .where(_reports.c.id == report_id, _reports.c.version == current.version)
        .values(**changed)
    )
    if moved.rowcount != 1:
        _refuse(session, state, principal, action, report_id, "stale", "concurrent")
        raise PreconditionFailed(
            "The report changed meanwhile; fetch it and apply your change again."
        )
    entities = service.seal_version(conn, envelope, report, payload)
    conn.execute(delete(_topics).where(_topics.c.report_id == report_id))
    service.store_topics(conn, report_id, payload.topics)
    decided = service.decide_again(session, state, report)
    # Before the match alerts on this version, as on creation.
    service.emit_report_event(conn, "report.updated", report, decided.readable_before())
    previous = current_entries(conn, index, report_id)
    service.index_version(session, index, principal, report, decided.decisions, entries, previous)
    _record(session, state, principal, action, report_id, f"version:{report.version}")
    return service.originator_view(report, payload, entities, decided.decisions)


def revoke_report(
    session: Session,
    state: PolicyState,
    envelope: Envelope,
    principal: Principal,
    report_id: str,
    reason: str,
) -> ReportView:
    """Withdraw a report from everyone but its originator, at once; idempotent."""
    action = "report.revoke"
    current = _own_for_change(session, state, principal, report_id, action)
    if current.status == "purged":
        _refuse(session, state, principal, action, report_id, "status:purged")
        raise Conflict("A purged report cannot be revoked.")
    if current.status == "active":
        revoked = dataclasses.replace(current, status="revoked", updated_at=utcnow())
        _set_status(session, revoked)
        decided = service.decide_again(session, state, revoked)
        readers = decided.readable_before()
        service.emit_report_event(session.connection(), "report.revoked", revoked, readers)
    # The reason is the originator's free text and may say more than an audit entry should
    # hold in clear (entries outlive purges and go to the chairs): only its digest is kept,
    # enough to show later which reason was given.
    digest = hashlib.sha256(reason.encode()).hexdigest()[:32]
    _record(
        session,
        state,
        principal,
        action,
        report_id,
        f"status:{current.status}",
        f"reason_sha256:{digest}",
    )
    return _originator_view(session.connection(), state, envelope, principal, report_id)


def purge_report(
    session: Session, state: PolicyState, principal: Principal, report_id: str
) -> None:
    """Crypto-shred every version (data keys and ciphertexts gone) and keep a tombstone."""
    action = "report.purge"
    current = _own_for_change(session, state, principal, report_id, action)
    if current.status != "purged":
        versions = shred(session, state, current)
        _record(session, state, principal, action, report_id, f"versions:{versions}")
    else:
        _record(session, state, principal, action, report_id, "already_purged")


def shred(session: Session, state: PolicyState, current: StoredReport) -> int:
    """Make a report a tombstone: data keys, ciphertexts and index entries gone, decided again,
    `report.purged` raised; the number of versions shredded. The caller holds its row lock."""
    conn = session.connection()
    # Without its data key a version cannot be decrypted by anyone, whatever copies of its
    # ciphertext row exist (the key lives in a table of its own). The ciphertext goes too: it is
    # of no use any more.
    now = utcnow()
    shredded = conn.execute(
        update(_keys)
        .where(_keys.c.report_id == current.id)
        .values(wrapped_data_key=None, destroyed_at=now)
    )
    conn.execute(
        update(_versions)
        .where(_versions.c.report_id == current.id)
        .values(title_ct=None, body_ct=None, summary_ct=None, entities_ct=None)
    )
    # Nothing of the content may stay findable either.
    drop_entries(conn, current.id)
    purged = dataclasses.replace(current, status="purged", updated_at=now)
    _set_status(session, purged)
    decided = service.decide_again(session, state, purged)
    service.emit_report_event(conn, "report.purged", purged, decided.readable_before())
    return int(shredded.rowcount)


def _set_status(session: Session, report: StoredReport) -> None:
    session.connection().execute(
        update(_reports)
        .where(_reports.c.id == report.id)
        .values(status=report.status, updated_at=report.updated_at)
    )


@dataclass(frozen=True)
class VersionView:
    version: int
    created_at: datetime
    markings: dict[str, Any]
    title: str | None
    body: str | None
    summary: str | None
    entities: list[dict[str, Any]] | None


_VERSIONS = (
    select(_versions, _keys.c.key_version, _keys.c.wrapped_data_key)
    .join(
        _keys,
        and_(_keys.c.report_id == _versions.c.report_id, _keys.c.version == _versions.c.version),
    )
    .where(_versions.c.report_id == bindparam("report_id"))
    .order_by(_versions.c.version.desc())
)


def list_versions(
    conn: Connection,
    state: PolicyState,
    envelope: Envelope,
    principal: Principal,
    report_id: str,
    trace: list[audit.Entry],
) -> list[VersionView]:
    """Every version of the caller's own report, newest first, decrypted (none once purged)."""
    action = "report.versions"
    report = _own_for_reading(conn, state, principal, report_id, action, trace)
    views = []
    for row in conn.execute(_VERSIONS, {"report_id": report_id}):
        m = row._mapping
        plain: dict[str, str | None] = dict.fromkeys(service.CONTENT_FIELDS)
        if m["wrapped_data_key"] is not None:
            try:
                plain = service.decrypt_fields(
                    envelope, conn, m, report_id=report_id, originator=report.originator
                )
            except CorruptionError:
                # The attempt is traced even though nothing is served.
                trace.append(
                    _entry(
                        state, action, "error", report_id, f"version:{m['version']}", "corrupted"
                    )
                )
                raise
        entities = plain["entities"]
        views.append(
            VersionView(
                version=m["version"],
                created_at=m["created_at"],
                markings=m["markings"],
                title=plain["title"],
                body=plain["body"],
                summary=plain["summary"],
                entities=json.loads(entities) if entities is not None else None,
            )
        )
    trace.append(_entry(state, action, "allow", report_id, f"versions:{len(views)}"))
    return views


def _own_for_reading(
    conn: Connection,
    state: PolicyState,
    principal: Principal,
    report_id: str,
    action: str,
    trace: list[audit.Entry],
) -> StoredReport:
    try:
        return locate_own(conn, state, principal, report_id)
    except NotOriginator as refused:
        trace.append(_entry(state, action, "deny", report_id[:64], refused.reason))
        raise refused.error from None


def _entry(
    state: PolicyState, action: str, decision: str, report_id: str, *reasons: str
) -> audit.Entry:
    return audit.Entry(
        action=action,
        decision=decision,
        target=f"report:{report_id}",
        reasons=reasons,
        policy_hash=state.bundle.hash,
    )


@dataclass(frozen=True)
class AccessRecord:
    id: int
    time: datetime
    member: str | None
    client: str | None
    action: str
    level: str | None
    purpose: str | None


def access_log(
    conn: Connection,
    state: PolicyState,
    principal: Principal,
    report_id: str,
    limit: int,
    cursor: str | None,
    trace: list[audit.Entry],
) -> tuple[list[AccessRecord], str | None]:
    """Who read the caller's report, newest first: member, client, time, level and purpose."""
    action = "report.access_log"
    _own_for_reading(conn, state, principal, report_id, action, trace)
    statement = (
        select(_entries)
        .where(
            and_(
                _entries.c.target == f"report:{report_id}",
                _entries.c.action.in_(READ_ACTIONS),
                _entries.c.decision == "allow",
            )
        )
        .order_by(_entries.c.id.desc())
        .limit(limit + 1)
    )
    if cursor is not None:
        if _CURSOR.fullmatch(cursor) is None:
            raise Unprocessable(
                "The cursor is not valid.",
                [{"loc": ["query", "cursor"], "msg": "invalid cursor", "type": "cursor"}],
            )
        statement = statement.where(_entries.c.id < int(cursor))
    rows = conn.execute(statement).all()
    records = [
        AccessRecord(
            id=row.id,
            time=row.time,
            member=row.actor,
            client=row.client,
            action=row.action,
            level=next((r[6:] for r in row.reasons if r.startswith("level:")), None),
            purpose=row.purpose,
        )
        for row in rows[:limit]
    ]
    next_cursor = str(records[-1].id) if len(rows) > limit else None
    trace.append(_entry(state, action, "allow", report_id, f"items:{len(records)}"))
    return records, next_cursor
