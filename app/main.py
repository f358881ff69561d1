"""The application factory."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text

from app import bootstrap
from app.audit import maintainer
from app.audit import service as audit
from app.audit.endpoints import router as audit_router
from app.auth.deps import declare_bearer
from app.auth.endpoints import router as auth_router
from app.config import Settings, get_settings
from app.db import Checkpointer
from app.errors import ServiceUnavailable, install_handlers, problem_response, responses
from app.members.endpoints import router as members_router
from app.metrics import CONTENT_TYPE, exposition
from app.middleware import (
    BodyLimitMiddleware,
    DeadlineMiddleware,
    MetricsMiddleware,
    RequestIdMiddleware,
)
from app.policy.endpoints import router as policy_router
from app.reports.endpoints import router as reports_router
from app.search.endpoints import router as search_router
from app.state import AppState
from app.webhooks import dispatcher
from app.webhooks.endpoints import router as webhooks_router

log = logging.getLogger("tearline.policy")


def _reload_on_sighup(state: AppState) -> bool:
    """`kill -HUP` reloads the policy bundle (as the operator); only where signals can be had."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGHUP"):
        return False
    loop = asyncio.get_running_loop()
    running: set[asyncio.Task[object]] = set()

    def done(task: asyncio.Task[object]) -> None:
        running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("policy reload on SIGHUP failed", exc_info=task.exception())

    def reload() -> None:
        task = loop.create_task(state.reloader.reload(audit.OPERATOR))
        running.add(task)  # held until done, so it is not collected midway
        task.add_done_callback(done)

    loop.add_signal_handler(signal.SIGHUP, reload)
    return True


@asynccontextmanager
async def _background(state: AppState, settings: Settings) -> AsyncIterator[None]:
    """What runs beside the requests while the app serves, stopped in reverse order."""
    hangup = _reload_on_sighup(state)
    checkpointing = Checkpointer(state.db.engine).start() if state.db.inline else None
    running = dispatcher.start(state) if settings.webhook_dispatch_in_serve else None
    keeping = maintainer.start(state) if settings.audit_tree_in_serve else None
    try:
        yield
    finally:
        try:
            if keeping is not None:
                await keeping.stop()
            if running is not None:
                await running.stop()
            if hangup:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            # Entries of requests that were cancelled (a client gone) are still written.
            await state.audit_log.drain()
            # A pass of re-decision stops between two batches; the next start finishes it.
            await state.redecider.stop()
        finally:
            # Whatever failed above, the thread stops before its engine is disposed.
            if checkpointing is not None:
                checkpointing.stop()


def create_app(settings: Settings | None = None, *, state: AppState | None = None) -> FastAPI:
    """A Tearline API instance; migrations run at start-up in development only."""
    settings = settings or get_settings()
    state = state or bootstrap.build_state(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if settings.is_development:
            bootstrap.upgrade_database(settings.resolved_database_url)
        bootstrap.prepare_database(state)
        try:
            async with _background(state, settings):
                yield
        finally:
            state.db.dispose()

    app = FastAPI(
        title="Tearline",
        version="0.1.0",
        summary="Need-to-know sharing of counter-terrorist-financing intelligence.",
        lifespan=lifespan,
    )
    app.state.tearline = state
    install_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(DeadlineMiddleware, seconds=settings.request_timeout_seconds)
    # Outside the body limit, so that its 413s are counted too.
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    app.add_middleware(RequestIdMiddleware)

    @app.get("/healthz", tags=["service"])
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["service"], responses=responses(503))
    def readyz() -> Any:
        """The process can serve: its database answers."""
        try:
            with state.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception:
            err = ServiceUnavailable("The database is not reachable.")
            return problem_response(err.status, err.body())
        return JSONResponse({"status": "ready"})

    @app.get(
        "/metrics",
        tags=["service"],
        response_class=Response,
        responses={
            200: {
                "description": "Every metric in the Prometheus text format.",
                "content": {CONTENT_TYPE: {"schema": {"type": "string"}}},
            }
        },
    )
    async def metrics() -> Response:
        """Requests by route and status, latencies, stored decisions by level, the webhook
        backlog and delivery outcomes, the audit log and tree sizes, in the Prometheus text
        format. Public like /healthz: labels carry no ids, codes or content; restrict the
        route at the network. Without the database, its gauges are left out."""
        return Response(await exposition(state.metrics, state.db), media_type=CONTENT_TYPE)

    app.include_router(auth_router)
    app.include_router(reports_router)
    app.include_router(members_router)
    app.include_router(policy_router)
    app.include_router(search_router)
    app.include_router(webhooks_router)
    app.include_router(audit_router)

    generate = app.openapi

    def openapi() -> dict[str, Any]:
        # FastAPI caches the document it generates; the bearer scheme is added to it once.
        if app.openapi_schema is None:
            declare_bearer(generate(), app.routes)
        return generate()

    app.openapi = openapi  # type: ignore[method-assign]
    return app
