"""Match alerts: a report sharing an entity with another member's report tells both originators.

Each originator is told only what it may learn of the other report: its id, originator, the
types of the shared entities and its own level there. An originator whose level on the other
report is none (a withdrawn report, a country file forbidding hits) is told nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

from sqlalchemy import Table, and_, bindparam, or_, select
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.db import AnySelect, PreparedIn, in_list, utcnow
from app.reports.models import Report, ReportAccess, effective_level
from app.search.index import BlindIndex, IndexEntry
from app.search.models import EntityIndex
from app.webhooks import service as events

# Report ids per statement: well below the bound-parameter limits of SQLite and psycopg.
ID_CHUNK = 500
VISIBLE_LEVELS = frozenset({"full", "tearline", "hit"})

_index = cast(Table, EntityIndex.__table__)
_reports = cast(Table, Report.__table__)
_access = cast(Table, ReportAccess.__table__)


@dataclass
class _Match:
    originator: str
    level: str
    entity_types: set[str] = field(default_factory=set)


def _lookup(size: int) -> AnySelect:
    return select(_index.c.report_id, _index.c.entity_type, _index.c.digest).where(
        in_list(_index.c.digest, "digest", size),
        _index.c.key_id == bindparam("key_id"),
        # Two ranges of the lookup index around the originator's own rows ("!=" is served by no
        # index): its earlier reports on the same entity are never visited.
        or_(
            _index.c.originator < bindparam("originator"),
            _index.c.originator > bindparam("originator"),
        ),
    )


# A report holds at most 200 entities: one statement per submission.
_OTHERS_HOLDING = PreparedIn(_lookup, "digest", 256)


def alert_matches(
    session: Session,
    index: BlindIndex,
    *,
    report_id: str,
    originator: str,
    levels: Mapping[str, str],
    entries: Sequence[IndexEntry],
    actor: audit.Actor,
    policy_hash: str,
) -> int:
    """Store a `match.found` event for each originator of a report matching `entries` and for
    `originator`, in the caller's transaction; returns the number of events.

    `levels` is every member's level on the report just written (as just decided).
    """
    if not entries:
        return 0
    wanted = set(entries)
    conn = session.connection()
    # First the index rows (one lookup per digest), then those reports: one statement joining
    # both may be planned from the reports side and visit all of them.
    shared: dict[str, set[str]] = {}
    digests = sorted({e.digest for e in entries})
    values = {"key_id": index.key_id, "originator": originator}
    for other_id, entity_type, digest in _OTHERS_HOLDING.tuples(conn, values, digests):
        if IndexEntry(entity_type, digest) in wanted:
            shared.setdefault(other_id, set()).add(entity_type)
    if not shared:
        return 0
    own_access = and_(
        _access.c.report_id == _reports.c.id,
        _access.c.member_code == originator,
        _access.c.policy_hash == policy_hash,
    )
    found: dict[str, _Match] = {}
    ids = sorted(shared)
    # Every matching report, in bounded chunks: a cap would have to count reports one side may
    # not see, and whether an alert came would then tell how many of them exist.
    for start in range(0, len(ids), ID_CHUNK):
        others = conn.execute(
            select(_reports.c.id, _reports.c.originator, effective_level())
            .select_from(_reports.outerjoin(_access, own_access))
            .where(
                _reports.c.id.in_(ids[start : start + ID_CHUNK]),
                _reports.c.originator != originator,
                _reports.c.status == "active",
            ),
            {"now": utcnow()},
        )
        for other_id, other_originator, level in others:
            found[other_id] = _Match(other_originator, level or "none", shared[other_id])

    emitted = 0
    trace: list[audit.Entry] = []
    for other_id, match in found.items():
        types = sorted(match.entity_types)
        # (recipient, its report, the report it learns of, that report's originator, its level)
        sides = (
            (originator, report_id, other_id, match.originator, match.level),
            (match.originator, other_id, report_id, originator, levels.get(match.originator)),
        )
        for recipient, own, other, other_originator, level in sides:
            if level not in VISIBLE_LEVELS:
                continue
            events.emit(
                conn,
                "match.found",
                {
                    "report_id": own,
                    "matched_report_id": other,
                    "matched_originator": other_originator,
                    "entity_types": types,
                    "access": level,
                },
                recipient=recipient,
                report_id=own,
            )
            trace.append(
                audit.Entry(
                    action="match.alert",
                    decision="allow",
                    target=f"report:{other}",
                    reasons=(f"recipient:{recipient}", f"level:{level}", *types),
                    policy_hash=policy_hash,
                )
            )
            emitted += 1
    if trace:
        audit.record(session, actor, *trace)
    return emitted
