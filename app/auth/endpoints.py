"""OAuth 2.0 metadata, the service's public keys, and the token endpoint."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from app.audit import service as audit
from app.auth.deps import StateDep
from app.auth.scopes import ALL_SCOPES
from app.auth.service import TokenRequestError, issue_token
from app.errors import responses

router = APIRouter(tags=["auth"])


class AuthorizationServerMetadata(BaseModel):
    issuer: str
    token_endpoint: str
    jwks_uri: str
    grant_types_supported: list[str]
    token_endpoint_auth_methods_supported: list[str]
    token_endpoint_auth_signing_alg_values_supported: list[str]
    scopes_supported: list[str]


class TokenResponse(BaseModel):
    access_token: str
    token_type: str
    expires_in: int
    scope: str


class OAuthError(BaseModel):
    """RFC 6749 §5.2 error response."""

    error: str
    error_description: str


@router.get("/.well-known/oauth-authorization-server")
def metadata(state: StateDep) -> AuthorizationServerMetadata:
    """RFC 8414 authorization server metadata."""
    issuer = state.issuer
    return AuthorizationServerMetadata(
        issuer=issuer,
        token_endpoint=f"{issuer}/v1/auth/token",
        jwks_uri=f"{issuer}/.well-known/jwks.json",
        grant_types_supported=["client_credentials"],
        token_endpoint_auth_methods_supported=["private_key_jwt"],
        token_endpoint_auth_signing_alg_values_supported=["ES256", "RS256"],
        scopes_supported=list(ALL_SCOPES),
    )


@router.get("/.well-known/jwks.json")
def jwks(state: StateDep) -> dict[str, Any]:
    """The service's public signing keys (access tokens, audit checkpoints)."""
    return state.service_keys.jwks()


def _oauth_error(exc: TokenRequestError) -> JSONResponse:
    headers = {"Cache-Control": "no-store"}
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Bearer error="invalid_client"'
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    return JSONResponse(
        {"error": exc.error, "error_description": exc.description},
        status_code=exc.status,
        headers=headers,
    )


@router.post(
    "/v1/auth/token",
    response_model=TokenResponse,
    responses={
        400: {"model": OAuthError, "description": "Invalid request, grant or scope"},
        401: {"model": OAuthError, "description": "Client authentication failed"},
        429: {
            "model": OAuthError,
            "description": "Too many token requests from this address, or tokens for this "
            "client (`slow_down`); see Retry-After",
        },
        # What the framework refuses before the endpoint runs (a body over the limit, a form it
        # cannot parse, a file where a field belongs) is a problem document, as on every route.
        **responses(413, 422),
    },
)
async def token(
    request: Request,
    response: Response,
    state: StateDep,
    # Lengths are not limited here: an oversized assertion must get the same invalid_client
    # answer as any other bad one (the JWT wrapper caps it at 8 KiB before decoding).
    grant_type: Annotated[str | None, Form()] = None,
    client_assertion_type: Annotated[str | None, Form()] = None,
    client_assertion: Annotated[str | None, Form()] = None,
    scope: Annotated[str | None, Form()] = None,
) -> TokenResponse | JSONResponse:
    """Exchange a `private_key_jwt` client assertion (RFC 7523) for an access token."""
    address = request.client.host if request.client is not None else "unknown"
    limiter = state.route_limits.token_addresses
    wait = limiter.acquire(address)
    if wait is not None:
        if not limiter.first_refusal(address):
            # A flood from one address is on record once a minute, not once a request.
            return _oauth_error(TokenRequestError("slow_down", "rate_limited", 429, wait))
        refusal = audit.Entry(
            action="rate.limit",
            decision="deny",
            target="route:POST /v1/auth/token",
            reasons=("family:token_address",),
        )
        await state.audit_log.append(audit.ANONYMOUS, [refusal])
        return _oauth_error(TokenRequestError("slow_down", "rate_limited", 429, wait))
    try:
        issued = await state.db.run(
            lambda session: issue_token(
                session,
                grant_type=grant_type,
                assertion_type=client_assertion_type,
                assertion=client_assertion,
                requested_scope=scope,
                issuer=state.issuer,
                signing_key=state.signing_key,
                ttl=state.settings.access_token_ttl,
                within_rate=state.route_limits.tokens.acquire,
            ),
        )
    except TokenRequestError as exc:
        # The transaction rolled back, keeping only the refusal's audit entry; RFC 6749 wants
        # its own error shape here rather than a problem document.
        return _oauth_error(exc)
    response.headers["Cache-Control"] = "no-store"
    return TokenResponse(
        access_token=issued.access_token,
        token_type="Bearer",  # noqa: S106 - RFC 6750 token type
        expires_in=issued.expires_in,
        scope=issued.scope,
    )
