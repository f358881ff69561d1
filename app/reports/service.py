"""Submitting, reading and listing reports under the stored need-to-know decisions."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, cast

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Connection,
    Row,
    Select,
    Table,
    and_,
    bindparam,
    delete,
    literal,
    or_,
    select,
    tuple_,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.auth.service import Principal
from app.db import Prepared, PreparedInsert, Record, UTCDateTime, utcnow
from app.errors import Conflict, NotFound, Unprocessable
from app.keys.service import Envelope, field_aad
from app.kit import crypto, pagination
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
from app.reports.models import (
    IdempotencyKey,
    Report,
    ReportAccess,
    ReportGrant,
    ReportKey,
    ReportTopic,
    ReportVersion,
    effective_level,
    level_in,
)
from app.reports.schemas import ReportIn
from app.search import matches
from app.search.index import BlindIndex, IndexEntry, insert_entries, replace_entries
from app.webhooks import service as events

CONTENT_FIELDS = ("title", "body", "summary", "entities")

# The hot paths (read, list, create) use Core statements on the tables: the ORM's unit of work
# and identity map cost more than the whole query on these single-row, read-once paths.
_reports = cast(Table, Report.__table__)
_versions = cast(Table, ReportVersion.__table__)
_keys = cast(Table, ReportKey.__table__)
_access = cast(Table, ReportAccess.__table__)
_topics = cast(Table, ReportTopic.__table__)
_idempotency = cast(Table, IdempotencyKey.__table__)
_grants = cast(Table, ReportGrant.__table__)


@dataclass(frozen=True, slots=True)
class StoredReport:
    """A report's metadata and markings as stored (never its content)."""

    id: str
    originator: str
    version: int
    status: str
    created_at: datetime
    updated_at: datetime
    classification: str
    tlp: str
    orcon: bool
    topics: list[str]
    grading: dict[str, Any] | None
    releasable_to: list[str]
    tearline_to: list[str]
    tearline_classification: str
    has_summary: bool

    @classmethod
    def from_row(cls, row: Row[Any] | Record) -> StoredReport:
        """The report columns of a row selected with REPORT_COLUMNS."""
        m = row._mapping
        return cls(**{name: m[name] for name in _REPORT_FIELDS})


_REPORT_FIELDS = tuple(StoredReport.__dataclass_fields__)

# The inserts of every submission, on the driver's cursor (see PreparedInsert).
_INSERT_REPORT = PreparedInsert(_reports, _REPORT_FIELDS)
_INSERT_VERSION = PreparedInsert(
    _versions,
    ["report_id", "version", "created_at", "markings", *(f"{f}_ct" for f in CONTENT_FIELDS)],
)
_INSERT_KEY = PreparedInsert(
    _keys, ["report_id", "version", "key_member", "key_version", "wrapped_data_key"]
)
_INSERT_TOPIC = PreparedInsert(_topics, ["report_id", "topic"])
_INSERT_ACCESS = PreparedInsert(
    _access,
    [
        "report_id",
        "member_code",
        "level",
        "report_updated_at",
        "topic_codes",
        "policy_hash",
        "policy_ids",
        "decided_at",
        "expires_at",
        "level_after",
    ],
)
_INSERT_IDEMPOTENCY = PreparedInsert(
    _idempotency, ["client_id", "key", "request_hash", "report_id", "created_at"]
)
REPORT_COLUMNS = tuple(_reports.c[name] for name in _REPORT_FIELDS)


@dataclass(frozen=True)
class ReportView:
    """A report as one caller may see it: content only where its level allows."""

    report: StoredReport
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


def validate_codes(state: PolicyState, payload: ReportIn) -> None:
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


