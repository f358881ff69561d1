"""Search by entity: hits without disclosure, over the blind index and the stored decisions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import cast

from sqlalchemy import Connection, Table, and_, bindparam, or_, select, text
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.auth.service import Principal
from app.db import UTCDateTime, utcnow
from app.keys.service import Envelope
from app.policy.service import PolicyState
from app.reports import service as reports
from app.reports.models import Report, ReportAccess, ReportKey, ReportVersion, effective_level
from app.search.index import BlindIndex, IndexEntry, replace_entries
from app.search.models import EntityIndex
from app.search.normalize import InvalidEntity
from app.search.schemas import SearchIn

# A search answers at most this many (report, entity type) pairs, newest reports first.
MAX_RESULTS = 1000

_index = cast(Table, EntityIndex.__table__)
_reports = cast(Table, Report.__table__)
_access = cast(Table, ReportAccess.__table__)
_versions = cast(Table, ReportVersion.__table__)
_keys = cast(Table, ReportKey.__table__)

# Every level that lets a member learn of a report: hit and above. A hidden report (none, or a
# decision made under an older bundle) has no row matching this join, so it is never seen,
# counted or timed apart from a report that does not exist.
_VISIBLE = and_(
    text("report_access.level IN ('full', 'tearline', 'hit')"),
    or_(
        _access.c.expires_at.is_(None),
        _access.c.expires_at > bindparam("now", type_=UTCDateTime()),
        text("report_access.level_after IN ('full', 'tearline', 'hit')"),
    ),
)
_SEARCH = (
    select(
        _index.c.report_id,
        _index.c.entity_type,
        _index.c.digest,
        _reports.c.originator,
        effective_level(),
    )
    .select_from(
        _index.join(
            _access,
            and_(
                _access.c.report_id == _index.c.report_id,
                _access.c.member_code == bindparam("member"),
                _access.c.policy_hash == bindparam("policy_hash"),
                _VISIBLE,
            ),
        ).join(_reports, _reports.c.id == _index.c.report_id)
    )
    .where(
        _index.c.digest.in_(bindparam("digests", expanding=True)),
        _index.c.key_id == bindparam("key_id"),
    )
    .order_by(_access.c.report_updated_at.desc(), _index.c.report_id, _index.c.entity_type)
)


@dataclass(frozen=True)
class Hit:
    report_id: str
    originator: str
    entity_type: str
    access: str


def search(
    conn: Connection,
    state: PolicyState,
    index: BlindIndex,
    principal: Principal,
    query: SearchIn,
    trace: list[audit.Entry],
) -> list[Hit]:
    """The reports holding any of the entities that the caller may learn of, at its level.

    The search and every result go to `trace`, with the purpose given.
    """
    entries = set(index.entries(query.entities, ("body", "entities")))
    params = {
        "member": principal.member,
        "policy_hash": state.bundle.hash,
        "now": utcnow(),
        "digests": sorted({e.digest for e in entries}),
        "key_id": index.key_id,
    }
    wanted = {(e.entity_type, e.digest) for e in entries}
    hits: dict[tuple[str, str], Hit] = {}
    for report_id, entity_type, digest, originator, level in conn.execute(_SEARCH, params):
        # Digests are made with a key per type, so this only drops the impossible.
        if (entity_type, digest) not in wanted:
            continue
        hits.setdefault((report_id, entity_type), Hit(report_id, originator, entity_type, level))
        if len(hits) == MAX_RESULTS:
            break
    found = list(hits.values())
    bundle_hash = state.bundle.hash
    trace.append(
        audit.Entry(
            action="search",
            decision="allow",
            target="search",
            reasons=(
                f"entities:{len(query.entities)}",
                f"results:{len(found)}",
                *sorted({f"type:{e.type}" for e in query.entities}),
            ),
            policy_hash=bundle_hash,
            purpose=query.purpose,
        )
    )
    # Each result is an access to its report (a hit is one too): its originator sees it in
    # the report's access log.
    trace.extend(
        audit.Entry(
            action="search.result",
            decision="allow",
            target=f"report:{h.report_id}",
            reasons=(f"level:{h.access}", f"entity_type:{h.entity_type}"),
            policy_hash=bundle_hash,
            purpose=query.purpose,
        )
        for h in found
    )
    return found


@dataclass
class ReindexTally:
    reports: int = 0
    entities: int = 0
    skipped: int = 0


_CURRENT_VERSION = (
    select(
        _reports.c.id,
        _reports.c.originator,
        _reports.c.status,
        _versions.c.version,
        _versions.c.entities_ct,
        _keys.c.key_version,
        _keys.c.wrapped_data_key,
    )
    .select_from(_reports)
    .join(
        _versions,
        and_(_versions.c.report_id == _reports.c.id, _versions.c.version == _reports.c.version),
    )
    .join(_keys, and_(_keys.c.report_id == _reports.c.id, _keys.c.version == _reports.c.version))
    .order_by(_reports.c.id)
)


def reindex_batch(
    session: Session,
    envelope: Envelope,
    index: BlindIndex,
    after: str | None,
    tally: ReindexTally,
    batch: int = 500,
) -> str | None:
    """Rebuild the index rows of up to `batch` reports after id `after` with the key in force.

    Decrypts each current version's entities (nothing else) and replaces its rows; a purged
    report keeps none. Returns the last id done, None when no report is left. A value that the
    rules in force refuse (stored before they changed) is skipped and counted, not indexed.
    """
    stmt = _CURRENT_VERSION.limit(batch)
    if after is not None:
        stmt = stmt.where(_reports.c.id > after)
    conn = session.connection()
    rows = conn.execute(stmt).all()
    for row in rows:
        m = row._mapping
        entries: list[IndexEntry] = []
        if m["status"] != "purged" and m["entities_ct"] is not None:
            plain = reports.decrypt_fields(
                envelope,
                conn,
                m,
                report_id=m["id"],
                originator=m["originator"],
                fields=("entities",),
            )
            for entity in json.loads(plain["entities"] or "[]"):
                try:
                    entries.append(index.entry(entity["type"], entity["value"]))
                except InvalidEntity:
                    tally.skipped += 1
        replace_entries(conn, index, m["id"], entries)
        tally.reports += 1
        tally.entities += len(set(entries))
    return rows[-1]._mapping["id"] if rows else None
