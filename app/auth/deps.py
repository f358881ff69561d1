"""The Authenticator dependency: who is calling, and may it use this route at all."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, NoReturn, TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.auth.scopes import Scope
from app.auth.service import Principal, confirm_active, verify_bearer
from app.errors import Forbidden, Unauthorized
from app.kit.jwt import TokenError
from app.state import AppState

T = TypeVar("T")


async def get_state(request: Request) -> AppState:
    """The application's long-lived state (settings, keys, policy)."""
    state: AppState = request.app.state.tearline
    return state


StateDep = Annotated[AppState, Depends(get_state)]


# Declares the bearer scheme in the OpenAPI document; the header itself is checked below, the
# same way for every malformed variant.
_bearer = HTTPBearer(auto_error=False, bearerFormat="JWT", description="ES256 at+jwt access token")


def _route(request: Request) -> str:
    return f"route:{request.method} {request.url.path[:100]}"


def _refuse_token(session: Session, route: str, exc: TokenError) -> NoReturn:
    # Every failure gets the same answer; the reason stays in the audit log.
    audit.record_refusal(
        session,
        audit.ANONYMOUS,
        audit.Entry(action="auth.reject", decision="deny", target=route, reasons=(exc.reason,)),
    )
    raise Unauthorized from exc


def _refuse_scope(
    session: Session, route: str, principal: Principal, missing: set[str]
) -> NoReturn:
    audit.record_refusal(
        session,
        principal.actor,
        audit.Entry(
            action="auth.scope",
            decision="deny",
            target=route,
            reasons=tuple(f"missing:{s}" for s in sorted(missing)),
        ),
    )
    raise Forbidden("The token lacks a scope this route requires.")


class Caller:
    """The holder of a verified token, and the one way its request reaches the database.

    `run(work)` is the request's unit of work: in one transaction it first confirms that the
    client and its member are still active and hold the route's scopes, then runs `work`.
    No route can skip the confirmation, since no route gets a session any other way.
    """

    def __init__(self, state: AppState, claimed: Principal, scopes: frozenset[str], route: str):
        self.state = state
        self._claimed = claimed
        self._scopes = scopes
        self._route = route

    def _confirm(self, session: Session) -> Principal:
        try:
            principal = confirm_active(session, self._claimed)
        except TokenError as exc:
            _refuse_token(session, self._route, exc)
        missing = set(self._scopes - principal.scopes)
        if missing:
            _refuse_scope(session, self._route, principal, missing)
        return principal

    async def run(self, work: Callable[[Session, Principal], T]) -> T:
        """Confirm the caller and run `work` in one transaction, committed before returning."""
        return await self.state.db.run(lambda session: work(session, self._confirm(session)))


class Authenticator:
    """Verifies the bearer token and requires every scope in `scopes`."""

    def __init__(self, scopes: set[Scope]) -> None:
        self.scopes = frozenset(s.value for s in scopes)

    async def __call__(
        self,
        request: Request,
        state: StateDep,
        _scheme: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Caller:
        route = _route(request)
        try:
            # Signature and claims only: CPU work, cached per token, no database yet.
            claimed = verify_bearer(
                request.headers.get("authorization"),
                issuer=state.issuer,
                service_keys=state.verification_keys,
                ttl=state.settings.access_token_ttl,
                verified=state.verified_tokens,
            )
        except TokenError as exc:
            failure = exc
            # Records the refusal in its own transaction and raises Unauthorized.
            await state.db.run(lambda s: _refuse_token(s, route, failure))
        missing = set(self.scopes - claimed.scopes)
        if missing:
            await state.db.run(lambda s: _refuse_scope(s, route, claimed, missing))
        return Caller(state, claimed, self.scopes, route)


AnyCaller = Annotated[Caller, Depends(Authenticator(set()))]
ReportsRead = Annotated[Caller, Depends(Authenticator({Scope.reports_read}))]
ReportsWrite = Annotated[Caller, Depends(Authenticator({Scope.reports_write}))]
PolicyRead = Annotated[Caller, Depends(Authenticator({Scope.policy_read}))]
