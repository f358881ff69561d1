"""Submitting, reading and listing reports under the stored need-to-know decisions."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, delete, insert, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer

from app.audit import service as audit
from app.auth.service import Principal
from app.db import utcnow
from app.errors import Conflict, NotFound, Unprocessable
from app.keys.service import Envelope, field_aad
from app.kit import crypto
from app.kit.crypto import CorruptionError, SecretBytes
from app.policy.service import (
    GROUPS,
    READABLE_LEVELS,
    Audience,
    Classification,
    Decision,
    PolicyState,
    ReportFacts,
    audience_of,
)
from app.reports.models import IdempotencyKey, Report, ReportAccess, ReportTopic, ReportVersion
from app.reports.schemas import ReportIn

CLASSIFICATION_ORDER = ("UNCLASSIFIED", "RESTRICTED", "CONFIDENTIAL", "SECRET")
CONTENT_FIELDS = ("title", "body", "summary", "entities")


@dataclass(frozen=True)
class ReportView:
    """A report as one caller may see it: content only where its level allows."""

    report: Report
    level: str
    title: str | None = None
    body: str | None = None
    summary: str | None = None
    entities: list[dict[str, Any]] | None = None
    audience: Audience | None = None


@dataclass(frozen=True)
class ListFilters:
    topic: str | None = None
    originator: str | None = None
    classification: str | None = None
    status: str | None = None
    updated_since: datetime | None = None


def _validate_codes(state: PolicyState, payload: ReportIn) -> None:
    bundle = state.bundle
    errors: list[dict[str, Any]] = []
    for i, topic in enumerate(payload.topics):
        if topic not in bundle.taxonomy.leaves:
            errors.append(
                {
                    "loc": ["body", "topics", str(i)],
                    "msg": "unknown topic code",
                    "type": "unknown_topic",
                }
            )
    if len(set(payload.topics)) != len(payload.topics):
        errors.append({"loc": ["body", "topics"], "msg": "duplicate topic", "type": "duplicate"})
    for name in ("releasable_to", "tearline_to"):
        codes: list[str] = getattr(payload, name)
        for i, code in enumerate(codes):
            if code not in bundle.members and code not in GROUPS:
                errors.append(
                    {
                        "loc": ["body", name, str(i)],
                        "msg": "unknown member or group",
                        "type": "unknown_member",
                    }
                )
    if errors:
        raise Unprocessable("The report refers to unknown codes.", errors)


def _new_report(report_id: str, originator: str, payload: ReportIn) -> Report:
    now = utcnow()
    return Report(
        id=report_id,
        originator=originator,
        version=1,
        status="active",
        created_at=now,
        updated_at=now,
        classification=payload.classification,
        tlp=payload.tlp,
        orcon=payload.orcon,
        topics=list(payload.topics),
        grading=payload.grading.model_dump() if payload.grading else None,
        releasable_to=list(payload.releasable_to),
        tearline_to=list(payload.tearline_to),
        tearline_classification=payload.tearline_classification,
        has_summary=payload.summary is not None,
    )


def request_hash(payload: ReportIn) -> str:
    """A digest of the request, telling a retry from another request with the same key."""
    canonical = json.dumps(payload.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def preview(
    session: Session, state: PolicyState, principal: Principal, payload: ReportIn
) -> Audience:
    """Validate a report and compute its audience without storing anything but the audit entry."""
    _validate_codes(state, payload)
    # A transient row, never added to the session: the same facts a submission would have.
    decisions = state.decide(_facts_of(_new_report("preview", principal.member, payload)))
    audit.record(
        session,
        principal.actor,
        audit.Entry(action="report.preview", decision="allow", policy_hash=state.bundle.hash),
    )
    return audience_of(decisions.values())


def _encrypt(
    key: SecretBytes, report_id: str, version: int, originator: str, field: str, value: str | None
) -> bytes | None:
    if value is None:
        return None
    return crypto.aead_encrypt(
        key, value.encode(), field_aad(report_id, version, originator, field)
    )


def create(
    session: Session,
    state: PolicyState,
    envelope: Envelope,
    principal: Principal,
    payload: ReportIn,
    idempotency_key: str | None,
) -> tuple[ReportView, bool]:
    """Store a new report with its decisions; returns the view and whether it was a replay."""
    _validate_codes(state, payload)
    digest = request_hash(payload)
    if idempotency_key is not None:
        replay = _replay(session, state, envelope, principal, idempotency_key, digest)
        if replay is not None:
            return replay, True

    report_id = str(uuid.uuid4())
    originator = principal.member
    bundle = state.bundle
    report = _new_report(report_id, originator, payload)
    now = report.created_at
    decisions = state.decide(_facts_of(report))
    data_key = envelope.new_data_key(session, report_id, 1, originator)
    entities = [e.model_dump(exclude_none=True) for e in payload.entities]
    session.add(report)
    session.add(
        ReportVersion(
            report_id=report_id,
            version=1,
            created_at=now,
            key_member=data_key.member,
            key_version=data_key.member_key_version,
            wrapped_data_key=data_key.wrapped,
            title_ct=_encrypt(data_key.key, report_id, 1, originator, "title", payload.title),
            body_ct=_encrypt(data_key.key, report_id, 1, originator, "body", payload.body),
            summary_ct=_encrypt(data_key.key, report_id, 1, originator, "summary", payload.summary),
            entities_ct=_encrypt(
                data_key.key,
                report_id,
                1,
                originator,
                "entities",
                json.dumps(entities, ensure_ascii=False),
            ),
        )
    )
    # Flushed here so the child rows below can reference the report in one round trip each.
    session.flush()
    session.execute(
        insert(ReportTopic), [{"report_id": report_id, "topic": t} for t in payload.topics]
    )
    _store_decisions(session, report_id, decisions, now)
    if idempotency_key is not None:
        _remember_key(session, principal, idempotency_key, digest, report_id)
    audit.record(
        session,
        principal.actor,
        audit.Entry(
            action="report.create",
            decision="allow",
            target=f"report:{report_id}",
            reasons=("version:1",),
            policy_hash=bundle.hash,
        ),
    )
    view = ReportView(
        report=report,
        level="full",
        title=payload.title,
        body=payload.body,
        summary=payload.summary,
        entities=entities,
        audience=audience_of(decisions.values()),
    )
    return view, False


def _store_decisions(
    session: Session, report_id: str, decisions: dict[str, Decision], updated_at: datetime
) -> None:
    """Store every level above none with the bundle hash and the policies that decided it."""
    now = utcnow()
    rows = [
        {
            "report_id": report_id,
            "member_code": d.member,
            "level": d.level.value,
            "report_updated_at": updated_at,
            "policy_hash": d.policy_hash,
            "policy_ids": list(d.policy_ids),
            "decided_at": now,
        }
        for d in decisions.values()
        if d.level.value != "none"
    ]
    if rows:
        session.execute(insert(ReportAccess), rows)


def _remember_key(
    session: Session, principal: Principal, key: str, digest: str, report_id: str
) -> None:
    try:
        # A concurrent request with the same key either commits first (this insert then
        # conflicts) or waits for us; either way exactly one report survives.
        with session.begin_nested():
            session.execute(
                insert(IdempotencyKey),
                [
                    {
                        "client_id": principal.client_id,
                        "key": key,
                        "request_hash": digest,
                        "report_id": report_id,
                        "created_at": utcnow(),
                    }
                ],
            )
    except IntegrityError as exc:
        raise Conflict(
            "A request with this Idempotency-Key completed concurrently; retry for its result."
        ) from exc


def _replay(
    session: Session,
    state: PolicyState,
    envelope: Envelope,
    principal: Principal,
    key: str,
    digest: str,
) -> ReportView | None:
    stored = session.get(IdempotencyKey, (principal.client_id, key))
    if stored is None:
        return None
    if stored.request_hash != digest:
        audit.record_refusal(
            session,
            principal.actor,
            audit.Entry(
                action="report.create",
                decision="deny",
                target=f"report:{stored.report_id}",
                reasons=("idempotency_key_reused",),
            ),
        )
        raise Conflict("This Idempotency-Key was used with a different request.")
    return read(
        session,
        state,
        envelope,
        principal,
        stored.report_id,
        purpose=None,
        action="report.create.replay",
    )


def _is_report_id(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def readable_statement(member: str, policy_hash: str) -> Select[Report, ReportVersion, str]:
    """Every report version the member may read, with its level: the only way reads start.

    Only decisions made under the bundle in force count: a decision left over from an earlier
    bundle is treated as no decision (fail closed) until it has been made again.
    """
    return (
        select(Report, ReportVersion, ReportAccess.level)
        .join(
            ReportAccess,
            and_(
                ReportAccess.report_id == Report.id,
                ReportAccess.member_code == member,
                ReportAccess.level.in_(READABLE_LEVELS),
                ReportAccess.policy_hash == policy_hash,
            ),
        )
        .join(
            ReportVersion,
            and_(ReportVersion.report_id == Report.id, ReportVersion.version == Report.version),
        )
        # Stored decisions already hide withdrawn reports; this is the second lock on that door.
        .where(or_(Report.status == "active", Report.originator == member))
    )


def _decrypt(
    envelope: Envelope,
    session: Session,
    report: Report,
    version: ReportVersion,
    fields: tuple[str, ...],
) -> dict[str, str | None]:
    key = envelope.open_data_key(
        session,
        report_id=report.id,
        version=version.version,
        originator=report.originator,
        member_key_version=version.key_version,
        wrapped=version.wrapped_data_key,
    )
    out: dict[str, str | None] = {}
    for name in fields:
        blob: bytes | None = getattr(version, f"{name}_ct")
        if blob is None:
            out[name] = None
            continue
        aad = field_aad(report.id, version.version, report.originator, name)
        out[name] = crypto.aead_decrypt(key, blob, aad).decode()
    return out


def _view(
    envelope: Envelope,
    session: Session,
    report: Report,
    version: ReportVersion,
    level: str,
    *,
    with_body: bool,
) -> ReportView:
    fields: tuple[str, ...]
    if level == "full":
        fields = CONTENT_FIELDS if with_body else ("title", "summary")
    else:
        fields = ("summary",)
    plain = _decrypt(envelope, session, report, version, fields)
    entities_json = plain.get("entities")
    entities = json.loads(entities_json) if entities_json is not None else None
    return ReportView(
        report=report,
        level=level,
        title=plain.get("title"),
        body=plain.get("body"),
        summary=plain.get("summary"),
        entities=entities,
    )


def _stored_audience(session: Session, report_id: str) -> Audience:
    rows = session.execute(
        select(ReportAccess.member_code, ReportAccess.level).where(
            ReportAccess.report_id == report_id
        )
    ).all()
    return Audience(
        full=tuple(sorted(m for m, lvl in rows if lvl == "full")),
        tearline=tuple(sorted(m for m, lvl in rows if lvl == "tearline")),
    )


def read(
    session: Session,
    state: PolicyState,
    envelope: Envelope,
    principal: Principal,
    report_id: str,
    *,
    purpose: str | None,
    action: str = "report.read",
) -> ReportView:
    """The report at the caller's level, in one query; NotFound (audited) otherwise."""
    # Report ids are canonical UUIDs; anything else is absent without asking the database
    # (PostgreSQL refuses a NUL in a string outright, which would be a 500, not a 404).
    row = (
        None
        if not _is_report_id(report_id)
        else session.execute(
            readable_statement(principal.member, state.bundle.hash).where(Report.id == report_id)
        ).first()
    )
    if row is None:
        audit.record_refusal(
            session,
            principal.actor,
            audit.Entry(
                action=action,
                decision="deny",
                target=f"report:{report_id[:64]}",
                reasons=("level:none",),
                policy_hash=state.bundle.hash,
                purpose=purpose,
            ),
        )
        raise NotFound
    report, version, level = row
    try:
        view = _view(envelope, session, report, version, level, with_body=True)
    except CorruptionError:
        # The attempt is traced even though nothing is served.
        audit.record_refusal(
            session,
            principal.actor,
            audit.Entry(
                action=action,
                decision="error",
                target=f"report:{report.id}",
                reasons=(f"level:{level}", "corrupted"),
                policy_hash=state.bundle.hash,
                purpose=purpose,
            ),
        )
        raise
    if report.originator == principal.member:
        view = ReportView(**{**view.__dict__, "audience": _stored_audience(session, report.id)})
    audit.record(
        session,
        principal.actor,
        audit.Entry(
            action=action,
            decision="allow",
            target=f"report:{report.id}",
            reasons=(f"level:{level}", f"version:{report.version}"),
            policy_hash=state.bundle.hash,
            purpose=purpose,
        ),
    )
    return view