def new_report(report_id: str, originator: str, payload: ReportIn) -> StoredReport:
    now = utcnow()
    return StoredReport(
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
    validate_codes(state, payload)
    # A transient row, never added to the session: the same facts a submission would have.
    decisions = state.decide(facts_of(new_report("preview", principal.member, payload)))
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
    index: BlindIndex,
    principal: Principal,
    payload: ReportIn,
    idempotency_key: str | None,
) -> tuple[ReportView, bool]:
    """Store a new report with its decisions; returns the view and whether it was a replay."""
    validate_codes(state, payload)
    entries = index_entries(index, payload)
    digest = request_hash(payload)
    if idempotency_key is not None:
        replay = _replay(session, state, envelope, principal, idempotency_key, digest)
        if replay is not None:
            return replay, True

    report_id = str(uuid.uuid4())
    bundle = state.bundle
    report = new_report(report_id, principal.member, payload)
    decisions = state.decide(facts_of(report))
    conn = session.connection()
    _INSERT_REPORT.run(conn, [dataclasses.asdict(report)])
    entities = seal_version(conn, envelope, report, payload)
    store_topics(conn, report_id, payload.topics)
    _store_decisions(session, report, decisions)
    # Before the match alerts: a consumer learns of the report before it learns of matches on it.
    emit_report_event(conn, "report.created", report)
    index_version(session, index, principal, report, decisions, entries, previous=None)
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
    return originator_view(report, payload, entities, decisions), False


def store_topics(conn: Connection, report_id: str, topics: Iterable[str]) -> None:
    """The report's topic rows (for listings filtered by topic)."""
    _INSERT_TOPIC.run(conn, [{"report_id": report_id, "topic": t} for t in topics])


def index_entries(index: BlindIndex, payload: ReportIn) -> list[IndexEntry]:
    """The blind-index entries of a submission's entities; Unprocessable if one is invalid."""
    return index.entries(payload.entities, ("body", "entities"))


def index_version(
    session: Session,
    index: BlindIndex,
    principal: Principal,
    report: StoredReport,
    decisions: dict[str, Decision],
    entries: list[IndexEntry],
    previous: Iterable[IndexEntry] | None,
) -> None:
    """Index the entities of the version just stored and alert on those it did not hold before.

    `previous`: the entries of the version replaced; None for a new report (nothing to replace).
    """
    conn = session.connection()
    if previous is None:
        insert_entries(conn, index, {report.id: entries}, {report.id: report.originator})
    else:
        replace_entries(conn, index, report.id, report.originator, entries)
    known = set(previous or ())
    matches.alert_matches(
        session,
        index,
        report_id=report.id,
        originator=report.originator,
        levels={code: d.level.value for code, d in decisions.items()},
        entries=[e for e in entries if e not in known],
        actor=principal.actor,
        # The bundle the decisions were made under (every roster member has one).
        policy_hash=next(iter(decisions.values())).policy_hash,
    )


def originator_view(
    report: StoredReport,
    payload: ReportIn,
    entities: list[dict[str, Any]],
    decisions: dict[str, Decision],
) -> ReportView:
    """What the originator is shown right after writing `payload`: all of it, and its audience."""
    return ReportView(
        report=report,
        level="full",
        title=payload.title,
        body=payload.body,
        summary=payload.summary,
        entities=entities,
        audience=audience_of(decisions.values()),
    )


MARKINGS = (
    "classification",
    "tlp",
    "orcon",
    "topics",
    "grading",
    "releasable_to",
    "tearline_to",
    "tearline_classification",
)


def markings_of(report: StoredReport) -> dict[str, Any]:
    """The markings a version is released under, as stored with it."""
    return {name: getattr(report, name) for name in MARKINGS}


def seal_version(
    conn: Connection, envelope: Envelope, report: StoredReport, payload: ReportIn
) -> list[dict[str, Any]]:
    """Store `payload`'s content as version `report.version`, under a data key of its own.

    Returns the entities as stored (for the response).
    """
    report_id, version, originator = report.id, report.version, report.originator
    data_key = envelope.new_data_key(conn, report_id, version, originator)
    entities = [e.model_dump(exclude_none=True) for e in payload.entities]

    def seal(field: str, value: str | None) -> bytes | None:
        return _encrypt(data_key.key, report_id, version, originator, field, value)

    _INSERT_VERSION.run(
        conn,
        [
            {
                "report_id": report_id,
                "version": version,
                "created_at": report.updated_at,
                "markings": markings_of(report),
                "title_ct": seal("title", payload.title),
                "body_ct": seal("body", payload.body),
                "summary_ct": seal("summary", payload.summary),
                "entities_ct": seal("entities", json.dumps(entities, ensure_ascii=False)),
            }
        ],
    )
    _INSERT_KEY.run(
        conn,
        [
            {
                "report_id": report_id,
                "version": version,
                "key_member": data_key.member,
                "key_version": data_key.member_key_version,
                "wrapped_data_key": data_key.wrapped,
            }
        ],
    )
    return entities


