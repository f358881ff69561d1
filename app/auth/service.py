"""Client assertions in, service-signed access tokens out; and their verification per request."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.auth.models import UsedAssertion
from app.db import Prepared
from app.kit import jwt
from app.kit.jwt import ACCESS_TOKEN_TYP, ASSERTION_TYP, SigningKey, TokenError, VerificationKey
from app.members.models import Client, ClientKey, Member

ASSERTION_MAX_LIFETIME = 300
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class TokenRequestError(Exception):
    """An RFC 6749 §5.2 error; `reason` is for the audit entry only, never for the client."""

    def __init__(
        self, error: str, reason: str, status: int = 400, retry_after: int | None = None
    ) -> None:
        super().__init__(error)
        self.error = error
        self.reason = reason
        self.status = status
        self.retry_after = retry_after

    @property
    def description(self) -> str:
        return {
            "invalid_client": "Client authentication failed.",
            "invalid_grant": "The grant is not valid.",
            "invalid_scope": "The requested scope is not allowed for this client.",
            "unsupported_grant_type": "Only client_credentials is supported.",
            "slow_down": "This client asked for tokens too often; retry later.",
            "invalid_request": "The request is missing a required parameter.",
        }.get(self.error, "The request was refused.")


@dataclass(frozen=True)
class Principal:
    """The verified caller of a request."""

    client_id: str
    member: str
    scopes: frozenset[str]
    token_id: str

    @property
    def actor(self) -> audit.Actor:
        return audit.Actor(member=self.member, client=self.client_id)


@dataclass(frozen=True)
class IssuedToken:
    access_token: str
    expires_in: int
    scope: str


class VerifiedTokens:
    """Claims of access tokens this process has already verified, kept until they expire.

    Keyed by the exact token text, so only the very same signed bytes hit; the client and
    member status is still checked on every request, so revocation stays immediate.
    """

    def __init__(self, max_entries: int = 10_000) -> None:
        self._max = max_entries
        self._claims: dict[str, dict[str, Any]] = {}

    def get(self, token: str) -> dict[str, Any] | None:
        """The cached claims of `token`, if it was verified and has not expired since."""
        claims = self._claims.get(token)
        if claims is None:
            return None
        if claims["exp"] <= time.time():
            self._claims.pop(token, None)
            return None
        return claims

    def put(self, token: str, claims: dict[str, Any]) -> None:
        """Remember verified claims; forgets everything when full (cheap and bounded)."""
        if len(self._claims) >= self._max:
            self._claims.clear()
        self._claims[token] = claims

    def clear(self) -> None:
        """Forget every cached token (e.g. after a service key was withdrawn)."""
        self._claims.clear()


def api_audience(issuer: str) -> str:
    """The audience of access tokens: the API, distinct from the token endpoint's issuer value."""
    return issuer.rstrip("/") + "/v1"


def _client_keys(session: Session, client_id: str) -> dict[str, VerificationKey]:
    rows = session.execute(
        select(ClientKey.kid, ClientKey.alg, ClientKey.public_pem).where(
            ClientKey.client_id == client_id, ClientKey.revoked_at.is_(None)
        )
    ).all()
    keys: dict[str, VerificationKey] = {}
    for kid, alg, pem in rows:
        # Each key is pinned to the one algorithm it was registered with.
        if alg == "ES256":
            keys[kid] = VerificationKey.from_pem(kid, "ES256", pem)
        elif alg == "RS256":
            keys[kid] = VerificationKey.from_pem(kid, "RS256", pem)
    return keys


@dataclass(frozen=True)
class ActiveClient:
    id: str
    member: str
    scopes: tuple[str, ...]


# Built once; run on every authenticated request, so kept to one indexed Core query.
# On every request's path: run on the driver's cursor (see Prepared).
_CLIENT_STATUS = Prepared(
    select(Client.id, Client.member_code, Client.scopes)
    .join(Member, Member.code == Client.member_code)
    .where(Client.id == bindparam("client_id"), Client.status == "active", Member.active.is_(True))
)


def _active_client(conn: Connection, client_id: str) -> ActiveClient | None:
    row = _CLIENT_STATUS.first(conn, {"client_id": client_id})
    if row is None:
        return None
    return ActiveClient(id=row.id, member=row.member_code, scopes=tuple(row.scopes))


