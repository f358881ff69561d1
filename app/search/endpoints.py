"""HTTP routes of search and access requests."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response, status
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.auth.deps import ReportsRead, ReportsWrite, Searcher
from app.auth.service import Principal
from app.errors import TooManyRequests, responses
from app.search import access_requests, service
from app.search.access_requests import RequestView
from app.search.schemas import (
    AccessRequestIn,
    AccessRequestOut,
    AccessRequestPage,
    DecisionIn,
    SearchIn,
    SearchOut,
    SearchResult,
)

router = APIRouter(tags=["search"])


@router.post("/v1/search", response_model=SearchOut, responses=responses(401, 403, 413, 422, 429))
async def search(query: SearchIn, caller: Searcher) -> SearchOut:
    """Reports holding any of the entities: at `full` or `tearline` where the caller reads them,
    otherwise as a `hit` (id, originator and entity type only). Hidden reports are absent."""
    state = caller.state
    retry_after = state.search_limiter.acquire(caller.claimed.client_id)
    if retry_after is not None:
        refusal = audit.Entry(
            action="search", decision="deny", target="search", reasons=("rate_limited",)
        )
        await state.audit_log.append(caller.claimed.actor, [refusal])
        raise TooManyRequests(retry_after)

    def work(conn: Connection, principal: Principal, trace: list[audit.Entry]) -> SearchOut:
        hits = service.search(conn, state.policy, state.blind_index, principal, query, trace)
        return SearchOut(
            results=[
                SearchResult(
                    report_id=h.report_id,
                    originator=h.originator,
                    entity_type=h.entity_type,
                    access=h.access,
                )
                for h in hits
            ]
        )

    return await caller.read(work)


def _out(view: RequestView) -> AccessRequestOut:
    return AccessRequestOut(
        id=view.id,
        report_id=view.report_id,
        originator=view.originator,
        requester=view.requester,
        status=view.status,
        justification=view.justification,
        created_at=view.created_at,
        decided_at=view.decided_at,
        expires_at=view.expires_at,
        note=view.note,
    )


@router.post(
    "/v1/reports/{report_id}/access-requests",
    status_code=status.HTTP_201_CREATED,
    response_model=AccessRequestOut,
    response_model_exclude_none=True,
    responses=responses(401, 403, 404, 409, 413, 422, 429),
    tags=["access requests"],
)
async def request_access(
    report_id: str, payload: AccessRequestIn, response: Response, caller: ReportsRead
) -> AccessRequestOut:
    """Ask the originator for full access to a report the caller knows at `hit` or `tearline`."""
    state = caller.state
    view = await caller.run(
        lambda session, principal: access_requests.create_request(
            session, state.policy, principal, report_id, payload.justification
        )
    )
    response.headers["Location"] = f"/v1/access-requests/{view.id}"
    return _out(view)


@router.get(
    "/v1/access-requests",
    response_model=AccessRequestPage,
    response_model_exclude_none=True,
    responses=responses(401, 403, 422, 429),
    tags=["access requests"],
)
async def list_access_requests(
    caller: ReportsRead,
    direction: Literal["incoming", "outgoing"] = "incoming",
    request_status: Annotated[
        Literal["pending", "approved", "denied", "expired"] | None, Query(alias="status")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> AccessRequestPage:
    """Requests to the caller's reports (`incoming`) or made by the caller (`outgoing`)."""
    state = caller.state

    def work(conn: Connection, principal: Principal, trace: list[audit.Entry]) -> AccessRequestPage:
        views, next_cursor = access_requests.list_requests(
            conn,
            state.policy,
            principal,
            direction=direction,
            status=request_status,
            limit=limit,
            cursor=cursor,
            trace=trace,
        )
        return AccessRequestPage(items=[_out(v) for v in views], next_cursor=next_cursor)

    return await caller.read(work)


@router.get(
    "/v1/access-requests/{request_id}",
    response_model=AccessRequestOut,
    response_model_exclude_none=True,
    responses=responses(401, 403, 404, 422, 429),
    tags=["access requests"],
)
async def get_access_request(request_id: str, caller: ReportsRead) -> AccessRequestOut:
    """One request, for its requester or the report's originator."""
    state = caller.state

    def work(conn: Connection, principal: Principal, trace: list[audit.Entry]) -> RequestView:
        return access_requests.get_request(conn, state.policy, principal, request_id, trace)

    return _out(await caller.read(work))


@router.post(
    "/v1/access-requests/{request_id}/decision",
    response_model=AccessRequestOut,
    response_model_exclude_none=True,
    responses=responses(401, 403, 404, 409, 413, 422, 429),
    tags=["access requests"],
)
async def decide_access_request(
    request_id: str, payload: DecisionIn, caller: ReportsWrite
) -> AccessRequestOut:
    """Approve (optionally until `expires_at`) or deny a pending request; the originator only."""
    state = caller.state

    def work(session: Session, principal: Principal) -> RequestView:
        return access_requests.decide_request(
            session,
            state.policy,
            principal,
            request_id,
            approve=payload.approve,
            expires_at=payload.expires_at,
            note=payload.note,
        )

    return _out(await caller.run(work))