@dataclass(frozen=True)
class Grant:
    """Full access the originator granted `member` (see ReportGrant); None: no expiry."""

    member: str
    expires_at: datetime | None


def active_grants(conn: Connection, report_ids: list[str]) -> dict[str, list[Grant]]:
    """The unexpired grants of each report."""
    if not report_ids:
        return {}
    rows = conn.execute(
        select(_grants.c.report_id, _grants.c.member_code, _grants.c.expires_at).where(
            _grants.c.report_id.in_(report_ids),
            or_(_grants.c.expires_at.is_(None), _grants.c.expires_at > utcnow()),
        )
    )
    out: dict[str, list[Grant]] = {}
    for report_id, member, expires_at in rows:
        out.setdefault(report_id, []).append(Grant(member, expires_at))
    return out


@dataclass(frozen=True)
class Expiring:
    """A level that rests on a grant: from `at` on, the member's level is `level_after`."""

    at: datetime
    level_after: str


def decide_with_grants(
    state: PolicyState, report: StoredReport, grants: list[Grant]
) -> tuple[dict[str, Decision], dict[str, Expiring]]:
    """Every member's decision on `report` under its unexpired grants, and which ones expire.

    A grant enters the decision as a fact (rule 4 of the base policy, clearance still applies);
    where an expiring grant raised a member's level, the level without it is kept beside it so
    that reads fall back to it on time without anything being decided again.
    """
    base = state.decide(facts_of(report))
    if not grants:
        return base, {}
    decisions = state.decide(facts_of(report, granted=frozenset(g.member for g in grants)))
    expiring = {
        g.member: Expiring(g.expires_at, base[g.member].level.value)
        for g in grants
        if g.expires_at is not None and decisions[g.member].level != base[g.member].level
    }
    return decisions, expiring


@dataclass(frozen=True, slots=True)
class Redecision:
    """The decisions decide_again stored, and each member's level just before and after.

    `before` and `after` map members to their effective stored level (see effective_level)
    above none, at one instant. `before` counts decisions of any bundle: stale after a reload,
    they are still what members could read until this change.
    """

    decisions: dict[str, Decision]
    before: dict[str, str]
    after: dict[str, str]

    def readable_before(self) -> set[str]:
        """The members that could read the report before the change."""
        return {m for m, level in self.before.items() if level in READABLE_LEVELS}

    def changed(self) -> set[str]:
        """The members whose level changed, in either direction (to or from hit and none too)."""
        return {
            m
            for m in self.before.keys() | self.after.keys()
            if self.before.get(m) != self.after.get(m)
        }


_STORED_LEVELS = select(_access.c.member_code, effective_level()).where(
    _access.c.report_id == bindparam("report_id")
)


def stored_levels(conn: Connection, report_id: str, now: datetime) -> dict[str, str]:
    """Each member's effective stored level on the report at `now`, above none, whatever bundle
    decided it."""
    rows = conn.execute(_STORED_LEVELS, {"report_id": report_id, "now": now})
    return {member: level for member, level in rows if level not in (None, "none")}


