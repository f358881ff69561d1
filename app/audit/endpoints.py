"""The chairs' audit API: entries, exports, checkpoints and proofs. Every read is on record."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from sqlalchemy import Connection

from app.audit import checkpoints, maintainer, queries, tree
from app.audit import service as audit
from app.audit.canonical import format_time
from app.audit.checkpoints import b64
from app.audit.queries import Filters
from app.audit.schemas import (
    CheckpointOut,
    CheckpointPage,
    ConsistencyProof,
    EntryOut,
    EntryPage,
    InclusionProof,
)
from app.auth.deps import Auditor
from app.auth.service import Principal
from app.errors import Forbidden, NotFound, ServiceUnavailable, Unprocessable, responses
from app.kit.instants import UTCInstant
from app.state import AppState
from app.webhooks.delivery import chairs_of

T = TypeVar("T")

router = APIRouter(prefix="/v1/audit", tags=["audit"])
log = logging.getLogger("tearline.audit")

# An index to continue after; 18 digits stay within a 64-bit integer.
_CURSOR = r"^[0-9]{1,18}$"
NDJSON = "application/x-ndjson"
CSV = "text/csv; charset=utf-8"


def _filters(
    actor: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_-]{1,16}$")] = None,
    action: Annotated[str | None, Query(pattern=r"^[a-z0-9_.]{1,64}$")] = None,
    report_id: Annotated[
        str | None,
        Query(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"),
    ] = None,
    decision: Annotated[str | None, Query(pattern=r"^[a-z_]{1,16}$")] = None,
    since: Annotated[UTCInstant | None, Query(description="entries at or after this time")] = None,
    until: Annotated[UTCInstant | None, Query(description="entries before this time")] = None,
) -> Filters:
    return Filters(actor, action, report_id, decision, since, until)


FiltersDep = Annotated[Filters, Depends(_filters)]


def _entry(action: str, decision: str, *reasons: str) -> audit.Entry:
    return audit.Entry(action=action, decision=decision, target="audit", reasons=reasons)


def _chair(state: AppState, principal: Principal, trace: list[audit.Entry], action: str) -> None:
    """The audit scope is only ever given to chairs; a member that stopped being one is refused."""
    if principal.member not in chairs_of(state.policy):
        trace.append(_entry(action, "deny", "not_chair"))
        raise Forbidden("Only the chairs may read the audit log.")


def _invalid(name: str, message: str) -> Unprocessable:
    return Unprocessable(message, [{"loc": ["query", name], "msg": message, "type": "range"}])


@router.get("/entries", response_model=EntryPage, responses=responses(401, 403, 422, 429))
async def list_entries(
    caller: Auditor,
    filters: FiltersDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(pattern=_CURSOR)] = None,
) -> EntryPage:
    """Audit entries in log order (oldest first), filtered; chairs only."""
    state = caller.state

    def work(conn: Connection, principal: Principal, trace: list[audit.Entry]) -> EntryPage:
        _chair(state, principal, trace, "audit.entries")
        after = int(cursor) if cursor is not None else None
        items, last = queries.page(conn, filters, after, limit)
        trace.append(_entry("audit.entries", "allow", *filters.reasons(), f"items:{len(items)}"))
        return EntryPage(
            items=[EntryOut(**e) for e in items],
            next_cursor=str(last) if last is not None else None,
        )

    return await caller.read(work)


_EXPORT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The entries, streamed: NDJSON (one entry per line, exactly as "
        "`/v1/audit/entries` shows it) or CSV.",
        "content": {
            NDJSON: {"schema": {"type": "string"}},
            CSV: {"schema": {"type": "string"}},
        },
    },
    **responses(401, 403, 422, 429),
}


@router.get("/export", response_class=StreamingResponse, responses=_EXPORT_RESPONSES)
async def export(
    caller: Auditor,
    filters: FiltersDep,
    format: Annotated[Literal["ndjson", "csv"], Query()] = "ndjson",  # api.md's name
) -> StreamingResponse:
    """Every entry matching the filters, streamed without being held in memory; chairs only.

    The export covers the log as it stood when it began (its own entry excluded), however long
    it takes to stream.
    """
    state = caller.state
    chunk = queries.EXPORT_CHUNK

    def first(
        conn: Connection, principal: Principal, trace: list[audit.Entry]
    ) -> tuple[int, list[dict[str, Any]], int | None]:
        _chair(state, principal, trace, "audit.export")
        end = tree.log_size(conn)
        items, last = queries.page(conn, filters, None, chunk, before=end)
        trace.append(_entry("audit.export", "allow", *filters.reasons(), f"format:{format}"))
        return end, items, last

    # The export is on record before its first byte leaves.
    end, items, last = await caller.read(first)
    lines: Callable[[list[dict[str, Any]]], str] = (
        queries.ndjson_lines if format == "ndjson" else queries.csv_lines
    )

    def _export_page(conn: Connection, after: int) -> tuple[list[dict[str, Any]], int | None]:
        return queries.page(conn, filters, after, chunk, before=end)

    async def body() -> AsyncIterator[str]:
        nonlocal items, last
        if format == "csv":
            yield queries.csv_header()
        yield lines(items)
        while last is not None:
            items, last = await state.db.read(functools.partial(_export_page, after=last))
            yield lines(items)

    media = NDJSON if format == "ndjson" else CSV
    disposition = f'attachment; filename="tearline-audit.{format}"'
    return StreamingResponse(body(), media_type=media, headers={"Content-Disposition": disposition})


def _checkpoint_out(made: checkpoints.SignedCheckpoint) -> CheckpointOut:
    return CheckpointOut(**made.public())


@router.get(
    "/checkpoints/latest", response_model=CheckpointOut, responses=responses(401, 403, 404, 429)
)
async def latest_checkpoint(caller: Auditor) -> CheckpointOut:
    """The newest signed checkpoint (404 before the first is issued); chairs only."""
    state = caller.state

    def work(conn: Connection, principal: Principal, trace: list[audit.Entry]) -> CheckpointOut:
        _chair(state, principal, trace, "audit.checkpoints")
        made = checkpoints.latest(conn)
        if made is None:
            trace.append(_entry("audit.checkpoints", "allow", "latest", "none"))
            raise NotFound
        trace.append(_entry("audit.checkpoints", "allow", "latest", f"tree_size:{made.tree_size}"))
        return _checkpoint_out(made)

    return await caller.read(work)


@router.get("/checkpoints", response_model=CheckpointPage, responses=responses(401, 403, 422, 429))
async def list_checkpoints(
    caller: Auditor,
    since: Annotated[UTCInstant | None, Query(description="issued at or after this time")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(pattern=_CURSOR)] = None,
) -> CheckpointPage:
    """Signed checkpoints in tree-size order, to keep outside the service; chairs only."""
    state = caller.state

    def work(conn: Connection, principal: Principal, trace: list[audit.Entry]) -> CheckpointPage:
        _chair(state, principal, trace, "audit.checkpoints")
        after = int(cursor) if cursor is not None else None
        found = checkpoints.page(conn, since, after, limit + 1)
        shown = found[:limit]
        reasons = [f"since:{format_time(since)}"] if since is not None else []
        trace.append(_entry("audit.checkpoints", "allow", *reasons, f"items:{len(shown)}"))
        more = len(found) > limit
        return CheckpointPage(
            items=[_checkpoint_out(c) for c in shown],
            next_cursor=str(shown[-1].tree_size) if more else None,
        )

    return await caller.read(work)


async def _proof(
    caller: Auditor,
    asked: tuple[str, ...],
    size: int,
    bad: Callable[[int], str | None],
    compute: Callable[[Connection], T],
) -> T:
    """Confirm a chair, check the sizes against the log and put the request on record; then make
    sure the stored tree reaches `size` (integrating if the maintainer has not yet) and compute.

    Nothing is integrated for a caller that is refused.
    """
    state = caller.state
    action = "audit.proof"

    def check(conn: Connection, principal: Principal, trace: list[audit.Entry]) -> T | None:
        _chair(state, principal, trace, action)
        held = tree.log_size(conn)
        name = bad(held)
        if name is not None:
            trace.append(_entry(action, "deny", *asked, "out_of_range"))
            raise _invalid(name, f"the sizes must be within the log ({held} entries)")
        trace.append(_entry(action, "allow", *asked))
        # Usually the maintainer is there already: the proof in the same round trip.
        return compute(conn) if tree.tree_size(conn) >= size else None

    done = await caller.read(check)
    if done is not None:
        return done
    try:
        await maintainer.cover(state, size)
        return await state.db.read(compute)
    except TimeoutError:
        raise ServiceUnavailable("The audit tree is busy; try again shortly.") from None
    except (ValueError, tree.TreeError):
        # The log or its stored tree no longer holds what was there a moment ago: a case for
        # `tearline audit verify`, never a proof made up from what is left.
        log.error("audit proof refused: the stored tree cannot answer", exc_info=True)
        raise ServiceUnavailable("The audit tree cannot answer; the operator is told.") from None


@router.get(
    "/proofs/inclusion", response_model=InclusionProof, responses=responses(401, 403, 422, 429, 503)
)
async def inclusion_proof(
    caller: Auditor,
    index: Annotated[int, Query(ge=0, le=2**62)],
    tree_size: Annotated[int, Query(ge=1, le=2**62)],
) -> InclusionProof:
    """The RFC 9162 inclusion proof of entry `index` in the tree of `tree_size` entries."""

    def bad(held: int) -> str | None:
        if tree_size > held:
            return "tree_size"
        return "index" if index >= tree_size else None

    def compute(conn: Connection) -> InclusionProof:
        leaf, path = tree.inclusion(conn, index, tree_size)
        return InclusionProof(
            index=index, tree_size=tree_size, leaf_hash=b64(leaf), path=[b64(h) for h in path]
        )

    asked = ("inclusion", f"index:{index}", f"tree_size:{tree_size}")
    return await _proof(caller, asked, tree_size, bad, compute)


@router.get(
    "/proofs/consistency",
    response_model=ConsistencyProof,
    responses=responses(401, 403, 422, 429, 503),
)
async def consistency_proof(
    caller: Auditor,
    first: Annotated[int, Query(ge=1, le=2**62)],
    second: Annotated[int, Query(ge=1, le=2**62)],
) -> ConsistencyProof:
    """The RFC 9162 consistency proof from the tree of `first` entries to that of `second`."""

    def bad(held: int) -> str | None:
        if second > held:
            return "second"
        return "first" if first > second else None

    def compute(conn: Connection) -> ConsistencyProof:
        path = tree.consistency(conn, first, second)
        return ConsistencyProof(first=first, second=second, path=[b64(h) for h in path])

    asked = ("consistency", f"first:{first}", f"second:{second}")
    return await _proof(caller, asked, second, bad, compute)
