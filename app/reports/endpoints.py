"""HTTP routes of the reports API."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, status
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.auth.deps import ReportsRead, ReportsWrite
from app.auth.service import Principal
from app.errors import responses
from app.kit.instants import UTCInstant
from app.kit.responses import serialized
from app.reports import lifecycle, service
from app.reports.schemas import (
    AccessLogPage,
    AccessRecordOut,
    Audience,
    Classification,
    ReportIn,
    ReportOut,
    ReportPage,
    ReportPreview,
    RevokeIn,
    VersionList,
    VersionOut,
    report_out,
)

router = APIRouter(prefix="/v1/reports", tags=["reports"])

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(alias="Idempotency-Key", min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$"),
]
PurposeHeader = Annotated[str | None, Header(alias="Tearline-Purpose", max_length=200)]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ReportOut,
    response_model_exclude_unset=True,
    responses=responses(401, 403, 409, 413, 422, 429),
)
async def create_report(
    payload: ReportIn,
    response: Response,
    caller: ReportsWrite,
    idempotency_key: IdempotencyKeyHeader = None,
) -> ReportOut:
    """Submit a report. Its content is encrypted; who may read it is decided now and stored."""
    state = caller.state

    def work(session: Session, principal: Principal) -> tuple[ReportOut, bool]:
        view, replayed = service.create(
            session,
            state.policy,
            state.envelope,
            state.blind_index,
            principal,
            payload,
            idempotency_key,
        )
        return report_out(view, principal.member), replayed

    out, replayed = await caller.run(work)
    response.headers["Location"] = f"/v1/reports/{out.id}"
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return out


@router.post(
    "/preview",
    response_model=ReportPreview,
    responses=responses(401, 403, 413, 422, 429),
)
async def preview_report(payload: ReportIn, caller: ReportsWrite) -> ReportPreview:
    """Validate a report and show who would be able to read it, without storing it."""
    state = caller.state
    audience = await caller.run(
        lambda session, principal: service.preview(session, state.policy, principal, payload)
    )
    return ReportPreview(
        audience=Audience(full=list(audience.full), tearline=list(audience.tearline))
    )


@router.get(
    "",
    response_model=ReportPage,
    response_model_exclude_unset=True,
    responses=responses(401, 403, 422, 429),
)
async def list_reports(
    caller: ReportsRead,
    topic: Annotated[str | None, Query(max_length=16)] = None,
    originator: Annotated[str | None, Query(max_length=16)] = None,
    classification: Classification | None = None,
    report_status: Annotated[
        str | None, Query(alias="status", pattern="^(active|revoked|purged)$")
    ] = None,
    updated_since: UTCInstant | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> ReportPage:
    """Reports the caller may read at tearline or above, newest first, without body or entities."""
    filters = service.ListFilters(
        topic=topic,
        originator=originator,
        classification=classification,
        status=report_status,
        updated_since=updated_since,
    )
    state = caller.state

    def work(conn: Connection, principal: Principal, trace: list[audit.Entry]) -> ReportPage:
        views, next_cursor = service.list_readable(
            conn, state.policy, state.envelope, principal, filters, limit, cursor, trace
        )
        return ReportPage(
            items=[report_out(v, principal.member) for v in views], next_cursor=next_cursor
        )

    return await caller.read(work)


@router.get(
    "/{report_id}",
    response_model=ReportOut,
    response_model_exclude_unset=True,
    responses=responses(401, 403, 404, 422, 429),
)
async def get_report(
    report_id: str, caller: ReportsRead, purpose: PurposeHeader = None
) -> Response:
    """The report at the caller's level; 404 when it does not exist or is not for the caller."""
    state = caller.state

    def work(conn: Connection, principal: Principal, trace: list[audit.Entry]) -> ReportOut:
        view = service.read(
            conn, state.policy, state.envelope, principal, report_id, trace, purpose=purpose
        )
        return report_out(view, principal.member)

    out = await caller.read(work)
    return serialized(out, headers={"ETag": lifecycle.etag(out.version)})


@router.put(
    "/{report_id}",
    response_model=ReportOut,
    response_model_exclude_unset=True,
    responses=responses(401, 403, 404, 409, 412, 413, 422, 428, 429),
)
async def update_report(
    report_id: str,
    payload: ReportIn,
    response: Response,
    caller: ReportsWrite,
    if_match: Annotated[str | None, Header(alias="If-Match", max_length=64)] = None,
) -> ReportOut:
    """Replace content and markings (originator only): version n+1, decided again.

    `If-Match` must carry the version being replaced, as `ETag` gave it: `"3"`.
    """
    state = caller.state

    def work(session: Session, principal: Principal) -> ReportOut:
        view = lifecycle.update_report(
            session,
            state.policy,
            state.envelope,
            state.blind_index,
            principal,
            report_id,
            payload,
            if_match,
        )
        return report_out(view, principal.member)

    out = await caller.run(work)
    response.headers["ETag"] = lifecycle.etag(out.version)
    return out


@router.post(
    "/{report_id}/revoke",
    response_model=ReportOut,
    response_model_exclude_unset=True,
    responses=responses(401, 403, 404, 409, 413, 422, 429),
)
async def revoke_report(report_id: str, payload: RevokeIn, caller: ReportsWrite) -> ReportOut:
    """Withdraw a report from every other member at once (originator only)."""
    state = caller.state

    def work(session: Session, principal: Principal) -> ReportOut:
        view = lifecycle.revoke_report(
            session, state.policy, state.envelope, principal, report_id, payload.reason
        )
        return report_out(view, principal.member)

    return await caller.run(work)


@router.delete(
    "/{report_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=responses(401, 403, 404, 422, 429),
)
async def purge_report(report_id: str, caller: ReportsWrite) -> Response:
    """Purge a report (originator only): every version's key is destroyed; a tombstone stays."""
    state = caller.state
    await caller.run(
        lambda session, principal: lifecycle.purge_report(
            session, state.policy, principal, report_id
        )
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{report_id}/versions",
    response_model=VersionList,
    response_model_exclude_unset=True,
    responses=responses(401, 403, 404, 422, 429),
)
async def list_versions(report_id: str, caller: ReportsRead) -> VersionList:
    """Every version of the caller's own report, newest first."""
    state = caller.state

    def work(conn: Connection, principal: Principal, trace: list[audit.Entry]) -> VersionList:
        views = lifecycle.list_versions(
            conn, state.policy, state.envelope, principal, report_id, trace
        )
        return VersionList(
            items=[VersionOut.model_validate(v, from_attributes=True) for v in views]
        )

    return await caller.read(work)


@router.get(
    "/{report_id}/access-log",
    response_model=AccessLogPage,
    responses=responses(401, 403, 404, 422, 429),
)
async def access_log(
    report_id: str,
    caller: ReportsRead,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Annotated[str | None, Query(max_length=32)] = None,
) -> AccessLogPage:
    """Who read the caller's own report, when, at which level and with which purpose."""
    state = caller.state

    def work(conn: Connection, principal: Principal, trace: list[audit.Entry]) -> AccessLogPage:
        records, next_cursor = lifecycle.access_log(
            conn, state.policy, principal, report_id, limit, cursor, trace
        )
        return AccessLogPage(
            items=[AccessRecordOut.model_validate(r, from_attributes=True) for r in records],
            next_cursor=next_cursor,
        )

    return await caller.read(work)