def encode_cursor(report: Report) -> str:
    """An opaque position after `report` in a newest-first listing."""
    raw = json.dumps([report.updated_at.isoformat(), report.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The position in a cursor; Unprocessable if it was not made by encode_cursor."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, report_id = json.loads(raw)
        position = datetime.fromisoformat(stamp)
        if position.tzinfo is None or not isinstance(report_id, str):
            raise ValueError("not a cursor of ours")
        return position, report_id
    except (ValueError, TypeError, binascii.Error) as exc:
        raise Unprocessable(
            "The cursor is not valid.",
            [{"loc": ["query", "cursor"], "msg": "invalid cursor", "type": "cursor"}],
        ) from exc


def list_readable(
    session: Session,
    state: PolicyState,
    envelope: Envelope,
    principal: Principal,
    filters: ListFilters,
    limit: int,
    cursor: str | None,
) -> tuple[list[ReportView], str | None]:
    """A newest-first page of the reports the caller may read at tearline or above."""
    bundle = state.bundle
    if filters.topic is not None and filters.topic not in bundle.taxonomy.leaves:
        raise Unprocessable(
            "Unknown topic.",
            [{"loc": ["query", "topic"], "msg": "unknown topic code", "type": "unknown_topic"}],
        )
    if filters.originator is not None and filters.originator not in bundle.members:
        raise Unprocessable(
            "Unknown member.",
            [{"loc": ["query", "originator"], "msg": "unknown member", "type": "unknown_member"}],
        )
    stmt = readable_statement(principal.member, bundle.hash).options(
        defer(ReportVersion.body_ct), defer(ReportVersion.entities_ct)
    )
    if filters.topic is not None:
        stmt = stmt.where(
            Report.id.in_(select(ReportTopic.report_id).where(ReportTopic.topic == filters.topic))
        )
    if filters.originator is not None:
        stmt = stmt.where(Report.originator == filters.originator)
    if filters.classification is not None:
        stmt = stmt.where(Report.classification == filters.classification)
    if filters.status is not None:
        stmt = stmt.where(Report.status == filters.status)
    if filters.updated_since is not None:
        stmt = stmt.where(ReportAccess.report_updated_at >= filters.updated_since)
    if cursor is not None:
        after_time, after_id = decode_cursor(cursor)
        stmt = stmt.where(
            or_(
                ReportAccess.report_updated_at < after_time,
                and_(
                    ReportAccess.report_updated_at == after_time, ReportAccess.report_id < after_id
                ),
            )
        )
    stmt = stmt.order_by(ReportAccess.report_updated_at.desc(), ReportAccess.report_id.desc())
    rows = session.execute(stmt.limit(limit + 1)).all()
    page = rows[:limit]
    views = [_view(envelope, session, r, v, lvl, with_body=False) for r, v, lvl in page]
    next_cursor = encode_cursor(page[-1][0]) if len(rows) > limit else None
    entries = [
        audit.Entry(
            action="report.list",
            decision="allow",
            target="reports",
            reasons=(f"items:{len(views)}",),
            policy_hash=bundle.hash,
        )
    ]
    # Each listed report shows its summary (and title at full): that is an access to it.
    entries += [
        audit.Entry(
            action="report.list_item",
            decision="allow",
            target=f"report:{v.report.id}",
            reasons=(f"level:{v.level}", f"version:{v.report.version}"),
            policy_hash=bundle.hash,
        )
        for v in views
    ]
    audit.record(session, principal.actor, *entries)
    return views, next_cursor


def _facts_of(report: Report) -> ReportFacts:
    return ReportFacts(
        id=report.id,
        originator=report.originator,
        status=report.status,
        classification=Classification[report.classification],
        topics=frozenset(report.topics),
        releasable_to=frozenset(report.releasable_to),
        tearline_to=frozenset(report.tearline_to),
        tearline_classification=Classification[report.tearline_classification],
        has_summary=report.has_summary,
        tlp=report.tlp,
        orcon=report.orcon,
    )


def redecide_stale(session: Session, state: PolicyState, batch: int = 500) -> int:
    """Decide again every report whose stored decisions were made under another bundle.

    Until this has run, reads of such reports find no decision under the bundle in force and
    answer 404 (see readable_statement): stale decisions are never served.
    """
    bundle = state.bundle
    stale = (
        select(ReportAccess.report_id)
        .where(ReportAccess.policy_hash != bundle.hash)
        .distinct()
        .limit(batch)
    )
    done = 0
    while True:
        ids = list(session.scalars(stale))
        if not ids:
            return done
        for report in session.scalars(select(Report).where(Report.id.in_(ids))):
            decisions = state.decide(_facts_of(report))
            session.execute(delete(ReportAccess).where(ReportAccess.report_id == report.id))
            _store_decisions(session, report.id, decisions, report.updated_at)
        done += len(ids)
