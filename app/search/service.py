"""Search by entity: hits without disclosure, over the blind index and the stored decisions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection, Table, and_, bindparam, select
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.auth.service import Principal
from app.db import PreparedIn, in_list, utcnow
from app.keys.service import Envelope
from app.policy.service import PolicyState
from app.reports import service as reports
from app.reports.models import (
    Report,
    ReportAccess,
    ReportKey,
    ReportVersion,
    effective_level,
    level_in,
)
from app.search.index import BlindIndex, IndexEntry, replace_batch
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
_VISIBLE = level_in(("full", "tearline", "hit"))
# Two statements, each one index lookup: the entities' index rows, then the caller's decisions
# on those reports. Joined in one statement, a planner without statistics (SQLite) may start
# from the member's decisions instead and visit all of them.
_MATCHING = PreparedIn(
    lambda size: select(_index.c.report_id, _index.c.entity_type, _index.c.digest).where(
        in_list(_index.c.digest, "digest", size), _index.c.key_id == bindparam("key_id")
    ),
    "digest",
    256,
)
# In chunks of at most 512 ids: one IN list per statement stays under the bound-parameter
# limits of SQLite and psycopg.
_LEVELS = PreparedIn(
    lambda size: (
        select(
            _access.c.report_id,
            effective_level(),
            _access.c.report_updated_at,
            _reports.c.originator,
        )
        .select_from(_access.join(_reports, _reports.c.id == _access.c.report_id))
        .where(
            in_list(_access.c.report_id, "report_id", size),
            _access.c.member_code == bindparam("member"),
            _access.c.policy_hash == bindparam("policy_hash"),
            _VISIBLE,
        )
    ),
    "report_id",
    512,
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
    digests = sorted({e.digest for e in entries})
    wanted = {(e.entity_type, e.digest) for e in entries}
    matching = [
        (report_id, entity_type)
        for report_id, entity_type, digest in _MATCHING.tuples(
            conn, {"key_id": index.key_id}, digests
        )
        # Digests are made with a key per type, so this only drops the impossible.
        if (entity_type, digest) in wanted
    ]
    # Run even when nothing matched, so that "no index row" and "only hidden index rows" cost
    # the same statements; an id no report has stands in for none (an empty IN list would
    # leave the planner without the primary key to look up).
    ids = sorted({report_id for report_id, _ in matching}) or [""]
    params = {"member": principal.member, "policy_hash": state.bundle.hash, "now": utcnow()}
    visible: dict[str, Any] = {row.report_id: row for row in _LEVELS.all(conn, params, ids)}
    rows = sorted(
        (
            (visible[report_id], entity_type)
            for report_id, entity_type in matching
            if report_id in visible
        ),
        key=lambda pair: (-pair[0].report_updated_at.timestamp(), pair[0].report_id, pair[1]),
    )
    hits: dict[tuple[str, str], Hit] = {}
    for row, entity_type in rows:
        key = (row.report_id, entity_type)
        hits.setdefault(key, Hit(row.report_id, row.originator, entity_type, row.level))
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
    # The batch's ids first, one range of the reports' primary key: joined in one statement, a
    # planner may hash every remaining report (or merge-walk the other tables from their start)
    # for each batch, which makes a whole pass quadratic. Locked (PostgreSQL; SQLite runs one
    # writer at a time): an update committing meanwhile would get its replaced version's rows.
    ids_stmt = select(_reports.c.id).order_by(_reports.c.id).limit(batch).with_for_update()
    if after is not None:
        ids_stmt = ids_stmt.where(_reports.c.id > after)
    conn = session.connection()
    ids: list[str] = list(conn.scalars(ids_stmt))
    if not ids:
        return None
    rows = conn.execute(_CURRENT_VERSION.where(_reports.c.id.in_(ids))).all()
    batch_entries: dict[str, list[IndexEntry]] = {}
    originators: dict[str, str] = {}
    for row in rows:
        m = row._mapping
        originators[m["id"]] = m["originator"]
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
        batch_entries[m["id"]] = entries
        tally.reports += 1
        tally.entities += len(set(entries))
    # One DELETE and one multi-row INSERT for the batch, not two statements per report.
    replace_batch(conn, index, batch_entries, originators)
    return ids[-1]
