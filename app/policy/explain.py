"""Explaining a stored report's decision: its level for one member, and the policies behind it.

Apart from `service.py` because it reads stored reports, and `app.reports.service` imports
`app.policy.service`: the import the other way round lives here, outside that cycle.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import Connection, Table, bindparam, select
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.auth.service import Principal
from app.errors import Forbidden, NotFound, Unprocessable
from app.policy.engine import Decision, ReportFacts
from app.policy.service import PolicyState
from app.reports.models import Report
from app.reports.service import (
    REPORT_COLUMNS,
    StoredReport,
    active_grants,
    facts_of,
    is_readable,
    is_report_id,
)

__all__ = ["ACTION", "explain_for", "stored_facts"]

ACTION = "policy.explain"

_reports = cast(Table, Report.__table__)
_REPORT = select(*REPORT_COLUMNS).where(_reports.c.id == bindparam("report_id"))


def stored_facts(conn: Connection, report_id: str) -> ReportFacts | None:
    """The decision-relevant markings of a stored report, or None if there is no such report."""
    # Report ids are canonical UUIDs; anything else is absent without asking the database
    # (PostgreSQL refuses a NUL in a string outright).
    if not is_report_id(report_id):
        return None
    row = conn.execute(_REPORT, {"report_id": report_id}).first()
    if row is None:
        return None
    # With its unexpired grants, as the stored decisions were made.
    grants = active_grants(conn, [report_id]).get(report_id, [])
    return facts_of(StoredReport.from_row(row), granted=frozenset(g.member for g in grants))


def explain_for(
    session: Session, state: PolicyState, principal: Principal, member: str, report_id: str
) -> Decision:
    """`member`'s level to a stored report under the bundle in force, for a chair or its originator.

    Anyone else is told what a read would tell it: 404 when it cannot read the report, exactly as
    for a report that does not exist, and 403 when it can. The answer or refusal is audited.
    """
    # One snapshot: a reload between two reads of `state` must not pair one bundle's stored
    # decisions with another's engine.
    engine = state.engine
    bundle = engine.bundle
    # Checked first, and on the roster only, so a 422 says nothing about the report.
    if member not in bundle.members:
        raise Unprocessable(
            "Unknown member.",
            [{"loc": ["body", "member"], "msg": "unknown member", "type": "unknown_member"}],
        )
    conn = session.connection()
    facts = stored_facts(conn, report_id)
    caller = bundle.members.get(principal.member)
    # Chairs audit decisions (product.md, "Access model", rule 8), so they may explain any report;
    # that is metadata, which gives them no content.
    entitled = (caller is not None and caller.is_chair) or (
        facts is not None and facts.originator == principal.member
    )
    # Asked even when the report does not exist, so a hidden report costs the same work as a
    # missing one. Same stored decisions and bundle hash as a read, so the 404s agree.
    readable = (
        not entitled
        and is_report_id(report_id)
        and is_readable(conn, principal.member, bundle.hash, report_id)
    )
    if facts is None or not (entitled or readable):
        _refuse(session, bundle.hash, principal, report_id, "level:none")
        raise NotFound
    if not entitled:
        _refuse(session, bundle.hash, principal, report_id, "not_chair_or_originator")
        raise Forbidden("Only the chairs and the report's originator may explain its decisions.")
    decision = engine.explain(member, facts)
    audit.record(
        session,
        principal.actor,
        audit.Entry(
            action=ACTION,
            decision="allow",
            target=f"report:{facts.id}",
            reasons=(f"member:{member}", f"level:{decision.level.value}"),
            policy_hash=decision.policy_hash,
        ),
    )
    return decision


def _refuse(
    session: Session, policy_hash: str, principal: Principal, report_id: str, reason: str
) -> None:
    audit.record_refusal(
        session,
        principal.actor,
        audit.Entry(
            action=ACTION,
            decision="deny",
            target=f"report:{report_id[:64]}",
            reasons=(reason,),
            policy_hash=policy_hash,
        ),
    )