def issue_token(
    session: Session,
    *,
    grant_type: str | None,
    assertion_type: str | None,
    assertion: str | None,
    requested_scope: str | None,
    issuer: str,
    signing_key: SigningKey,
    ttl: int,
    within_rate: Callable[[str], int | None] | None = None,
) -> IssuedToken:
    """Verify a client assertion and issue an access token; every outcome is audited."""
    client_id: str | None = None
    try:
        if grant_type is None or assertion_type is None or assertion is None:
            raise TokenRequestError("invalid_request", "missing_parameter")
        if grant_type != "client_credentials":
            raise TokenRequestError("unsupported_grant_type", "grant_type")
        if assertion_type != CLIENT_ASSERTION_TYPE:
            raise TokenRequestError("invalid_client", "assertion_type", 401)
        try:
            _, unverified = jwt.peek_unverified(assertion)
        except TokenError as exc:
            raise TokenRequestError("invalid_client", "malformed_assertion", 401) from exc
        # Only a routing hint: which client's registered keys to try. Trusted after verify.
        candidate = unverified.get("iss")
        if requested_scope is not None and len(requested_scope) > 512:
            raise TokenRequestError("invalid_scope", "scope_too_long")
        if not isinstance(candidate, str) or len(candidate) > 80:
            raise TokenRequestError("invalid_client", "bad_issuer", 401)
        found = _active_client(session.connection(), candidate)
        if found is None:
            raise TokenRequestError("invalid_client", "unknown_or_inactive_client", 401)
        client = found
        keys = _client_keys(session, client.id)
        try:
            claims = jwt.verify(
                assertion,
                keys=keys,
                typ=ASSERTION_TYP,
                issuer=client.id,
                audience=issuer,
                max_lifetime=ASSERTION_MAX_LIFETIME,
                require_sub_equals_iss=True,
                # RFC 7523 assertions usually carry no typ; one claiming at+jwt is still refused.
                allow_missing_typ=True,
            )
        except TokenError as exc:
            raise TokenRequestError("invalid_client", f"assertion:{exc.reason}", 401) from exc
        client_id = client.id
        granted = _granted_scopes(list(client.scopes), requested_scope)
        _consume_jti(session, client.id, claims)
        # Counted only now that the assertion verified and was unused: neither a stranger
        # naming this client nor a replayed assertion can spend its budget. A refusal rolls the
        # transaction back, so the assertion may be sent again.
        wait = within_rate(client.id) if within_rate is not None else None
        if wait is not None:
            raise TokenRequestError("slow_down", "rate_limited", 429, retry_after=wait)
        now = int(datetime.now(UTC).timestamp())
        token_claims = {
            "iss": issuer,
            "sub": client.id,
            "client_id": client.id,
            "member": client.member,
            "aud": api_audience(issuer),
            "scope": " ".join(granted),
            "jti": uuid.uuid4().hex,
            "iat": now,
            "exp": now + ttl,
        }
        token = jwt.sign(token_claims, signing_key, typ=ACCESS_TOKEN_TYP)
    except TokenRequestError as exc:
        audit.record_refusal(
            session,
            audit.Actor(member=None, client=client_id),
            audit.Entry(action="auth.token", decision="deny", reasons=(exc.error, exc.reason)),
        )
        raise
    audit.record(
        session,
        audit.Actor(member=client.member, client=client.id),
        audit.Entry(
            action="auth.token",
            decision="allow",
            target=f"client:{client.id}",
            reasons=tuple(f"scope:{s}" for s in granted),
        ),
    )
    return IssuedToken(access_token=token, expires_in=ttl, scope=" ".join(granted))


def _granted_scopes(client_scopes: list[str], requested: str | None) -> list[str]:
    if requested is None or not requested.strip():
        return list(client_scopes)
    wanted = requested.split()
    if any(s not in client_scopes for s in wanted):
        raise TokenRequestError("invalid_scope", "scope_not_held")
    return [s for s in client_scopes if s in wanted]


def _consume_jti(session: Session, client_id: str, claims: dict[str, object]) -> None:
    exp = claims["exp"]
    assert isinstance(exp, int | float)  # noqa: S101 - verify() guarantees a number
    try:
        # The primary key makes the second use of a jti fail, also when two arrive at once:
        # on PostgreSQL the second insert waits for the first transaction and then conflicts.
        with session.begin_nested():
            session.execute(
                insert(UsedAssertion),
                [
                    {
                        "client_id": client_id,
                        "jti": str(claims["jti"]),
                        "expires_at": datetime.fromtimestamp(float(exp), UTC),
                    }
                ],
            )
    except IntegrityError as exc:
        raise TokenRequestError("invalid_client", "replayed_assertion", 401) from exc
    # A jti only needs remembering while its assertion could still verify (exp plus leeway);
    # past that, verify() refuses the assertion anyway, so the row can go.
    cutoff = datetime.now(UTC) - timedelta(seconds=2 * jwt.MAX_LEEWAY)
    session.execute(
        delete(UsedAssertion).where(
            UsedAssertion.client_id == client_id, UsedAssertion.expires_at < cutoff
        )
    )


def verify_bearer(
    authorization: str | None,
    *,
    issuer: str,
    service_keys: jwt.KeyResolver,
    ttl: int,
    verified: VerifiedTokens | None = None,
) -> Principal:
    """The principal a bearer token claims, its signature and claims checked; TokenError if not.

    The claim is not yet enough: `confirm_active` must still find the client and its member
    active (a database lookup), which the unit of work of every request does first.
    """
    if not authorization:
        raise TokenError("missing")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise TokenError("malformed_header")
    token = token.strip()
    claims = verified.get(token) if verified is not None else None
    if claims is None:
        claims = jwt.verify(
            token,
            keys=service_keys,
            typ=ACCESS_TOKEN_TYP,
            issuer=issuer,
            audience=api_audience(issuer),
            max_lifetime=ttl,
        )
        if verified is not None:
            verified.put(token, claims)
    client_id, member_code, scope = claims.get("sub"), claims.get("member"), claims.get("scope")
    if (
        not isinstance(client_id, str)
        or not isinstance(member_code, str)
        or not isinstance(scope, str)
    ):
        raise TokenError("claims")
    return Principal(
        client_id=client_id,
        member=member_code,
        scopes=frozenset(scope.split()),
        token_id=str(claims["jti"]),
    )


def confirm_active(conn: Connection, claimed: Principal) -> Principal:
    """The claimed principal, if its client and member are active now; TokenError otherwise.

    Checked on every request, so a revoked client or suspended member is refused at once; the
    scopes are cut to what the client holds now.
    """
    found = _active_client(conn, claimed.client_id)
    if found is None:
        raise TokenError("inactive_client")
    if found.member != claimed.member:
        raise TokenError("member_mismatch")
    return Principal(
        client_id=found.id,
        member=found.member,
        scopes=claimed.scopes & frozenset(found.scopes),
        token_id=claimed.token_id,
    )
