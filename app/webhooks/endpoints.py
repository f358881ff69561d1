"""HTTP routes of webhook subscriptions and the sync feed."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response, status
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.auth.deps import ReportsRead, Webhooks
from app.auth.service import Principal
from app.errors import NotFound, Unprocessable, responses
from app.kit import outbound
from app.webhooks import service, subscriptions, sync
from app.webhooks.schemas import (
    AttemptOut,
    DeliveryOut,
    DeliveryPage,
    FeedEvent,
    FeedPage,
    Queued,
    RotateIn,
    SecretRotated,
    WebhookCreated,
    WebhookIn,
    WebhookList,
    WebhookOut,
)
from app.webhooks.subscriptions import SubscriptionView

router = APIRouter(tags=["webhooks"])


def _out(view: SubscriptionView) -> WebhookOut:
    return WebhookOut(**dataclasses.asdict(view))


def _read_entry(action: str, target: str, *reasons: str) -> audit.Entry:
    return audit.Entry(action=action, decision="allow", target=target, reasons=reasons)


@contextmanager
def _traced(trace: list[audit.Entry], action: str, webhook_id: str) -> Iterator[None]:
    """Trace a read of one subscription: allowed, or denied as absent (the 404 it answers)."""
    target = f"webhook:{webhook_id[:64]}"
    try:
        yield
    except NotFound:
        trace.append(
            audit.Entry(action=action, decision="deny", target=target, reasons=("not_found",))
        )
        raise
    trace.append(_read_entry(action, target))


async def _checked_url(caller: Webhooks, url: str) -> str:
    settings = caller.state.settings
    try:
        target = outbound.check_url(
            url,
            require_https=settings.require_https_webhooks,
            allow_private=settings.allow_private_webhooks,
        )
        if not settings.allow_private_webhooks:
            # Checked again at every delivery (addresses change); refused early when it is
            # plainly not a public address now.
            await outbound.resolve(target.host, target.port, allow_private=False)
    except outbound.UnsafeTarget as exc:
        await caller.state.audit_log.append(
            caller.claimed.actor,
            [
                audit.Entry(
                    action="webhook.create",
                    decision="deny",
                    target="webhook",
                    reasons=("unsafe_url",),
                )
            ],
        )
        raise Unprocessable(
            f"The URL cannot receive webhooks: {exc}",
            [{"loc": ["body", "url"], "msg": str(exc), "type": "url"}],
        ) from None
    return target.url


@router.post(
    "/v1/webhooks",
    status_code=status.HTTP_201_CREATED,
    response_model=WebhookCreated,
    responses=responses(401, 403, 409, 413, 422, 429),
)
async def create_webhook(
    payload: WebhookIn, response: Response, caller: Webhooks
) -> WebhookCreated:
    """Subscribe a URL to events; the signing secret is in this response only."""
    state = caller.state
    url = await _checked_url(caller, payload.url)

    def work(session: Session, principal: Principal) -> tuple[SubscriptionView, str]:
        return subscriptions.create(session, state.policy, state.envelope, principal, payload, url)

    view, secret = await caller.run(work)
    response.headers["Location"] = f"/v1/webhooks/{view.id}"
    return WebhookCreated(**dataclasses.asdict(view), secret=secret)


@router.get("/v1/webhooks", response_model=WebhookList, responses=responses(401, 403, 429))
async def list_webhooks(caller: Webhooks) -> WebhookList:
    """The caller's member's subscriptions."""

    def work(conn: Connection, principal: Principal, trace: list[audit.Entry]) -> WebhookList:
        views = subscriptions.list_all(conn, principal.member)
        trace.append(_read_entry("webhook.list", "webhook", f"count:{len(views)}"))
        return WebhookList(items=[_out(v) for v in views])

    return await caller.read(work)


@router.get(
    "/v1/webhooks/{webhook_id}",
    response_model=WebhookOut,
    responses=responses(401, 403, 404, 422, 429),
)
async def get_webhook(webhook_id: str, caller: Webhooks) -> WebhookOut:
    """One subscription of the caller's member; 404 for any other."""

    def work(conn: Connection, principal: Principal, trace: list[audit.Entry]) -> WebhookOut:
        with _traced(trace, "webhook.read", webhook_id):
            return _out(subscriptions.get(conn, principal.member, webhook_id))

    return await caller.read(work)


