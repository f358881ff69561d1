"""The token endpoint and bearer authentication, attacked through HTTP."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from typing import Any

import pytest
from jose import jws
from sqlalchemy import func, select

from app.audit.models import AuditEntry
from app.auth.service import api_audience
from app.db import transaction
from app.kit.jwt import SigningKey
from app.members.service import add_client, revoke_client
from tests.conftest import ASSERTION_TYPE, World


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"sig") -> str:
    return ".".join(
        [b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()), b64(signature)]
    )


def hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    signing_input = ".".join([b64(json.dumps(header).encode()), b64(json.dumps(claims).encode())])
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(mac)


def es256(header: dict[str, Any], claims: dict[str, Any], key: SigningKey) -> str:
    token: str = jws.sign(
        json.dumps(claims).encode(), key.private_pem(), headers=header, algorithm="ES256"
    )
    return token


def assertion_claims(world: World, code: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": f"{code}.test",
        "sub": f"{code}.test",
        "aud": world.issuer,
        "jti": uuid.uuid4().hex,
        "iat": now,
        "exp": now + 60,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def exchange(world: World, assertion: str, **form: str) -> Any:
    data = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
        **form,
    }
    return world.http.post("/v1/auth/token", data=data)


def access_claims(world: World, code: str = "DEU", **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": world.issuer,
        "sub": f"{code}.test",
        "client_id": f"{code}.test",
        "member": code,
        "aud": api_audience(world.issuer),
        "scope": "reports:read reports:write",
        "jti": uuid.uuid4().hex,
        "iat": now,
        "exp": now + 600,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def service_header(world: World, **overrides: Any) -> dict[str, Any]:
    header = {"alg": "ES256", "kid": world.state.signing_key.kid, "typ": "at+jwt"}
    header.update(overrides)
    return {k: v for k, v in header.items() if v is not None}


def audit_count(world: World, action: str) -> int:
    with transaction(world.state.sessionmaker) as session:
        return int(
            session.scalar(
                select(func.count()).select_from(AuditEntry).where(AuditEntry.action == action)
            )
            or 0
        )


class TestMetadata:
    def test_metadata_names_the_issuer_token_endpoint_and_jwks(self, world: World) -> None:
        meta = world.http.get("/.well-known/oauth-authorization-server").json()
        assert meta["issuer"] == world.issuer
        assert meta["token_endpoint"] == f"{world.issuer}/v1/auth/token"
        assert meta["jwks_uri"] == f"{world.issuer}/.well-known/jwks.json"
        assert meta["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
        assert "audit" in meta["scopes_supported"]

    def test_jwks_publishes_only_public_keys(self, world: World) -> None:
        keys = world.http.get("/.well-known/jwks.json").json()["keys"]
        assert keys
        assert all(k["kty"] == "EC" for k in keys)
        assert not any("d" in k for k in keys)
        assert keys[0]["kid"] == world.state.signing_key.kid


class TestTokenIssue:
    def test_valid_assertion_yields_an_es256_at_jwt_with_the_clients_scopes(
        self, world: World
    ) -> None:
        response = world.request_token("ITA")
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
        assert body["token_type"] == "Bearer"
        assert body["expires_in"] == 900
        assert "audit" in body["scope"].split()
        header = json.loads(base64.urlsafe_b64decode(body["access_token"].split(".")[0] + "=="))
        assert header == {"alg": "ES256", "kid": world.state.signing_key.kid, "typ": "at+jwt"}
        claims = json.loads(base64.urlsafe_b64decode(body["access_token"].split(".")[1] + "=="))
        assert claims["member"] == "ITA"
        assert claims["sub"] == "ITA.test"
        assert claims["exp"] - claims["iat"] == 900

    def test_requested_scope_subset_is_granted(self, world: World) -> None:
        response = world.request_token("DEU", scope="reports:read")
        assert response.status_code == 200
        assert response.json()["scope"] == "reports:read"

    def test_scope_beyond_the_client_is_invalid_scope(self, world: World) -> None:
        response = world.request_token("DEU", scope="reports:read audit")
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_scope"

    def test_non_chair_clients_cannot_be_given_the_audit_scope(self, world: World) -> None:
        key = SigningKey.generate("deu-audit-1")
        with (
            pytest.raises(ValueError, match="may not hold"),
            transaction(world.state.sessionmaker) as session,
        ):
            add_client(
                session,
                world.state.policy.bundle,
                client_id="DEU.auditor",
                public_pem=key.public_pem(),
                kid=key.kid,
                scopes=["audit"],
            )

    def test_unsupported_grant_type_is_refused(self, world: World) -> None:
        response = exchange(world, world.assertion("DEU"), grant_type="password")
        assert response.status_code == 400
        assert response.json()["error"] == "unsupported_grant_type"

    def test_missing_form_fields_are_a_4xx(self, world: World) -> None:
        response = world.http.post("/v1/auth/token", data={"grant_type": "client_credentials"})
        assert 400 <= response.status_code < 500

    @pytest.mark.parametrize(
        "request_kwargs",
        [
            {"content": b"x", "headers": {"Content-Type": "multipart/form-data"}},
            {"files": {"grant_type": ("grant.txt", b"client_credentials")}},
        ],
        ids=["form-without-boundary", "file-for-a-field"],
    )
    def test_a_form_the_framework_refuses_is_the_declared_422_problem(
        self, world: World, request_kwargs: dict[str, Any]
    ) -> None:
        response = world.http.post("/v1/auth/token", **request_kwargs)

        assert response.status_code == 422
        assert response.headers["content-type"] == "application/problem+json"
        declared = world.app.openapi()["paths"]["/v1/auth/token"]["post"]["responses"]["422"]
        schema = declared["content"]["application/problem+json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ValidationProblem"}


BAD_ASSERTIONS = {
    "signed_by_another_key_with_the_same_kid": lambda w: es256(
        {"alg": "ES256", "kid": w.keys["DEU"].kid},
        assertion_claims(w, "DEU"),
        SigningKey.generate("x"),
    ),
    "hs256_with_the_public_key_as_secret": lambda w: hs256(
        {"alg": "HS256", "kid": w.keys["DEU"].kid},
        assertion_claims(w, "DEU"),
        w.keys["DEU"].public_pem().encode(),
    ),
    "alg_none": lambda w: raw_token(
        {"alg": "none", "kid": w.keys["DEU"].kid}, assertion_claims(w, "DEU"), b""
    ),
    "audience_as_list": lambda w: es256(
        {"alg": "ES256", "kid": w.keys["DEU"].kid},
        assertion_claims(w, "DEU", aud=[w.issuer]),
        w.keys["DEU"],
    ),
    "audience_of_another_service": lambda w: es256(
        {"alg": "ES256", "kid": w.keys["DEU"].kid},
        assertion_claims(w, "DEU", aud="https://elsewhere.example"),
        w.keys["DEU"],
    ),
    "expired": lambda w: es256(
        {"alg": "ES256", "kid": w.keys["DEU"].kid},
        assertion_claims(w, "DEU", iat=int(time.time()) - 400, exp=int(time.time()) - 100),
        w.keys["DEU"],
    ),
    "lifetime_over_five_minutes": lambda w: es256(
        {"alg": "ES256", "kid": w.keys["DEU"].kid},
        assertion_claims(w, "DEU", exp=int(time.time()) + 3600),
        w.keys["DEU"],
    ),
    "issued_in_the_future": lambda w: es256(
        {"alg": "ES256", "kid": w.keys["DEU"].kid},
        assertion_claims(w, "DEU", iat=int(time.time()) + 120, exp=int(time.time()) + 180),
        w.keys["DEU"],
    ),
    "without_jti": lambda w: es256(
        {"alg": "ES256", "kid": w.keys["DEU"].kid},
        assertion_claims(w, "DEU", jti=None),
        w.keys["DEU"],
    ),
    "without_exp": lambda w: es256(
        {"alg": "ES256", "kid": w.keys["DEU"].kid},
        assertion_claims(w, "DEU", exp=None),
        w.keys["DEU"],
    ),
    "sub_differs_from_iss": lambda w: es256(
        {"alg": "ES256", "kid": w.keys["DEU"].kid},
        assertion_claims(w, "DEU", sub="ITA.test"),
        w.keys["DEU"],
    ),
    "claims_another_clients_identity": lambda w: es256(
        {"alg": "ES256", "kid": w.keys["DEU"].kid}, assertion_claims(w, "ITA"), w.keys["DEU"]
    ),
    "kid_of_another_client": lambda w: es256(
        {"alg": "ES256", "kid": w.keys["ITA"].kid}, assertion_claims(w, "DEU"), w.keys["ITA"]
    ),
    "unknown_kid": lambda w: es256(
        {"alg": "ES256", "kid": "nope"}, assertion_claims(w, "DEU"), w.keys["DEU"]
    ),
    "typ_at_jwt": lambda w: es256(
        {"alg": "ES256", "kid": w.keys["DEU"].kid, "typ": "at+jwt"},
        assertion_claims(w, "DEU"),
        w.keys["DEU"],
    ),
    "jku_header": lambda w: es256(
        {"alg": "ES256", "kid": w.keys["DEU"].kid, "jku": "http://127.0.0.1:9/keys"},
        assertion_claims(w, "DEU"),
        w.keys["DEU"],
    ),
    "crit_header": lambda w: es256(
        {"alg": "ES256", "kid": w.keys["DEU"].kid, "crit": ["exp"]},
        assertion_claims(w, "DEU"),
        w.keys["DEU"],
    ),
    "jwe_five_parts": lambda w: "a.b.c.d.e",
    "oversized": lambda w: es256(
        {"alg": "ES256", "kid": w.keys["DEU"].kid},
        assertion_claims(w, "DEU", pad="x" * 9000),
        w.keys["DEU"],
    ),
    "garbage": lambda w: "\x00\xff not a token",
    "unknown_client": lambda w: es256(
        {"alg": "ES256", "kid": w.keys["DEU"].kid}, assertion_claims(w, "XXX"), w.keys["DEU"]
    ),
}


class TestAssertionAttacks:
    @pytest.mark.parametrize("attack", sorted(BAD_ASSERTIONS))
    def test_bad_assertion_gets_the_same_invalid_client_answer(
        self, world: World, attack: str
    ) -> None:
        response = exchange(world, BAD_ASSERTIONS[attack](world))
        assert response.status_code == 401
        assert response.json() == {
            "error": "invalid_client",
            "error_description": "Client authentication failed.",
        }

    def test_every_refused_assertion_is_audited(self, world: World) -> None:
        before = audit_count(world, "auth.token")
        exchange(world, BAD_ASSERTIONS["alg_none"](world))
        assert audit_count(world, "auth.token") == before + 1

    def test_replayed_assertion_is_refused(self, world: World) -> None:
        assertion = world.assertion("DEU")
        assert exchange(world, assertion).status_code == 200
        assert exchange(world, assertion).status_code == 401

    def test_concurrent_uses_of_one_assertion_yield_one_token(self, world: World) -> None:
        assertion = world.assertion("DEU")
        statuses: list[int] = []
        barrier = threading.Barrier(6)

        def use() -> None:
            barrier.wait()
            statuses.append(exchange(world, assertion).status_code)

        threads = [threading.Thread(target=use) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(statuses) == [200, 401, 401, 401, 401, 401]

    def test_an_access_token_is_not_accepted_as_an_assertion(self, world: World) -> None:
        assert exchange(world, world.token("DEU")).status_code == 401


BAD_ACCESS_TOKENS = {
    "forged_signature": lambda w: es256(
        service_header(w), access_claims(w), SigningKey.generate("x")
    ),
    "foreign_service": lambda w: es256(
        service_header(w, kid="other"), access_claims(w), SigningKey.generate("other")
    ),
    "hs256_with_jwks_key": lambda w: hs256(
        service_header(w, alg="HS256"),
        access_claims(w),
        json.dumps(w.http.get("/.well-known/jwks.json").json()["keys"][0]).encode(),
    ),
    "hs256_with_public_pem": lambda w: hs256(
        service_header(w, alg="HS256"), access_claims(w), w.state.signing_key.public_pem().encode()
    ),
    "alg_none": lambda w: raw_token(service_header(w, alg="none"), access_claims(w), b""),
    "expired": lambda w: es256(
        service_header(w),
        access_claims(w, iat=int(time.time()) - 1000, exp=int(time.time()) - 60),
        w.state.signing_key,
    ),
    "ten_year_lifetime": lambda w: es256(
        service_header(w),
        access_claims(w, exp=int(time.time()) + 10 * 365 * 86400),
        w.state.signing_key,
    ),
    "no_exp": lambda w: es256(service_header(w), access_claims(w, exp=None), w.state.signing_key),
    "no_aud": lambda w: es256(service_header(w), access_claims(w, aud=None), w.state.signing_key),
    "aud_list": lambda w: es256(
        service_header(w), access_claims(w, aud=[api_audience(w.issuer)]), w.state.signing_key
    ),
    "aud_of_token_endpoint": lambda w: es256(
        service_header(w), access_claims(w, aud=w.issuer), w.state.signing_key
    ),
    "wrong_issuer": lambda w: es256(
        service_header(w), access_claims(w, iss="http://evil.test"), w.state.signing_key
    ),
    "typ_jwt": lambda w: es256(service_header(w, typ="JWT"), access_claims(w), w.state.signing_key),
    "no_typ": lambda w: es256(service_header(w, typ=None), access_claims(w), w.state.signing_key),
    "future_iat": lambda w: es256(
        service_header(w),
        access_claims(w, iat=int(time.time()) + 300, exp=int(time.time()) + 600),
        w.state.signing_key,
    ),
    "unknown_kid": lambda w: es256(
        service_header(w, kid="nope"), access_claims(w), w.state.signing_key
    ),
    "jwk_header": lambda w: es256(
        service_header(w, jwk=w.state.signing_key.public_jwk()),
        access_claims(w),
        w.state.signing_key,
    ),
    "x5u_header": lambda w: es256(
        service_header(w, x5u="http://127.0.0.1:9/c"), access_claims(w), w.state.signing_key
    ),
    "client_assertion_used_as_access_token": lambda w: w.assertion("DEU"),
    "member_claim_of_another_member": lambda w: es256(
        service_header(w), access_claims(w, member="ITA"), w.state.signing_key
    ),
    "oversized": lambda w: es256(
        service_header(w), access_claims(w, pad="y" * 9000), w.state.signing_key
    ),
    "nested": lambda w: es256(service_header(w), {"token": w.token("DEU")}, w.state.signing_key),
    "empty": lambda w: "",
    "garbage": lambda w: "....",
}


class TestAccessTokenAttacks:
    @pytest.mark.parametrize("attack", sorted(BAD_ACCESS_TOKENS))
    def test_bad_access_token_gets_the_same_401(self, world: World, attack: str) -> None:
        token = BAD_ACCESS_TOKENS[attack](world)
        response = world.http.get("/v1/reports", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json() == {
            "type": "https://tearline.invalid/problems/unauthorized",
            "title": "Unauthorized",
            "status": 401,
            "detail": "The access token is missing, invalid or expired.",
        }

    def test_a_self_signed_token_with_the_service_key_is_accepted(self, world: World) -> None:
        # The control for the table above: the same construction with nothing wrong passes.
        token = es256(service_header(world), access_claims(world), world.state.signing_key)
        response = world.http.get("/v1/reports", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200

    def test_each_rejected_token_is_audited(self, world: World) -> None:
        before = audit_count(world, "auth.reject")
        world.http.get("/v1/reports", headers={"Authorization": "Bearer nope"})
        assert audit_count(world, "auth.reject") == before + 1

    def test_identity_headers_change_nothing(self, world: World) -> None:
        created = world.submit("USA", releasable_to=["USA"], summary=None)
        response = world.http.get(
            f"/v1/reports/{created['id']}",
            headers={
                **world.headers("NZL"),
                "X-Member": "USA",
                "X-Forwarded-For": "127.0.0.1",
                "X-Client-Id": "USA.test",
            },
        )
        assert response.status_code == 404


class TestRevocation:
    def test_revoked_client_is_refused_at_once_with_an_unexpired_token(
        self, fresh_world: World
    ) -> None:
        world = fresh_world
        headers = world.headers("DEU")
        assert world.http.get("/v1/reports", headers=headers).status_code == 200
        with transaction(world.state.sessionmaker) as session:
            revoke_client(session, "DEU.test")
        assert world.http.get("/v1/reports", headers=headers).status_code == 401
        assert world.request_token("DEU").status_code == 401