def decide_again(
    session: Session,
    state: PolicyState,
    report: StoredReport,
    grants: list[Grant] | None = None,
) -> Redecision:
    """Replace a report's stored decisions by those the bundle in force makes for it now.

    `grants`: the report's unexpired grants, when the caller has them already. Every caller
    holds the report's row lock, so the levels read before the change are the last ones.
    """
    conn = session.connection()
    if grants is None:
        grants = active_grants(conn, [report.id]).get(report.id, [])
    decisions, expiring = decide_with_grants(state, report, grants)
    now = utcnow()
    before = stored_levels(conn, report.id, now)
    conn.execute(delete(_access).where(_access.c.report_id == report.id))
    _store_decisions(session, report, decisions, expiring)
    # As reads will see them at the same instant as `before`: a grant that has run out since
    # the grants were read counts at its level after, or a lapse would pass for a change.
    after: dict[str, str] = {}
    for member, decision in decisions.items():
        e = expiring.get(member)
        level = e.level_after if e is not None and e.at <= now else decision.level.value
        if level != "none":
            after[member] = level
    return Redecision(decisions, before, after)


def emit_report_event(
    conn: Connection,
    event_type: str,
    report: StoredReport,
    audience: Iterable[str] | None = None,
) -> None:
    """Store a `report.*` event in the transaction of the change it describes.

    Its data are ids and codes, never content: who receives an event is only decided at
    delivery (see Event), and content goes out then, if at all, at each subscriber's own level.
    `audience`: the members beyond the current readers it concerns (see Event).
    """
    data = {
        "report_id": report.id,
        "originator": report.originator,
        "version": report.version,
        "topics": list(report.topics),
    }
    events.emit(conn, event_type, data, report_id=report.id, audience=audience)


def topic_codes(topics: list[str]) -> str:
    """The report's topics as stored on each decision: ",MOV.HAW,REV.OIL," (see ReportAccess)."""
    return "," + ",".join(topics) + ","


def _store_decisions(
    session: Session,
    report: StoredReport,
    decisions: dict[str, Decision],
    expiring: dict[str, Expiring] | None = None,
) -> None:
    """Store every level above none with the bundle hash and the policies that decided it."""
    now = utcnow()
    codes = topic_codes(report.topics)
    expiring = expiring or {}
    rows = [
        {
            "report_id": report.id,
            "member_code": d.member,
            "level": d.level.value,
            "report_updated_at": report.updated_at,
            "topic_codes": codes,
            "policy_hash": d.policy_hash,
            "policy_ids": list(d.policy_ids),
            "decided_at": now,
            "expires_at": e.at if (e := expiring.get(d.member)) else None,
            "level_after": e.level_after if e else None,
        }
        for d in decisions.values()
        if d.level.value != "none"
    ]
    _INSERT_ACCESS.run(session.connection(), rows)


def _remember_key(
    session: Session, principal: Principal, key: str, digest: str, report_id: str
) -> None:
    row = {
        "client_id": principal.client_id,
        "key": key,
        "request_hash": digest,
        "report_id": report_id,
        "created_at": utcnow(),
    }
    try:
        # A concurrent request with the same key either commits first (this insert then
        # conflicts) or waits for us; either way exactly one report survives. The conflict
        # rolls the whole request back, so no savepoint is needed.
        _INSERT_IDEMPOTENCY.run(session.connection(), [row])
    except IntegrityError as exc:
        raise Conflict(
            "A request with this Idempotency-Key completed concurrently; retry for its result."
        ) from exc


_STORED_KEY = select(_idempotency.c.request_hash, _idempotency.c.report_id).where(
    _idempotency.c.client_id == bindparam("client_id"), _idempotency.c.key == bindparam("key")
)


def _replay(
    session: Session,
    state: PolicyState,
    envelope: Envelope,
    principal: Principal,
    key: str,
    digest: str,
) -> ReportView | None:
    stored = (
        session.connection()
        .execute(_STORED_KEY, {"client_id": principal.client_id, "key": key})
        .first()
    )
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
    trace: list[audit.Entry] = []
    try:
        return read(
            session.connection(),
            state,
            envelope,
            principal,
            stored.report_id,
            trace,
            purpose=None,
            action="report.create.replay",
        )
    finally:
        for entry in trace:
            # A refusal is kept even though the request it refuses rolls back.
            keep = audit.record if entry.decision == "allow" else audit.record_refusal
            keep(session, principal.actor, entry)


