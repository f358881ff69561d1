"""The Authenticator dependency: who is calling, and may it use this route at all."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.audit import service as audit
from app.auth.scopes import Scope
from app.auth.service import Principal, authenticate
from app.db import SessionDep
from app.errors import Forbidden, Unauthorized
from app.kit.jwt import TokenError
from app.state import AppState


def get_state(request: Request) -> AppState:
    """The application's long-lived state (settings, keys, policy)."""
    state: AppState = request.app.state.tearline
    return state


StateDep = Annotated[AppState, Depends(get_state)]


# Declares the bearer scheme in the OpenAPI document; the header itself is checked below, the
# same way for every malformed variant.
_bearer = HTTPBearer(auto_error=False, bearerFormat="JWT", description="ES256 at+jwt access token")


class Authenticator:
    """Verifies the bearer token and requires every scope in `scopes`."""

    def __init__(self, scopes: set[Scope]) -> None:
        self.scopes = frozenset(s.value for s in scopes)

    def __call__(
        self,
        request: Request,
        session: SessionDep,
        state: StateDep,
        _scheme: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        try:
            principal = authenticate(
                session,
                authorization=request.headers.get("authorization"),
                issuer=state.issuer,
                service_keys=state.verification_keys,
                ttl=state.settings.access_token_ttl,
            )
        except TokenError as exc:
            # Every failure gets the same answer; the reason stays in the audit log.
            audit.record_refusal(
                session,
                audit.ANONYMOUS,
                audit.Entry(
                    action="auth.reject",
                    decision="deny",
                    target=f"route:{request.method} {request.url.path[:100]}",
                    reasons=(exc.reason,),
                ),
            )
            raise Unauthorized from exc
        missing = self.scopes - principal.scopes
        if missing:
            audit.record_refusal(
                session,
                principal.actor,
                audit.Entry(
                    action="auth.scope",
                    decision="deny",
                    target=f"route:{request.method} {request.url.path[:100]}",
                    reasons=tuple(f"missing:{s}" for s in sorted(missing)),
                ),
            )
            raise Forbidden("The token lacks a scope this route requires.")
        return principal


def _dep(*scopes: Scope) -> object:
    return Depends(Authenticator(set(scopes)), scope="function")


AnyPrincipal = Annotated[Principal, _dep()]
ReportsRead = Annotated[Principal, _dep(Scope.reports_read)]
ReportsWrite = Annotated[Principal, _dep(Scope.reports_write)]
PolicyRead = Annotated[Principal, _dep(Scope.policy_read)]
