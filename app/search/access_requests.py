"""Access requests: a member that got a hit (or reads the tearline) asks for the full report.

The originator approves (optionally until a time) or denies. An approval is a grant that the
policy engine weighs like any other fact (rule 4 of the base policy: clearance still applies),
decided and stored at once; its expiry is honoured by reads on the clock, without any job.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast

from sqlalchemy import Connection, Table, delete, literal, or_, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.auth.service import Principal
from app.db import UTCDateTime, utcnow
from app.errors import Conflict, Forbidden, NotFound, Unprocessable
from app.kit import pagination
from app.policy.service import PolicyState
from app.reports import service as reports
from app.reports.models import Report, ReportAccess, ReportGrant, effective_level
from app.search.models import AccessRequest
from app.webhooks import service as events

REQUESTABLE_LEVELS = frozenset({"hit", "tearline"})

_requests = cast(Table, AccessRequest.__table__)
_reports = cast(Table, Report.__table__)
_access = cast(Table, ReportAccess.__table__)
_grants = cast(Table, ReportGrant.__table__)


@dataclass(frozen=True)
class RequestView:
    id: str
    report_id: str
    originator: str
    requester: str
    status: str
    justification: str
    created_at: datetime
    decided_at: datetime | None
    expires_at: datetime | None
    note: str | None

    @classmethod
    def from_row(cls, row: Any) -> RequestView:
        m = row._mapping
        return cls(
            id=m["id"],
            report_id=m["report_id"],
            originator=m["originator"],
            requester=m["requester"],
            status=status_of(m["status"], m["expires_at"]),
            justification=m["justification"],
            created_at=m["created_at"],
            decided_at=m["decided_at"],
            expires_at=m["expires_at"],
            note=m["note"],
        )


def status_of(stored: str, expires_at: datetime | None) -> str:
    """The status as of now: an approval past its expiry is `expired`, with no job to say so."""
    if stored == "approved" and expires_at is not None and expires_at <= utcnow():
        return "expired"
    return stored


def _entry(
    state: PolicyState, action: str, decision: str, target: str, *reasons: str
) -> audit.Entry:
    return audit.Entry(
        action=action,
        decision=decision,
        target=target,
        reasons=reasons,
        policy_hash=state.bundle.hash,
    )


def _level(conn: Connection, state: PolicyState, member: str, report_id: str) -> str:
    """The member's stored level on the report as of now ("none" without a current decision)."""
    if not reports.is_report_id(report_id):
        return "none"
    level = conn.execute(
        select(effective_level()).where(
            _access.c.report_id == report_id,
            _access.c.member_code == member,
            _access.c.policy_hash == state.bundle.hash,
        ),
        {"now": utcnow()},
    ).scalar()
    return level or "none"


def create_request(
    session: Session,
    state: PolicyState,
    principal: Principal,
    report_id: str,
    justification: str,
) -> RequestView:
    """Ask the report's originator for full access; allowed at level hit or tearline."""
    action = "access_request.create"
    conn = session.connection()
    level = _level(conn, state, principal.member, report_id)
    target = f"report:{report_id[:64]}"
    if level == "none":
        # Deny looks like absence: the same answer as for a report that does not exist.
        audit.record_refusal(
            session, principal.actor, _entry(state, action, "deny", target, "level:none")
        )
        raise NotFound
    if level not in REQUESTABLE_LEVELS:
        audit.record_refusal(
            session, principal.actor, _entry(state, action, "deny", target, f"level:{level}")
        )
        raise Conflict("You read this report in full already.")
    originator = conn.execute(
        select(_reports.c.originator).where(_reports.c.id == report_id)
    ).scalar_one()
    row = {
        "id": str(uuid.uuid4()),
        "report_id": report_id,
        "originator": originator,
        "requester": principal.member,
        "requester_client": principal.client_id,
        "justification": justification,
        "status": "pending",
        "created_at": utcnow(),
    }
    try:
        # A savepoint, so that the refusal below can still be recorded in this transaction.
        with conn.begin_nested():
            conn.execute(_requests.insert(), [row])
    except IntegrityError as exc:
        audit.record_refusal(
            session, principal.actor, _entry(state, action, "deny", target, "already_pending")
        )
        raise Conflict("A request of yours for this report is pending already.") from exc
    events.emit(
        conn,
        "access_request.created",
        {"access_request_id": row["id"], "report_id": report_id, "requester": principal.member},
        recipient=originator,
        report_id=report_id,
    )
    audit.record(
        session,
        principal.actor,
        _entry(state, action, "allow", target, f"request:{row['id']}", f"level:{level}"),
    )
    return RequestView.from_row(_load(conn, row["id"]))


_COLUMNS = (
    _requests.c.id,
    _requests.c.report_id,
    _requests.c.originator,
    _requests.c.requester,
    _requests.c.status,
    _requests.c.justification,
    _requests.c.created_at,
    _requests.c.decided_at,
    _requests.c.expires_at,
    _requests.c.note,
)


def _load(conn: Connection, request_id: str, *, lock: bool = False) -> Any:
    stmt = select(*_COLUMNS).where(_requests.c.id == request_id)
    return conn.execute(stmt.with_for_update() if lock else stmt).one()


def _party_row(
    conn: Connection, principal: Principal, request_id: str, *, lock: bool = False
) -> Any:
    """The request if the caller is its requester or the report's originator; else None."""
    if not reports.is_report_id(request_id):
        return None
    stmt = select(*_COLUMNS).where(
        _requests.c.id == request_id,
        or_(
            _requests.c.originator == principal.member,
            _requests.c.requester == principal.member,
        ),
    )
    return conn.execute(stmt.with_for_update() if lock else stmt).first()