def is_report_id(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


_CIPHER_COLUMNS = (
    _keys.c.key_version,
    _keys.c.wrapped_data_key,
    _versions.c.title_ct,
    _versions.c.summary_ct,
)


def _readable_level() -> ColumnElement[bool]:
    # The same condition as the partial index ix_report_access_readable (READABLE_PREDICATE).
    return level_in(READABLE_LEVELS)


def _readable(*, with_body: bool) -> Select[Any]:
    columns = (*REPORT_COLUMNS, *_CIPHER_COLUMNS, effective_level())
    if with_body:
        columns = (*columns, _versions.c.body_ct, _versions.c.entities_ct)
    member: BindParameter[str] = bindparam("member")
    return (
        select(*columns)
        .select_from(_reports)
        .join(
            _access,
            and_(
                _access.c.report_id == _reports.c.id,
                _access.c.member_code == member,
                _readable_level(),
                _access.c.policy_hash == bindparam("policy_hash"),
            ),
        )
        .join(
            _versions,
            and_(_versions.c.report_id == _reports.c.id, _versions.c.version == _reports.c.version),
        )
        .join(
            _keys,
            and_(_keys.c.report_id == _reports.c.id, _keys.c.version == _reports.c.version),
        )
        # Stored decisions already hide withdrawn reports; this is the second lock on that door.
        .where(or_(_reports.c.status == "active", _reports.c.originator == member))
    )


# Built once: every read and list reuses the compiled form.
_READABLE_FOR_LIST = _readable(with_body=False)
# The two statements of every read by id, run on the driver's cursor (see Prepared).
_READ_ONE = Prepared(_readable(with_body=True).where(_reports.c.id == bindparam("report_id")))
_AUDIENCE = Prepared(
    select(_access.c.member_code, effective_level()).where(
        _access.c.report_id == bindparam("report_id"),
        _readable_level(),
    )
)


def readable_statement(member: str, policy_hash: str) -> Select[Any]:
    """Every report version the member may read, with its level: the only way reads start.

    Only decisions made under the bundle in force count: a decision left over from an earlier
    bundle is treated as no decision (fail closed) until it has been made again.
    """
    return _READABLE_FOR_LIST.params(member=member, policy_hash=policy_hash, now=utcnow())


def is_readable(conn: Connection, member: str, policy_hash: str, report_id: str) -> bool:
    """Whether `member` may read the report at tearline or above under the bundle `policy_hash`.

    The one probe every "404 or 403" answer uses, so all of them agree with a read.
    """
    probe = readable_statement(member, policy_hash).where(_reports.c.id == report_id)
    return conn.execute(probe).first() is not None


def decrypt_fields(
    envelope: Envelope,
    conn: Connection,
    ciphertexts: Mapping[Any, Any],
    *,
    report_id: str,
    originator: str,
    fields: tuple[str, ...] = CONTENT_FIELDS,
) -> dict[str, str | None]:
    """The plaintext of `fields` of one stored version.

    `ciphertexts` holds the version's `version`, `key_version`, `wrapped_data_key` and
    `<field>_ct` columns; CorruptionError if anything fails authentication or is destroyed.
    """
    version = ciphertexts["version"]
    key = envelope.open_data_key(
        conn,
        report_id=report_id,
        version=version,
        originator=originator,
        member_key_version=ciphertexts["key_version"],
        wrapped=ciphertexts["wrapped_data_key"],
    )
    out: dict[str, str | None] = {}
    for name in fields:
        blob: bytes | None = ciphertexts[f"{name}_ct"]
        if blob is None:
            out[name] = None
            continue
        aad = field_aad(report_id, version, originator, name)
        out[name] = crypto.aead_decrypt(key, blob, aad).decode()
    return out


def _view(
    envelope: Envelope, conn: Connection, row: Row[Any] | Record, *, with_body: bool
) -> ReportView:
    level: str = row._mapping["level"]
    if row._mapping["status"] == "purged":
        # A tombstone: its keys are destroyed, there is nothing left to decrypt.
        return ReportView(report=StoredReport.from_row(row), level=level)
    fields: tuple[str, ...]
    if level == "full":
        fields = CONTENT_FIELDS if with_body else ("title", "summary")
    else:
        fields = ("summary",)
    m = row._mapping
    plain = decrypt_fields(
        envelope, conn, m, report_id=m["id"], originator=m["originator"], fields=fields
    )
    entities_json = plain.get("entities")
    entities = json.loads(entities_json) if entities_json is not None else None
    return ReportView(
        report=StoredReport.from_row(row),
        level=level,
        title=plain.get("title"),
        body=plain.get("body"),
        summary=plain.get("summary"),
        entities=entities,
    )


def stored_audience(conn: Connection, report_id: str) -> Audience:
    rows = _AUDIENCE.tuples(conn, {"report_id": report_id, "now": utcnow()})
    return Audience(
        full=tuple(sorted(m for m, level in rows if level == "full")),
        tearline=tuple(sorted(m for m, level in rows if level == "tearline")),
    )


def read(
    conn: Connection,
    state: PolicyState,
    envelope: Envelope,
    principal: Principal,
    report_id: str,
    trace: list[audit.Entry],
    *,
    purpose: str | None,
    action: str = "report.read",
) -> ReportView:
    """The report at the caller's level, in one query; NotFound otherwise.

    The access (or the refusal) is added to `trace`, which the caller must record.
    """
    bundle_hash = state.bundle.hash

    def traced(decision: str, target: str, *reasons: str) -> None:
        trace.append(
            audit.Entry(
                action=action,
                decision=decision,
                target=target,
                reasons=reasons,
                policy_hash=bundle_hash,
                purpose=purpose,
            )
        )

    # Report ids are canonical UUIDs; anything else is absent without asking the database
    # (PostgreSQL refuses a NUL in a string outright, which would be a 500, not a 404).
    params = {
        "member": principal.member,
        "policy_hash": bundle_hash,
        "report_id": report_id,
        "now": utcnow(),
    }
    row = _READ_ONE.first(conn, params) if is_report_id(report_id) else None
    if row is None:
        traced("deny", f"report:{report_id[:64]}", "level:none")
        raise NotFound
    level = row._mapping["level"]
    try:
        view = _view(envelope, conn, row, with_body=True)
    except CorruptionError:
        # The attempt is traced even though nothing is served.
        traced("error", f"report:{report_id}", f"level:{level}", "corrupted")
        raise
    report = view.report
    if report.originator == principal.member:
        view = dataclasses.replace(view, audience=stored_audience(conn, report.id))
    traced("allow", f"report:{report.id}", f"level:{level}", f"version:{report.version}")
    return view


class _Positioned(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def updated_at(self) -> datetime: ...


def encode_cursor(report: _Positioned) -> str:
    """An opaque position after `report` in a newest-first listing."""
    return pagination.encode_position(report.updated_at, report.id)


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The position in a cursor; Unprocessable if it was not made by encode_cursor."""
    try:
        return pagination.decode_position(cursor)
    except ValueError as exc:
        raise Unprocessable(
            "The cursor is not valid.",
            [{"loc": ["query", "cursor"], "msg": "invalid cursor", "type": "cursor"}],
        ) from exc


def list_readable(
    conn: Connection,
    state: PolicyState,
    envelope: Envelope,
    principal: Principal,
    filters: ListFilters,
    limit: int,
    cursor: str | None,
    trace: list[audit.Entry],
) -> tuple[list[ReportView], str | None]:
    """A newest-first page of the reports the caller may read at tearline or above.

    The listing and every listed report's access are added to `trace`.
    """
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
    stmt = _READABLE_FOR_LIST
    if filters.topic is not None:
        # Tested on the decision row the index scan visits anyway, in listing order: a page
        # stops after its limit, with no lookup per row in another table.
        stmt = stmt.where(_access.c.topic_codes.contains(f",{filters.topic},", autoescape=True))
    if filters.originator is not None:
        stmt = stmt.where(_reports.c.originator == filters.originator)
    if filters.classification is not None:
        stmt = stmt.where(_reports.c.classification == filters.classification)
    if filters.status is not None:
        stmt = stmt.where(_reports.c.status == filters.status)
    if filters.updated_since is not None:
        stmt = stmt.where(_access.c.report_updated_at >= filters.updated_since)
    if cursor is not None:
        after_time, after_id = decode_cursor(cursor)
        # A row-value comparison: one index range, where the OR form scans from the start.
        stmt = stmt.where(
            tuple_(_access.c.report_updated_at, _access.c.report_id)
            < tuple_(literal(after_time, UTCDateTime()), literal(after_id))
        )
    stmt = stmt.order_by(_access.c.report_updated_at.desc(), _access.c.report_id.desc())
    params = {"member": principal.member, "policy_hash": bundle.hash, "now": utcnow()}
    rows = conn.execute(stmt.limit(limit + 1), params).all()
    views = [_view(envelope, conn, row, with_body=False) for row in rows[:limit]]
    next_cursor = encode_cursor(views[-1].report) if len(rows) > limit else None
    trace.append(
        audit.Entry(
            action="report.list",
            decision="allow",
            target="reports",
            reasons=(f"items:{len(views)}",),
            policy_hash=bundle.hash,
        )
    )
    # Each listed report shows its summary (and title at full): that is an access to it.
    trace.extend(
        audit.Entry(
            action="report.list_item",
            decision="allow",
            target=f"report:{v.report.id}",
            reasons=(f"level:{v.level}", f"version:{v.report.version}"),
            policy_hash=bundle.hash,
        )
        for v in views
    )
    return views, next_cursor


def facts_of(report: StoredReport, granted: frozenset[str] = frozenset()) -> ReportFacts:
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
        granted=granted,
    )


def any_stale(session: Session, state: PolicyState) -> bool:
    """Whether any stored decision was made under another bundle than the one in force."""
    h = state.bundle.hash
    # Two index ranges rather than "!=", which no index serves: with nothing stale (every
    # start-up but the first after a change) this is an index probe, not a scan.
    probe = (
        select(_access.c.report_id)
        .where(or_(_access.c.policy_hash < h, _access.c.policy_hash > h))
        .limit(1)
    )
    return session.connection().execute(probe).first() is not None


def redecide_batch(
    session: Session, state: PolicyState, after: str | None, batch: int = 200
) -> list[str]:
    """Decide again up to `batch` reports with stale decisions, in report id order after `after`.

    Returns the ids decided, in order (pass the last as `after` for the next batch); empty when
    no stale report is left past `after`. Resuming from there keeps a whole pass linear: each
    batch reads on from where the last one stopped instead of skipping the done ones again.
    Until a report is decided again, reads find no decision under the bundle in force and
    answer 404 (see readable_statement): stale decisions are never served. A report whose
    levels change gets a `report.access_changed` event for exactly the members concerned.
    """
    h = state.bundle.hash
    stale = (
        select(_access.c.report_id)
        .where(or_(_access.c.policy_hash < h, _access.c.policy_hash > h))
        .distinct()
        .order_by(_access.c.report_id)
        .limit(batch)
    )
    if after is not None:
        stale = stale.where(_access.c.report_id > after)
    conn = session.connection()
    ids: list[str] = list(conn.scalars(stale))
    if ids:
        # Locked (PostgreSQL), in id order, and read after the lock: a concurrent update,
        # revocation or purge of one of these reports either commits first (and is decided
        # from its new state here) or waits for this batch; never decided from stale markings.
        current = (
            select(*REPORT_COLUMNS)
            .where(_reports.c.id.in_(ids))
            .order_by(_reports.c.id)
            .with_for_update()
        )
        locked = conn.execute(current).all()
        # Read after the lock: an approval committed while this batch waited is seen.
        grants = active_grants(conn, ids)
        for row in locked:
            report = StoredReport.from_row(row)
            changed = decide_again(session, state, report, grants.get(report.id, [])).changed()
            if changed:
                emit_report_event(conn, "report.access_changed", report, changed)
    return ids
