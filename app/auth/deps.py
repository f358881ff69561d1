"""The Authenticator dependency: who is calling, and may it use this route at all."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from fastapi.routing import APIRoute, iter_route_contexts
from sqlalchemy import Connection
from sqlalchemy.orm import Session
from starlette.routing import BaseRoute

from app.audit import service as audit
from app.auth.scopes import Scope
from app.auth.service import Principal, confirm_active, verify_bearer
from app.errors import Forbidden, TooManyRequests, Unauthorized
from app.kit.jwt import TokenError
from app.state import AppState

T = TypeVar("T")


async def get_state(request: Request) -> AppState:
    """The application's long-lived state (settings, keys, policy)."""
    state: AppState = request.app.state.tearline
    return state


StateDep = Annotated[AppState, Depends(get_state)]


# The bearer scheme as the OpenAPI document declares it (see `declare_bearer`). The header itself
# is checked by the Authenticator, the same way for every malformed variant.
BEARER_SCHEME = "HTTPBearer"
_BEARER = {
    "type": "http",
    "scheme": "bearer",
    "bearerFormat": "JWT",
    "description": "ES256 at+jwt access token",
}


def _route(request: Request) -> str:
    return f"route:{request.method} {request.url.path[:100]}"


def _token_refusal(route: str, exc: TokenError) -> audit.Entry:
    # Every failure gets the same answer; the reason stays in the audit log.
    return audit.Entry(action="auth.reject", decision="deny", target=route, reasons=(exc.reason,))


def _scope_refusal(route: str, missing: set[str]) -> audit.Entry:
    return audit.Entry(
        action="auth.scope",
        decision="deny",
        target=route,
        reasons=tuple(f"missing:{s}" for s in sorted(missing)),
    )


_MISSING_SCOPE = "The token lacks a scope this route requires."


class _ScopeMissing(Exception):
    def __init__(self, missing: set[str]) -> None:
        super().__init__("scope missing")
        self.missing = missing


class Caller:
    """The holder of a verified token, and the one way its request reaches the database.

    `run(work)` is a unit of work that writes: in one transaction it first confirms that the
    client and its member are still active and hold the route's scopes, then runs `work`.
    `read(work)` does the same confirmation and runs read-only `work` without a transaction of
    its own; the audit entries it traces are group-committed before it returns. No route can
    skip the confirmation, since no route gets a session or a connection any other way.
    """

    def __init__(self, state: AppState, claimed: Principal, scopes: frozenset[str], route: str):
        self.state = state
        self._claimed = claimed
        self._scopes = scopes
        self._route = route

    @property
    def claimed(self) -> Principal:
        """Who the token says is calling (verified signature; not yet confirmed active)."""
        return self._claimed

    def _confirmed(self, conn: Connection) -> Principal:
        principal = confirm_active(conn, self._claimed)
        missing = set(self._scopes - principal.scopes)
        if missing:
            raise _ScopeMissing(missing)
        return principal

    def _confirm(self, session: Session) -> Principal:
        try:
            return self._confirmed(session.connection())
        except TokenError as exc:
            audit.record_refusal(session, audit.ANONYMOUS, _token_refusal(self._route, exc))
            raise Unauthorized from exc
        except _ScopeMissing as exc:
            entry = _scope_refusal(self._route, exc.missing)
            audit.record_refusal(session, self._claimed.actor, entry)
            raise Forbidden(_MISSING_SCOPE) from exc

    async def run(self, work: Callable[[Session, Principal], T]) -> T:
        """Confirm the caller and run `work` in one transaction, committed before returning."""
        policy = self.state.policy
        before = policy.bundle.hash
        try:
            return await self.state.db.run(lambda session: work(session, self._confirm(session)))
        finally:
            if policy.bundle.hash != before:
                # A bundle came into force while this unit ran: whatever it decided was decided
                # under the old one (and is hidden as stale); have it decided again.
                self.state.redecider.kick()

    async def read(self, work: Callable[[Connection, Principal, list[audit.Entry]], T]) -> T:
        """Confirm the caller and run read-only `work`, which lists its accesses in a trace.

        The trace is committed before this returns, and also when `work` raises (a refusal
        leaves its trace too): nothing read is answered unless its access is on record.
        """
        trace: list[audit.Entry] = []
        log = self.state.audit_log

        def unit(conn: Connection) -> T:
            return work(conn, self._confirmed(conn), trace)

        try:
            result = await self.state.db.read(unit)
        except TokenError as exc:
            await log.append(audit.ANONYMOUS, [_token_refusal(self._route, exc)])
            raise Unauthorized from exc
        except _ScopeMissing as exc:
            await log.append(self._claimed.actor, [_scope_refusal(self._route, exc.missing)])
            raise Forbidden(_MISSING_SCOPE) from exc
        except Exception:
            await log.append(self._claimed.actor, trace)
            raise
        await log.append(self._claimed.actor, trace)
        return result