def get_request(
    conn: Connection,
    state: PolicyState,
    principal: Principal,
    request_id: str,
    trace: list[audit.Entry],
) -> RequestView:
    """One request, for its requester or the report's originator; NotFound for anyone else."""
    row = _party_row(conn, principal, request_id)
    target = f"access_request:{request_id[:64]}"
    if row is None:
        trace.append(_entry(state, "access_request.read", "deny", target, "not_party"))
        raise NotFound
    trace.append(_entry(state, "access_request.read", "allow", target))
    return RequestView.from_row(row)


def decide_request(
    session: Session,
    state: PolicyState,
    principal: Principal,
    request_id: str,
    *,
    approve: bool,
    expires_at: datetime | None,
    note: str | None,
) -> RequestView:
    """Approve or deny a pending request to one of the caller's reports, and decide again."""
    action = "access_request.decide"
    conn = session.connection()
    target = f"access_request:{request_id[:64]}"
    row = _party_row(conn, principal, request_id, lock=True)

    def refuse(*reasons: str) -> None:
        audit.record_refusal(
            session, principal.actor, _entry(state, action, "deny", target, *reasons)
        )

    if row is None:
        refuse("not_party")
        raise NotFound
    request = RequestView.from_row(row)
    if request.originator != principal.member:
        refuse("not_originator")
        raise Forbidden("Only the originator of the report may decide this request.")
    if request.status != "pending":
        refuse(f"status:{request.status}")
        raise Conflict(f"This request is {request.status} already.")
    now = utcnow()
    if expires_at is not None and (not approve or expires_at <= now):
        refuse("bad_expiry")
        raise Unprocessable(
            "expires_at must lie in the future, and only an approval can have one.",
            [{"loc": ["body", "expires_at"], "msg": "invalid expiry", "type": "expires_at"}],
        )
    report = reports.StoredReport.from_row(
        conn.execute(
            select(*reports.REPORT_COLUMNS)
            .where(_reports.c.id == request.report_id)
            .with_for_update()
        ).one()
    )
    if approve and report.status != "active":
        refuse(f"report_status:{report.status}")
        raise Conflict(f"The report is {report.status}; it cannot be shared.")
    conn.execute(
        update(_requests)
        .where(_requests.c.id == request.id)
        .values(
            status="approved" if approve else "denied",
            decided_at=now,
            decided_by=principal.client_id,
            note=note,
            expires_at=expires_at if approve else None,
        )
    )
    reasons = ["approve" if approve else "deny", f"report:{report.id}"]
    if approve:
        # One grant per member and report: a new approval replaces an earlier one.
        conn.execute(
            delete(_grants).where(
                _grants.c.report_id == report.id, _grants.c.member_code == request.requester
            )
        )
        conn.execute(
            _grants.insert(),
            [
                {
                    "report_id": report.id,
                    "member_code": request.requester,
                    "access_request_id": request.id,
                    "granted_at": now,
                    "expires_at": expires_at,
                }
            ],
        )
        decided = reports.decide_again(session, state, report)
        # Clearance still applies: the grant may have changed nothing, and then tells no one.
        changed = decided.changed()
        if changed:
            reports.emit_report_event(conn, "report.access_changed", report, changed)
        granted = decided.decisions.get(request.requester)
        reasons.append(f"level:{granted.level.value if granted else 'none'}")
        if expires_at is not None:
            reasons.append(f"expires:{expires_at.isoformat()}")
    events.emit(
        conn,
        "access_request.decided",
        {
            "access_request_id": request.id,
            "report_id": report.id,
            "status": "approved" if approve else "denied",
        },
        recipient=request.requester,
        report_id=report.id,
    )
    audit.record(session, principal.actor, _entry(state, action, "allow", target, *reasons))
    return RequestView.from_row(_load(conn, request.id))


Direction = Literal["incoming", "outgoing"]


def list_requests(
    conn: Connection,
    state: PolicyState,
    principal: Principal,
    *,
    direction: Direction,
    status: str | None,
    limit: int,
    cursor: str | None,
    trace: list[audit.Entry],
) -> tuple[list[RequestView], str | None]:
    """Requests to the caller's reports (incoming) or of the caller (outgoing), newest first."""
    party = _requests.c.originator if direction == "incoming" else _requests.c.requester
    stmt = select(*_COLUMNS).where(party == principal.member)
    now = utcnow()
    unexpired = or_(_requests.c.expires_at.is_(None), _requests.c.expires_at > now)
    if status == "expired":
        stmt = stmt.where(_requests.c.status == "approved", _requests.c.expires_at <= now)
    elif status == "approved":
        stmt = stmt.where(_requests.c.status == "approved", unexpired)
    elif status is not None:
        stmt = stmt.where(_requests.c.status == status)
    if cursor is not None:
        after_time, after_id = reports.decode_cursor(cursor)
        stmt = stmt.where(
            tuple_(_requests.c.created_at, _requests.c.id)
            < tuple_(literal(after_time, UTCDateTime()), literal(after_id))
        )
    stmt = stmt.order_by(_requests.c.created_at.desc(), _requests.c.id.desc()).limit(limit + 1)
    rows = conn.execute(stmt).all()
    views = [RequestView.from_row(r) for r in rows[:limit]]
    trace.append(
        _entry(
            state,
            "access_request.list",
            "allow",
            "access_requests",
            f"direction:{direction}",
            f"items:{len(views)}",
        )
    )
    last = views[-1] if len(rows) > limit else None
    next_cursor = pagination.encode_position(last.created_at, last.id) if last else None
    return views, next_cursor
