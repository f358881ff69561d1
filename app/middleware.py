"""Pure ASGI middleware: request ids, the request body limit and request metrics."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from contextvars import ContextVar

from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import PayloadTooLarge, ServiceUnavailable, problem_response
from app.metrics import UNMATCHED, Metrics

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

# A caller-supplied id is kept only if it is short and plain, so it cannot smuggle anything
# into logs or audit entries.
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


class RequestIdMiddleware:
    """Gives every request an id, echoed in `X-Request-Id` and recorded in audit entries."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        supplied = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), ""
        )
        request_id = supplied if _SAFE_REQUEST_ID.match(supplied) else uuid.uuid4().hex
        token = request_id_var.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"].append((b"x-request-id", request_id.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


class _TooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """Refuses bodies above the limit with 413, by declared length and by bytes actually read."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope["headers"]:
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = self.max_bytes + 1
                if declared > self.max_bytes:
                    await self._refuse(scope, receive, send)
                    return
        received = 0
        too_large = False
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            # The framework turns an error while reading the body into its own answer (FastAPI:
            # 400); once the limit was hit, that answer is dropped and 413 is sent instead.
            if too_large and not response_started:
                return
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except Exception:
            if not too_large or response_started:
                raise
        if too_large and not response_started:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        err = PayloadTooLarge(f"The request body exceeds {self.max_bytes} bytes.")
        response = problem_response(err.status, err.body(), {"Connection": "close"})
        await response(scope, receive, send)


class DeadlineMiddleware:
    """A request whose answer has not started within `seconds` is cancelled and gets 503.

    Once the answer has started (a streamed export, say) it is not cut. Cancelling stops the
    request's own work at its next pause; a unit of work already running on a database thread
    finishes or rolls back on its own, and either way the caller was told nothing was
    acknowledged (a submission is safe to retry with its Idempotency-Key). A timer per request,
    not a task: the deadline must cost next to nothing on every request.
    """

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        task = asyncio.current_task()
        started = expired = False

        def expire() -> None:
            nonlocal expired
            if not started and task is not None:
                expired = True
                task.cancel()

        async def note_start(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        timer = asyncio.get_running_loop().call_later(self.seconds, expire)
        try:
            await self.app(scope, receive, note_start)
        except asyncio.CancelledError:
            # Ours only if the timer fired, and no one else (a shutdown) cancelled too.
            if not expired or task is None or task.uncancel() > 0:
                raise
        finally:
            timer.cancel()
        if expired and not started:
            err = ServiceUnavailable(f"The request took longer than {self.seconds:g} s.")
            response = problem_response(err.status, err.body(), {"Retry-After": "1"})
            await response(scope, receive, send)


def _route_template(scope: Scope) -> str:
    """The path template of the route that answered (`/v1/reports/{report_id}`), never the path.

    API routes leave themselves in the scope. Plain routes (the documentation pages) do not, so
    they are matched here. A request no route matched, or refused before routing (a declared
    body over the limit), is counted under a fixed label: its path is the caller's to choose.
    """
    route = scope.get("route")
    if route is None:
        # As the router chooses: the first full match, else the first partial one (a 405).
        for candidate in getattr(scope.get("router"), "routes", ()):
            if not isinstance(candidate, Route):
                continue
            match, _ = candidate.matches(scope)
            if match is Match.FULL:
                route = candidate
                break
            if match is Match.PARTIAL and route is None:
                route = candidate
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class MetricsMiddleware:
    """Counts every HTTP request by route template, method and status, and times it."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except Exception:
            # Unhandled: the server error middleware outside answers 500 once this re-raises.
            status = status or 500
            raise
        finally:
            # A request cancelled before any answer (the client went away) is not counted.
            if status:
                self.metrics.observe_request(
                    _route_template(scope),
                    scope["method"],
                    status,
                    time.perf_counter() - started,
                )