class Authenticator:
    """Verifies the bearer token and requires every scope in `scopes`."""

    def __init__(self, scopes: set[Scope]) -> None:
        self.scopes = frozenset(s.value for s in scopes)

    # One parameter only: every sub-dependency costs each request a resolution of its own.
    async def __call__(self, request: Request) -> Caller:
        state: AppState = request.app.state.tearline
        route = _route(request)
        try:
            # Signature and claims only: CPU work, cached per token, no database yet.
            claimed = verify_bearer(
                request.headers.get("authorization"),
                issuer=state.issuer,
                service_keys=state.service_keys.resolve,
                ttl=state.settings.access_token_ttl,
                verified=state.verified_tokens,
            )
        except TokenError as exc:
            await state.audit_log.append(audit.ANONYMOUS, [_token_refusal(route, exc)])
            raise Unauthorized from exc
        missing = set(self.scopes - claimed.scopes)
        if missing:
            await state.audit_log.append(claimed.actor, [_scope_refusal(route, missing)])
            raise Forbidden(_MISSING_SCOPE)
        await _within_rate(request, state, claimed, route)
        return Caller(state, claimed, self.scopes, route)


async def _within_rate(request: Request, state: AppState, claimed: Principal, route: str) -> None:
    """Take one request from the client's bucket of the route's family; 429 when it is empty."""
    template = getattr(request.scope.get("route"), "path", request.url.path)
    limited = state.route_limits.family(request.method, template)
    if limited is None:
        return
    name, limiter = limited
    retry_after = limiter.acquire(claimed.client_id)
    if retry_after is None:
        return
    refusal = audit.Entry(
        action="rate.limit", decision="deny", target=route, reasons=(f"family:{name}",)
    )
    await state.audit_log.append(claimed.actor, [refusal])
    raise TooManyRequests(retry_after)


def declare_bearer(document: dict[str, Any], routes: Sequence[BaseRoute]) -> dict[str, Any]:
    """Mark in an OpenAPI document every operation whose route takes a Caller as bearer-only."""
    protected = set()
    for context in iter_route_contexts(routes):
        route = context.original_route
        if isinstance(route, APIRoute) and any(
            isinstance(d.call, Authenticator) for d in route.dependant.dependencies
        ):
            protected |= {(context.path_format, m.lower()) for m in context.methods or ()}
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            if (path, method) in protected:
                operation["security"] = [{BEARER_SCHEME: []}]
    schemes = document.setdefault("components", {}).setdefault("securitySchemes", {})
    schemes[BEARER_SCHEME] = _BEARER
    return document


AnyCaller = Annotated[Caller, Depends(Authenticator(set()))]
ReportsRead = Annotated[Caller, Depends(Authenticator({Scope.reports_read}))]
ReportsWrite = Annotated[Caller, Depends(Authenticator({Scope.reports_write}))]
PolicyRead = Annotated[Caller, Depends(Authenticator({Scope.policy_read}))]
Searcher = Annotated[Caller, Depends(Authenticator({Scope.search}))]
Webhooks = Annotated[Caller, Depends(Authenticator({Scope.webhooks}))]
Auditor = Annotated[Caller, Depends(Authenticator({Scope.audit}))]