@router.delete(
    "/v1/webhooks/{webhook_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=responses(401, 403, 404, 422, 429),
)
async def delete_webhook(webhook_id: str, caller: Webhooks) -> Response:
    """Delete a subscription; what it still had queued is dropped."""
    await caller.run(
        lambda session, principal: subscriptions.remove(session, principal, webhook_id)
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/v1/webhooks/{webhook_id}/rotate-secret",
    response_model=SecretRotated,
    responses=responses(401, 403, 404, 413, 422, 429),
)
async def rotate_secret(
    webhook_id: str, caller: Webhooks, payload: RotateIn | None = None
) -> SecretRotated:
    """A new signing secret, shown once; the old one signs beside it until the overlap ends."""
    state = caller.state
    overlap = (
        payload.overlap_seconds
        if payload is not None and payload.overlap_seconds is not None
        else state.settings.webhook_secret_overlap_seconds
    )
    secret, until = await caller.run(
        lambda session, principal: subscriptions.rotate(
            session, state.envelope, principal, webhook_id, overlap
        )
    )
    return SecretRotated(id=webhook_id, secret=secret, previous_secret_expires_at=until)


@router.post(
    "/v1/webhooks/{webhook_id}/ping",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Queued,
    responses=responses(401, 403, 404, 409, 422, 429),
)
async def ping_webhook(webhook_id: str, caller: Webhooks) -> Queued:
    """Queue a signed `webhook.ping` to the subscription's URL."""
    delivery_id = await caller.run(
        lambda session, principal: subscriptions.ping(session, principal, webhook_id)
    )
    return Queued(delivery_id=delivery_id, status="pending")


@router.get(
    "/v1/webhooks/{webhook_id}/deliveries",
    response_model=DeliveryPage,
    responses=responses(401, 403, 404, 422, 429),
)
async def list_deliveries(
    webhook_id: str,
    caller: Webhooks,
    delivery_status: Annotated[
        Literal["pending", "sending", "succeeded", "failed"] | None, Query(alias="status")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> DeliveryPage:
    """Deliveries of a subscription, newest first, each with every attempt made."""

    def work(conn: Connection, principal: Principal, trace: list[audit.Entry]) -> DeliveryPage:
        with _traced(trace, "webhook.deliveries", webhook_id):
            views, next_cursor = subscriptions.deliveries(
                conn,
                principal.member,
                webhook_id,
                status=delivery_status,
                limit=limit,
                cursor=cursor,
            )
        items = [
            DeliveryOut(
                **{k: v for k, v in dataclasses.asdict(d).items() if k != "attempt_log"},
                attempt_log=[AttemptOut(**dataclasses.asdict(a)) for a in d.attempt_log],
            )
            for d in views
        ]
        return DeliveryPage(items=items, next_cursor=next_cursor)

    return await caller.read(work)


@router.post(
    "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Queued,
    responses=responses(401, 403, 404, 409, 422, 429),
)
async def retry_delivery(webhook_id: str, delivery_id: str, caller: Webhooks) -> Queued:
    """Send a finished delivery again now, with the same `webhook-id`."""
    queued = await caller.run(
        lambda session, principal: subscriptions.retry(session, principal, webhook_id, delivery_id)
    )
    return Queued(delivery_id=delivery_id, status=queued)


@router.get(
    "/v1/sync",
    response_model=FeedPage,
    responses=responses(401, 403, 422, 429),
    tags=["sync"],
)
async def sync_feed(
    caller: ReportsRead,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> FeedPage:
    """Every event the caller's member may learn of, in commit order, from `cursor` on.

    Pass `next_cursor` back to continue: nothing is skipped or repeated. A page may hold fewer
    than `limit` events (even none) with the cursor moved on; an empty page at the end.
    """
    state = caller.state
    keys = state.keys
    try:
        after = sync.open_cursor(keys, cursor) if cursor else 0
    except ValueError:
        raise Unprocessable(
            "The cursor is not one this service gave.",
            [{"loc": ["query", "cursor"], "msg": "invalid cursor", "type": "cursor"}],
        ) from None
    if state.db.engine.dialect.name == "postgresql":
        # Events committed since the dispatcher last ran get their positions now.
        await state.db.run(lambda session: service.sequence(session.connection()))

    def work(conn: Connection, principal: Principal, trace: list[audit.Entry]) -> FeedPage:
        found, position = sync.read_feed(conn, state.policy, principal.member, after, limit)
        trace.append(_read_entry("sync.read", "sync", f"events:{len(found)}"))
        return FeedPage(
            events=[FeedEvent(**e) for e in found], next_cursor=sync.seal_cursor(keys, position)
        )

    return await caller.read(work)
