"""Tests for app.kit.jwt: every gap of python-jose 3.5 named in spec/security.md stays closed.

Tokens under attack are forged by hand (header and payload JSON written byte for byte, signatures
computed with `cryptography` or `hmac`), so each test controls exactly what reaches the verifier.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import http.server
import json
import re
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jose import jwe as jose_jwe
from jose import jws as jose_jws

from app.kit import jwt as kit_jwt
from app.kit.jwt import (
    MAX_TOKEN_BYTES,
    SigningKey,
    TokenError,
    VerificationKey,
    jwks,
    peek_unverified,
    sign,
    verify,
    verify_signed_statement,
)

NOW = 1_700_000_000
AUDIENCE = "https://tearline.example"
CLIENT = "ITA.liaison"

CLIENT_A = SigningKey.generate("client-a-1")
CLIENT_B = SigningKey.generate("client-b-1")
IMPOSTOR_A = SigningKey.generate("client-a-1")  # same kid as CLIENT_A, different private key
RSA_PRIVATE = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_KEY = VerificationKey(kid="client-r-1", alg="RS256", public_key=RSA_PRIVATE.public_key())
P384_PRIVATE = ec.generate_private_key(ec.SECP384R1())
P521_PRIVATE = ec.generate_private_key(ec.SECP521R1())

KEYS: dict[str, VerificationKey] = {
    CLIENT_A.kid: CLIENT_A.verification_key(),
    CLIENT_B.kid: CLIENT_B.verification_key(),
    RSA_KEY.kid: RSA_KEY,
}

DROP = object()
FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,  # tests write nothing into the working tree
    suppress_health_check=[HealthCheck.too_slow],
)


# ------------------------------------------------------------------------------------ helpers


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": CLIENT,
        "sub": CLIENT,
        "aud": AUDIENCE,
        "iat": NOW,
        "exp": NOW + 120,
        "jti": "8b1c5c1e-2f0b-4a7e-9a57-3c2f1a1b0c0d",
    }
    for name, value in overrides.items():
        if value is DROP:
            base.pop(name, None)
        else:
            base[name] = value
    return base


def header(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"alg": "ES256", "kid": CLIENT_A.kid, "typ": "at+jwt"}
    for name, value in overrides.items():
        if value is DROP:
            base.pop(name, None)
        else:
            base[name] = value
    return base


Signer = Callable[[bytes], bytes]


def es_signer(private_key: ec.EllipticCurvePrivateKey, digest: hashes.HashAlgorithm) -> Signer:
    size = (private_key.curve.key_size + 7) // 8

    def _sign(signing_input: bytes) -> bytes:
        r, s = decode_dss_signature(private_key.sign(signing_input, ec.ECDSA(digest)))
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")

    return _sign


def rs_signer(private_key: rsa.RSAPrivateKey, *, pss: bool = False) -> Signer:
    def _sign(signing_input: bytes) -> bytes:
        pad: padding.AsymmetricPadding = (
            padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
            if pss
            else padding.PKCS1v15()
        )
        return private_key.sign(signing_input, pad, hashes.SHA256())

    return _sign


def hs_signer(secret: bytes, digest: str = "sha256") -> Signer:
    return lambda signing_input: hmac.new(secret, signing_input, digest).digest()


A_SIGNS = es_signer(CLIENT_A.private_key, hashes.SHA256())


def forge(
    head: dict[str, Any] | bytes | None = None,
    body: dict[str, Any] | bytes | None = None,
    signer: Signer = A_SIGNS,
) -> str:
    """A compact JWS built byte for byte; header and payload may be raw JSON bytes."""
    head_bytes = head if isinstance(head, bytes) else compact(header() if head is None else head)
    body_bytes = body if isinstance(body, bytes) else compact(claims() if body is None else body)
    signing_input = f"{b64(head_bytes)}.{b64(body_bytes)}".encode("ascii")
    return f"{signing_input.decode('ascii')}.{b64(signer(signing_input))}"


def check(token: Any, **options: Any) -> dict[str, Any]:
    """verify() as the access-token path calls it, at a fixed clock."""
    arguments: dict[str, Any] = {
        "keys": KEYS,
        "typ": "at+jwt",
        "audience": AUDIENCE,
        "max_lifetime": 900,
        "now": NOW,
    }
    arguments.update(options)
    return verify(token, **arguments)


def check_assertion(token: Any, **options: Any) -> dict[str, Any]:
    """verify() as the client-assertion path calls it."""
    arguments: dict[str, Any] = {
        "typ": "JWT",
        "allow_missing_typ": True,
        "max_lifetime": 300,
        "issuer": CLIENT,
        "require_sub_equals_iss": True,
    }
    arguments.update(options)
    return check(token, **arguments)


def rejected(token: Any, reason: str | None = None, **options: Any) -> TokenError:
    with pytest.raises(TokenError) as caught:
        check(token, **options)
    error = caught.value
    assert str(error) == "invalid token"
    if reason is not None:
        assert error.reason == reason
    return error


def access_token(**overrides: Any) -> str:
    return sign(claims(**overrides), CLIENT_A, typ="at+jwt")


# --------------------------------------------------------------------------------- round trip


class TestRoundTrip:
    def test_signed_access_token_verifies_and_returns_its_claims(self) -> None:
        assert check(access_token()) == claims()

    def test_signed_token_header_holds_exactly_alg_kid_and_typ(self) -> None:
        head, _ = peek_unverified(access_token())
        assert head == {"alg": "ES256", "kid": CLIENT_A.kid, "typ": "at+jwt"}

    def test_rs256_client_assertion_verifies_with_pinned_rsa_key(self) -> None:
        token = forge(
            header(alg="RS256", kid=RSA_KEY.kid, typ="JWT"), signer=rs_signer(RSA_PRIVATE)
        )
        assert check_assertion(token) == claims()

    def test_assertion_without_typ_verifies_when_the_caller_allows_it(self) -> None:
        assert check_assertion(forge(header(typ=DROP))) == claims()

    @pytest.mark.parametrize("typ", ["JWT", "jwt", "application/jwt", "Application/JWT"])
    def test_assertion_typ_jwt_verifies_in_any_case_and_with_media_type_prefix(
        self, typ: str
    ) -> None:
        assert check_assertion(forge(header(typ=typ))) == claims()

    @pytest.mark.parametrize("typ", ["at+jwt", "AT+JWT", "application/at+jwt"])
    def test_access_token_typ_verifies_in_any_case_and_with_media_type_prefix(
        self, typ: str
    ) -> None:
        assert check(forge(header(typ=typ))) == claims()

    def test_assertion_made_by_python_jose_itself_verifies(self) -> None:
        private_pem = CLIENT_A.private_pem()
        token = jose_jws.sign(
            compact(claims()), private_pem, headers={"kid": CLIENT_A.kid}, algorithm="ES256"
        )
        assert check_assertion(token) == claims()

    def test_callable_resolver_is_accepted_like_a_mapping(self) -> None:
        assert check(access_token(), keys=KEYS.get) == claims()

    def test_token_within_leeway_after_exp_still_verifies(self) -> None:
        assert check(access_token(exp=NOW - 29, iat=NOW - 100))["exp"] == NOW - 29

    def test_fractional_numeric_dates_are_accepted(self) -> None:
        assert check(access_token(iat=NOW + 0.5, exp=NOW + 60.25))["exp"] == NOW + 60.25

    def test_past_nbf_is_accepted(self) -> None:
        assert check(access_token(nbf=NOW - 10))["nbf"] == NOW - 10

    def test_reloaded_private_pem_signs_tokens_the_original_public_key_accepts(self) -> None:
        reloaded = SigningKey.from_pem(CLIENT_A.kid, CLIENT_A.private_pem())
        assert check(sign(claims(), reloaded, typ="at+jwt")) == claims()

    def test_token_of_exactly_the_size_limit_verifies(self) -> None:
        token, key = exactly_sized_token(MAX_TOKEN_BYTES)
        assert len(token.encode("ascii")) == MAX_TOKEN_BYTES
        assert check(token, keys={key.kid: key})["pad"].startswith("x")


def exactly_sized_token(size: int) -> tuple[str, VerificationKey]:
    # base64 cannot produce every length, so vary the kid until one filler lands exactly on size.
    for kid in ("s", "s1", "s12", "s123"):
        key = SigningKey(kid=kid, private_key=CLIENT_A.private_key)
        for filler in range(size * 3 // 4 - 300, size):
            token = sign(claims(pad="x" * filler), key, typ="at+jwt")
            if len(token) == size:
                return token, key.verification_key()
            if len(token) > size:
                break
    raise AssertionError("no filler length yields that size")  # pragma: no cover


# ------------------------------------------------------------------------ algorithm confusion


def public_key_encodings(public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> list[bytes]:
    pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return [pem, pem.strip(), der, pem.decode("ascii").replace("\n", "").encode("ascii")]


EC_SECRETS = [
    *public_key_encodings(CLIENT_A.private_key.public_key()),
    json.dumps(CLIENT_A.public_jwk()).encode("utf-8"),
    compact(CLIENT_A.public_jwk()),
    CLIENT_A.private_key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    ),
]
RSA_SECRETS = [
    *public_key_encodings(RSA_PRIVATE.public_key()),
    RSA_PRIVATE.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
    ),
]


class TestAlgorithmConfusion:
    @pytest.mark.parametrize("secret", EC_SECRETS, ids=lambda _: "encoding")
    @pytest.mark.parametrize(("alg", "digest"), [("HS256", "sha256"), ("HS512", "sha512")])
    def test_hmac_token_keyed_with_the_ec_public_key_is_rejected(
        self, secret: bytes, alg: str, digest: str
    ) -> None:
        token = forge(header(alg=alg), signer=hs_signer(secret, digest))
        rejected(token, "alg_not_allowed")

    @pytest.mark.parametrize("secret", RSA_SECRETS, ids=lambda _: "encoding")
    def test_hs256_token_signed_with_the_rsa_public_key_is_rejected(self, secret: bytes) -> None:
        token = forge(header(alg="HS256", kid=RSA_KEY.kid), signer=hs_signer(secret))
        rejected(token, "alg_not_allowed")

    @pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
    def test_unsigned_token_with_empty_signature_is_rejected(self, alg: str) -> None:
        token = forge(header(alg=alg), signer=lambda _: b"").rstrip(".") + "."
        rejected(token, "malformed")

    @pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
    def test_unsigned_token_with_some_signature_bytes_is_rejected(self, alg: str) -> None:
        rejected(forge(header(alg=alg), signer=lambda _: b"\x00"), "alg_not_allowed")

    def test_rs256_header_on_an_ec_kid_is_rejected(self) -> None:
        rejected(forge(header(alg="RS256"), signer=rs_signer(RSA_PRIVATE)), "alg_mismatch")

    def test_es256_header_on_an_rsa_kid_is_rejected(self) -> None:
        rejected(forge(header(kid=RSA_KEY.kid)), "alg_mismatch")

    @pytest.mark.parametrize(
        ("alg", "signer"),
        [
            ("ES384", es_signer(P384_PRIVATE, hashes.SHA384())),
            ("ES512", es_signer(P521_PRIVATE, hashes.SHA512())),
            ("ES384", es_signer(CLIENT_A.private_key, hashes.SHA384())),
            ("PS256", rs_signer(RSA_PRIVATE, pss=True)),
            ("RS512", rs_signer(RSA_PRIVATE)),
            ("EdDSA", A_SIGNS),
            ("es256", A_SIGNS),
            ("ES256 ", A_SIGNS),
        ],
    )
    def test_algorithm_outside_the_pinned_pair_is_rejected(self, alg: str, signer: Signer) -> None:
        rejected(forge(header(alg=alg), signer=signer), "alg_not_allowed")

    @pytest.mark.parametrize("alg", [DROP, None, ["ES256"], {"alg": "ES256"}, 256, True])
    def test_missing_or_non_string_alg_is_rejected(self, alg: object) -> None:
        rejected(forge(header(alg=alg)), "alg_not_allowed")

    def test_ps256_signature_under_rs256_header_is_rejected(self) -> None:
        token = forge(header(alg="RS256", kid=RSA_KEY.kid), signer=rs_signer(RSA_PRIVATE, pss=True))
        rejected(token, "bad_signature")


class TestKeyConstruction:
    def test_rs256_key_refuses_an_ec_public_key(self) -> None:
        with pytest.raises(ValueError, match="RSA"):
            VerificationKey.from_pem("k", "RS256", CLIENT_A.public_pem())

    def test_es256_key_refuses_an_rsa_public_key(self) -> None:
        pem = RSA_PRIVATE.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        with pytest.raises(ValueError, match="P-256"):
            VerificationKey.from_pem("k", "ES256", pem)

    @pytest.mark.parametrize("private_key", [P384_PRIVATE, P521_PRIVATE])
    def test_es256_key_refuses_other_curves(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        pem = private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        with pytest.raises(ValueError, match="P-256"):
            VerificationKey.from_pem("k", "ES256", pem)

    def test_rs256_key_refuses_rsa_keys_under_2048_bits(self) -> None:
        weak = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()  # noqa: S505 - weak on purpose
        with pytest.raises(ValueError, match="2048"):
            VerificationKey(kid="k", alg="RS256", public_key=weak)

    @pytest.mark.parametrize("alg", ["HS256", "none", "ES384", "PS256"])
    def test_verification_key_refuses_any_other_algorithm(self, alg: Any) -> None:
        with pytest.raises(ValueError, match="alg"):
            VerificationKey(kid="k", alg=alg, public_key=CLIENT_A.private_key.public_key())

    @pytest.mark.parametrize(
        "pem", [CLIENT_A.private_pem(), "secret", b"", "-----BEGIN PUBLIC KEY-----\nAAAA\n"]
    )
    def test_from_pem_refuses_anything_but_a_public_key_pem(self, pem: str | bytes) -> None:
        with pytest.raises(ValueError, match="PEM"):
            VerificationKey.from_pem("k", "ES256", pem)

    def test_from_pem_refuses_other_key_types(self) -> None:
        pem = (
            ed25519.Ed25519PrivateKey.generate()
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        with pytest.raises(ValueError, match="only EC P-256 and RSA"):
            VerificationKey.from_pem("k", "ES256", pem)

    def test_signing_key_refuses_any_algorithm_but_es256(self) -> None:
        with pytest.raises(ValueError, match="ES256 only"):
            SigningKey(kid="k", private_key=CLIENT_A.private_key, alg="RS256")  # type: ignore[arg-type]

    def test_from_jwk_builds_a_key_that_verifies_the_owners_tokens(self) -> None:
        key = VerificationKey.from_jwk(CLIENT_A.kid, "ES256", CLIENT_A.public_jwk())
        assert check(access_token(), keys={key.kid: key}) == claims()

    def test_from_jwk_builds_an_rsa_key(self) -> None:
        numbers = RSA_PRIVATE.public_key().public_numbers()
        jwk = {
            "kty": "RSA",
            "n": b64(numbers.n.to_bytes(256, "big")),
            "e": b64(numbers.e.to_bytes(3, "big")),
        }
        key = VerificationKey.from_jwk("rsa-1", "RS256", jwk)
        assert isinstance(key.public_key, rsa.RSAPublicKey)

    @pytest.mark.parametrize(
        "jwk",
        [
            {"kty": "oct", "k": b64(b"secret")},
            {**CLIENT_A.public_jwk(), "crv": "P-384"},
            {**CLIENT_A.public_jwk(), "kty": "RSA"},
            {**CLIENT_A.public_jwk(), "alg": "HS256"},
            {**CLIENT_A.public_jwk(), "kid": "someone-else"},
            {**CLIENT_A.public_jwk(), "use": "enc"},
            {**CLIENT_A.public_jwk(), "d": b64(b"\x01" * 32)},
            {**CLIENT_A.public_jwk(), "y": CLIENT_A.public_jwk()["x"]},  # not on the curve
            {**CLIENT_A.public_jwk(), "x": b64(b"\x01" * 31)},
            {**CLIENT_A.public_jwk(), "x": "not base64!"},
            {**CLIENT_A.public_jwk(), "x": 12},
            {"kty": "EC", "crv": "P-256"},
        ],
    )
    def test_from_jwk_refuses_keys_that_do_not_fit_es256(self, jwk: dict[str, Any]) -> None:
        with pytest.raises(ValueError, match="JWK"):
            VerificationKey.from_jwk(CLIENT_A.kid, "ES256", jwk)

    def test_from_jwk_refuses_an_ec_jwk_for_rs256(self) -> None:
        with pytest.raises(ValueError, match="JWK"):
            VerificationKey.from_jwk("k", "RS256", {**CLIENT_A.public_jwk(), "alg": "RS256"})

    @pytest.mark.parametrize("kid", ["", "../x", "a/b", "k\x00", "k ey", ".hidden", "k" * 129, 7])
    def test_keys_refuse_kids_that_could_never_be_looked_up_safely(self, kid: Any) -> None:
        with pytest.raises(ValueError, match="kid"):
            VerificationKey(kid=kid, alg="ES256", public_key=CLIENT_A.private_key.public_key())
        with pytest.raises(ValueError, match="kid"):
            SigningKey(kid=kid, private_key=CLIENT_A.private_key)


# ------------------------------------------------------------------------------------ key ids


class TestKid:
    def test_token_without_kid_is_rejected(self) -> None:
        rejected(forge(header(kid=DROP)), "missing_kid")

    @pytest.mark.parametrize("kid", ["client-a-2", "CLIENT-A-1", "client-a-1 ", "client", "x"])
    def test_unknown_kid_is_rejected(self, kid: str) -> None:
        rejected(forge(header(kid=kid)), "unknown_kid" if kid.strip() == kid else "bad_kid")

    def test_other_clients_kid_is_rejected_when_only_the_claimed_clients_keys_are_offered(
        self,
    ) -> None:
        client_a_keys = {CLIENT_A.kid: CLIENT_A.verification_key()}
        token = forge(
            header(kid=CLIENT_B.kid), signer=es_signer(CLIENT_B.private_key, hashes.SHA256())
        )
        assert check(token) == claims()  # valid in general...
        rejected(token, "unknown_kid", keys=client_a_keys)  # ...but not as client A

    @pytest.mark.parametrize(
        "kid",
        [
            "../x",
            "../../etc/passwd",
            "..\\x",
            "a/b",
            "x' OR '1'='1",
            "client-a-1\x00",
            "\x00",
            "client-a-1\n",
            "kïd",
            "",
            "k" * 129,
            "%2e%2e%2fx",
            "${jndi:ldap://x}",
        ],
    )
    def test_injected_kid_is_rejected_before_the_resolver_sees_it(self, kid: str) -> None:
        seen: list[str] = []

        def resolver(value: str) -> VerificationKey | None:
            seen.append(value)
            return KEYS.get(value)

        rejected(forge(header(kid=kid)), "bad_kid", keys=resolver)
        assert seen == []

    @pytest.mark.parametrize("kid", [None, 1, ["client-a-1"], {"kid": "client-a-1"}, True])
    def test_non_string_kid_is_rejected(self, kid: object) -> None:
        rejected(forge(header(kid=kid)), "bad_kid")

    def test_resolver_answering_with_a_key_of_another_kid_is_not_trusted(self) -> None:
        # e.g. a case-insensitive collation returning "client-a-1" for "CLIENT-A-1"
        token = forge(header(kid="CLIENT-A-1"))
        rejected(token, "unknown_kid", keys=lambda _: KEYS[CLIENT_A.kid])

    def test_resolver_returning_something_other_than_a_key_is_rejected(self) -> None:
        rejected(access_token(), "unknown_kid", keys=lambda _: CLIENT_A.public_pem())

    def test_resolver_that_raises_gives_the_same_opaque_error(self) -> None:
        def broken(_: str) -> VerificationKey | None:
            raise RuntimeError("database is down")

        rejected(access_token(), "internal", keys=broken)


# ------------------------------------------------------------------------------------- typ


class TestTyp:
    def test_access_token_without_typ_is_rejected(self) -> None:
        rejected(forge(header(typ=DROP)), "missing_typ")

    @pytest.mark.parametrize(
        "typ",
        ["JWT", "jwt", "dpop+jwt", "at+jwt ", " at+jwt", "at+JWT\x00", "application/at+jwt/x", ""],
    )
    def test_access_token_with_another_typ_is_rejected(self, typ: str) -> None:
        rejected(forge(header(typ=typ)), "wrong_typ")

    @pytest.mark.parametrize("typ", [None, ["at+jwt"], 1, {"typ": "at+jwt"}])
    def test_non_string_typ_is_rejected(self, typ: object) -> None:
        rejected(forge(header(typ=typ)), "wrong_typ")

    @pytest.mark.parametrize("typ", ["at+jwt", "AT+JWT", "application/at+jwt", "JOSE", "JWS"])
    def test_access_token_is_refused_as_a_client_assertion(self, typ: str) -> None:
        with pytest.raises(TokenError) as caught:
            check_assertion(forge(header(typ=typ)))
        assert caught.value.reason == "wrong_typ"

    def test_signed_access_token_is_refused_as_a_client_assertion(self) -> None:
        with pytest.raises(TokenError):
            check_assertion(access_token())

    def test_client_assertion_is_refused_as_an_access_token(self) -> None:
        assertion = sign(claims(), CLIENT_A, typ="JWT")
        assert check_assertion(assertion) == claims()
        rejected(assertion, "wrong_typ")

    def test_assertion_without_typ_is_refused_as_an_access_token(self) -> None:
        rejected(forge(header(typ=DROP)), "missing_typ")

    def test_missing_typ_can_never_be_allowed_for_access_tokens(self) -> None:
        with pytest.raises(ValueError, match="at\\+jwt"):
            check(access_token(), allow_missing_typ=True)


# -------------------------------------------------------------------------- forbidden headers


FORBIDDEN_HEADERS: dict[str, Any] = {
    "crit": ["exp"],
    "jku": "https://attacker.example/jwks.json",
    "x5u": "https://attacker.example/cert.pem",
    "jwk": CLIENT_B.public_jwk(),
    "x5c": ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"],
    "x5t": b64(hashlib.sha1(b"cert").digest()),  # noqa: S324 - a thumbprint value, not a hash use
    "x5t#S256": b64(hashlib.sha256(b"cert").digest()),
    "zip": "DEF",
    "enc": "A256GCM",
    "cty": "JWT",
    "b64": False,
}


class TestForbiddenHeaders:
    @pytest.mark.parametrize(("name", "value"), FORBIDDEN_HEADERS.items())
    def test_validly_signed_token_carrying_a_forbidden_header_is_rejected(
        self, name: str, value: Any
    ) -> None:
        rejected(forge(header(**{name: value})), "forbidden_header")

    @pytest.mark.parametrize(("name", "value"), FORBIDDEN_HEADERS.items())
    def test_forbidden_header_is_rejected_even_when_empty(self, name: str, value: Any) -> None:
        rejected(forge(header(**{name: None})), "forbidden_header")

    @pytest.mark.parametrize("name", ["foo", "url", "nonce", "x5t#s256", "Kid", "ALG"])
    def test_unknown_header_parameter_is_rejected(self, name: str) -> None:
        rejected(forge(header(**{name: "x"})), "unknown_header")

    def test_embedded_jwk_of_the_signer_does_not_make_its_token_valid(self) -> None:
        # The classic: the attacker signs with its own key and ships the public half in `jwk`.
        token = forge(
            header(kid=CLIENT_A.kid, jwk=CLIENT_B.public_jwk()),
            signer=es_signer(CLIENT_B.private_key, hashes.SHA256()),
        )
        rejected(token, "forbidden_header")

    def test_duplicate_header_member_is_rejected(self) -> None:
        raw = b'{"alg":"ES256","kid":"client-a-1","typ":"at+jwt","alg":"HS256"}'
        rejected(forge(raw), "bad_header")


class _RecordingHandler(http.server.BaseHTTPRequestHandler):
    hits: list[str]

    def do_GET(self) -> None:
        self.hits.append(self.path)
        body = json.dumps({"keys": [CLIENT_B.public_jwk()]}).encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class TestNoNetwork:
    @pytest.fixture
    def key_server(self) -> Iterator[tuple[str, list[str]]]:
        hits: list[str] = []
        handler = type("Handler", (_RecordingHandler,), {"hits": hits})
        server = http.server.HTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}", hits
        finally:
            server.shutdown()
            server.server_close()
            thread.join()

    @pytest.fixture
    def no_sockets(self, monkeypatch: pytest.MonkeyPatch) -> list[object]:
        attempts: list[object] = []

        def refuse(*args: object, **kwargs: object) -> None:
            attempts.append(args)
            raise AssertionError("the verifier tried to reach the network")

        monkeypatch.setattr(socket.socket, "connect", refuse)
        monkeypatch.setattr(socket.socket, "connect_ex", refuse)
        monkeypatch.setattr(socket, "create_connection", refuse)
        monkeypatch.setattr(socket, "getaddrinfo", refuse)
        return attempts

    @pytest.mark.parametrize("name", ["jku", "x5u"])
    def test_key_url_in_header_is_never_fetched(
        self, name: str, key_server: tuple[str, list[str]]
    ) -> None:
        base, hits = key_server
        signer = es_signer(CLIENT_B.private_key, hashes.SHA256())
        for kid in (CLIENT_A.kid, "attacker-1"):
            token = forge(header(kid=kid, **{name: f"{base}/{name}"}), signer=signer)
            rejected(token, "forbidden_header")
            with pytest.raises(TokenError):
                peek_unverified(token)
        assert hits == []

    def test_verification_opens_no_socket_whatever_the_header_says(
        self, no_sockets: list[object]
    ) -> None:
        tokens = [forge(header(**{name: value})) for name, value in FORBIDDEN_HEADERS.items()]
        tokens += [access_token(), forge(header(kid="unknown-kid"))]
        for token in tokens:
            with contextlib.suppress(TokenError):
                check(token)
        assert no_sockets == []


# ---------------------------------------------------------------------- structure and encoding


def real_jwe() -> str:
    pem = RSA_PRIVATE.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    token: bytes = jose_jwe.encrypt(
        compact(claims()), pem, encryption="A256GCM", algorithm="RSA-OAEP-256"
    )
    return token.decode("ascii")


VALID = access_token()
VALID_HEAD, VALID_BODY, VALID_SIG = VALID.split(".")


class TestStructure:
    def test_real_jwe_is_rejected(self) -> None:
        rejected(real_jwe(), "jwe")

    @pytest.mark.parametrize(
        "token",
        [
            f"{b64(compact({'alg': 'dir', 'enc': 'A256GCM'}))}..AAAA.BBBB.CCCC",
            f"{VALID_HEAD}.{VALID_BODY}.{VALID_SIG}.{VALID_SIG}.{VALID_SIG}",
            f"{b64(compact({'alg': 'RSA-OAEP-256', 'enc': 'A256GCM'}))}.a.b.c.d",
        ],
    )
    def test_five_part_jwe_input_is_rejected(self, token: str) -> None:
        rejected(token, "jwe")

    def test_nested_jwt_as_payload_is_rejected(self) -> None:
        rejected(forge(body=access_token().encode("ascii")), "nested")

    def test_nested_jwt_declared_by_cty_is_rejected(self) -> None:
        token = forge(header(cty="JWT"), body=access_token().encode("ascii"))
        rejected(token, "nested")

    def test_nested_jwe_as_payload_is_rejected(self) -> None:
        rejected(forge(body=real_jwe().encode("ascii")), "nested")

    @pytest.mark.parametrize(
        "token",
        [
            "",
            ".",
            "..",
            "...",
            VALID_HEAD,
            f"{VALID_HEAD}.{VALID_BODY}",
            f"{VALID_HEAD}.{VALID_BODY}.",
            f"{VALID_HEAD}..{VALID_SIG}",
            f".{VALID_BODY}.{VALID_SIG}",
            f"{VALID}.",
            f".{VALID}",
            f"{VALID}.{VALID_SIG}",
            f"{VALID_HEAD}.{VALID_BODY}.{VALID_SIG}.{VALID_SIG}.{VALID_SIG}.{VALID_SIG}",
            f"{VALID}\n",
            f" {VALID}",
            f"Bearer {VALID}",
            VALID.replace(".", ". ", 1),
            f"{VALID_HEAD}=.{VALID_BODY}.{VALID_SIG}",
            f"{VALID_HEAD}.{VALID_BODY}==.{VALID_SIG}",
            f"{VALID_HEAD[:-2]}+/.{VALID_BODY}.{VALID_SIG}",
            f"{VALID_HEAD}.{VALID_BODY[:-2]}+/.{VALID_SIG}",
            f"{VALID_HEAD}.{VALID_BODY}.{VALID_SIG}\x00",
            f"{VALID_HEAD}.{VALID_BODY}.{VALID_SIG[:-1]}é",
            json.dumps({"protected": VALID_HEAD, "payload": VALID_BODY, "signature": VALID_SIG}),
        ],
    )
    def test_malformed_compact_serialisation_is_rejected(self, token: str) -> None:
        rejected(token, "malformed")

    @pytest.mark.parametrize("segment", ["A", "AAAAA", "AAAAAAAAA"])
    def test_segment_whose_length_no_base64_can_have_is_rejected(self, segment: str) -> None:
        rejected(f"{segment}.{VALID_BODY}.{VALID_SIG}", "malformed")
        rejected(f"{VALID_HEAD}.{segment}.{VALID_SIG}", "malformed")
        rejected(f"{VALID_HEAD}.{VALID_BODY}.{segment}", "malformed")

    def test_non_canonical_base64_trailing_bits_are_rejected(self) -> None:
        # "e30" is "{}"; "e31" decodes to the same bytes with stray low bits set.
        raw = b'{"alg":"ES256","kid":"client-a-1","typ":"at+jwt"}'
        segment = b64(raw)
        assert len(segment) % 4 != 0
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        last = alphabet.index(segment[-1])
        tweaked = segment[:-1] + alphabet[last | 1 if last % 2 == 0 else last & ~1]
        assert base64.urlsafe_b64decode(tweaked + "=" * (-len(tweaked) % 4)) == raw
        rejected(f"{tweaked}.{VALID_BODY}.{VALID_SIG}", "malformed")

    @pytest.mark.parametrize(
        "raw",
        [
            b"not json",
            b"[]",
            b'["ES256","client-a-1"]',
            b'"ES256"',
            b"42",
            b"null",
            b"true",
            b"{",
            b'{"alg":"ES256",}',
            b"\xef\xbb\xbf" + compact(header()),
            b"\xff\xfe" + compact(header()),
            compact(header()) + b"\x00",
            b'{"alg":"ES256","kid":"client-a-1","typ":"at+jwt","n":NaN}',
            b"[" * 2500 + b"]" * 2500,
            b'{"a":[' * 700 + b"1" + b"]}" * 700,
        ],
    )
    def test_header_that_is_not_a_json_object_is_rejected(self, raw: bytes) -> None:
        rejected(forge(raw), "bad_header")

    @pytest.mark.parametrize(
        "raw",
        [
            b"[]",
            compact([claims()]),
            b'"claims"',
            b"1700000000",
            b"null",
            b"",
            b"\x80\x81",
            compact(claims()) + b"garbage",
            b'{"iss":"a","iss":"b"}',
            b"[" * 2500 + b"]" * 2500,
            b'{"a":[' * 700 + b"1" + b"]}" * 700,
        ],
    )
    def test_payload_that_is_not_a_json_object_is_rejected(self, raw: bytes) -> None:
        token = forge(body=raw)
        rejected(token, "malformed" if raw == b"" else "bad_payload")

    def test_duplicate_claim_is_rejected_even_when_signed(self) -> None:
        raw = compact(claims())[:-1] + b',"aud":"https://attacker.example"}'
        rejected(forge(body=raw), "bad_payload")

    @pytest.mark.parametrize("token", [None, 42, b"x.y.z", VALID.encode("ascii"), ["a", "b", "c"]])
    def test_non_string_input_is_rejected(self, token: object) -> None:
        rejected(token, "malformed")


class TestSizeCap:
    def test_token_of_8193_bytes_is_rejected_before_any_decoding(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        token = forge(body=claims(pad="x" * 5000))
        token = token + "A" * (MAX_TOKEN_BYTES + 1 - len(token))
        assert len(token) == MAX_TOKEN_BYTES + 1

        def must_not_run(*args: object, **kwargs: object) -> None:
            raise AssertionError("decoded before the size check")

        monkeypatch.setattr(kit_jwt, "_b64url_decode", must_not_run)
        monkeypatch.setattr(kit_jwt.base64, "urlsafe_b64decode", must_not_run)
        monkeypatch.setattr(kit_jwt.json, "loads", must_not_run)
        rejected(token, "too_large")
        with pytest.raises(TokenError):
            peek_unverified(token)

    @pytest.mark.parametrize("size", [MAX_TOKEN_BYTES + 1, MAX_TOKEN_BYTES * 2, 10 * 1024 * 1024])
    def test_oversized_input_of_any_shape_is_rejected(self, size: int) -> None:
        rejected("A" * size, "too_large")
        rejected(f"{VALID_HEAD}.{'A' * size}.{VALID_SIG}", "too_large")

    def test_multibyte_text_counts_in_bytes_not_characters(self) -> None:
        token = "é" + "A" * (MAX_TOKEN_BYTES - 1)
        assert len(token) == MAX_TOKEN_BYTES
        assert len(token.encode("utf-8")) > MAX_TOKEN_BYTES
        rejected(token, "malformed")

    def test_signing_refuses_to_produce_a_token_no_one_could_verify(self) -> None:
        with pytest.raises(ValueError, match="size"):
            sign(claims(pad="x" * MAX_TOKEN_BYTES), CLIENT_A, typ="at+jwt")


# -------------------------------------------------------------------------------------- claims


class TestRequiredClaims:
    @pytest.mark.parametrize("name", ["iss", "sub", "aud", "exp", "iat", "jti"])
    def test_token_missing_a_required_claim_is_rejected(self, name: str) -> None:
        rejected(access_token(**{name: DROP}), "missing_claim")

    def test_token_with_no_claims_at_all_is_rejected(self) -> None:
        rejected(forge(body={}), "missing_claim")

    @pytest.mark.parametrize("value", [None, "", 7, ["ITA.liaison"], "ITA\x00liaison", "a" * 1025])
    @pytest.mark.parametrize("name", ["iss", "sub"])
    def test_issuer_or_subject_that_is_not_clean_text_is_rejected(
        self, name: str, value: object
    ) -> None:
        rejected(access_token(**{name: value}), "bad_subject")

    @pytest.mark.parametrize(
        "jti", [None, "", 1, ["a"], {"id": "a"}, "x" * 257, "abc\x00", "abc\n", "\ud800"]
    )
    def test_unusable_jti_is_rejected(self, jti: object) -> None:
        rejected(forge(body=json.dumps(claims(jti=jti)).encode("utf-8")), "bad_jti")

    def test_jti_of_256_characters_is_accepted(self) -> None:
        assert check(access_token(jti="j" * 256))["jti"] == "j" * 256


class TestAudienceAndIssuer:
    @pytest.mark.parametrize(
        "aud",
        [
            [AUDIENCE],
            [AUDIENCE, "https://other.example"],
            ["https://other.example", AUDIENCE],
            [],
            {"aud": AUDIENCE},
            None,
            1,
        ],
    )
    def test_audience_that_is_not_a_single_string_is_rejected(self, aud: object) -> None:
        rejected(access_token(aud=aud), "wrong_audience")

    @pytest.mark.parametrize(
        "aud",
        [
            "https://other.example",
            AUDIENCE + "/",
            AUDIENCE.upper(),
            " " + AUDIENCE,
            "",
            "https://tearline.example.attacker.example",
        ],
    )
    def test_audience_that_differs_at_all_is_rejected(self, aud: str) -> None:
        rejected(access_token(aud=aud), "wrong_audience")

    @pytest.mark.parametrize("iss", ["DEU.liaison", "ita.liaison", "ITA.liaison "])
    def test_issuer_other_than_the_expected_one_is_rejected(self, iss: str) -> None:
        rejected(access_token(iss=iss), "wrong_issuer", issuer=CLIENT)

    def test_assertion_whose_subject_differs_from_its_issuer_is_rejected(self) -> None:
        with pytest.raises(TokenError) as caught:
            check_assertion(forge(header(typ="JWT"), claims(sub="DEU.liaison")))
        assert caught.value.reason == "sub_not_iss"

    def test_sub_may_differ_from_iss_when_the_caller_does_not_require_it(self) -> None:
        assert check(access_token(iss="https://tearline.example"))["sub"] == CLIENT


class TestTimes:
    def test_expired_token_is_rejected(self) -> None:
        rejected(access_token(iat=NOW - 200, exp=NOW - 31), "expired")

    def test_token_expiring_exactly_at_the_edge_of_leeway_is_rejected(self) -> None:
        rejected(access_token(iat=NOW - 200, exp=NOW - 30), "expired")

    def test_expired_token_is_rejected_without_leeway(self) -> None:
        rejected(access_token(iat=NOW - 200, exp=NOW), "expired", leeway=0)

    def test_lifetime_one_second_over_policy_is_rejected(self) -> None:
        rejected(access_token(exp=NOW + 901), "lifetime_too_long")

    def test_lifetime_exactly_at_policy_is_accepted(self) -> None:
        assert check(access_token(exp=NOW + 900))["exp"] == NOW + 900

    @pytest.mark.parametrize("years", [1, 10, 100])
    def test_long_lived_token_is_rejected(self, years: int) -> None:
        rejected(access_token(exp=NOW + years * 365 * 86400), "lifetime_too_long")

    def test_assertion_over_five_minutes_is_rejected(self) -> None:
        with pytest.raises(TokenError) as caught:
            check_assertion(forge(header(typ="JWT"), claims(exp=NOW + 301)))
        assert caught.value.reason == "lifetime_too_long"

    @pytest.mark.parametrize("exp", [NOW, NOW - 1])
    def test_exp_not_after_iat_is_rejected(self, exp: int) -> None:
        rejected(access_token(exp=exp), "lifetime_too_long")

    @pytest.mark.parametrize("iat", [NOW + 31, NOW + 3600, NOW + 10**9])
    def test_iat_in_the_future_is_rejected(self, iat: int) -> None:
        rejected(access_token(iat=iat, exp=iat + 60), "iat_in_future")

    def test_iat_in_the_future_within_leeway_is_accepted(self) -> None:
        assert check(access_token(iat=NOW + 30, exp=NOW + 90))["iat"] == NOW + 30

    @pytest.mark.parametrize("nbf", [NOW + 31, NOW + 100])
    def test_nbf_in_the_future_is_rejected(self, nbf: int) -> None:
        rejected(access_token(nbf=nbf), "not_yet_valid")

    @pytest.mark.parametrize("name", ["iat", "exp", "nbf"])
    @pytest.mark.parametrize(
        "value", [str(NOW), True, False, None, [NOW], {"t": NOW}, "2023-11-14T22:13:20Z"]
    )
    def test_numeric_date_of_the_wrong_type_is_rejected(self, name: str, value: object) -> None:
        rejected(access_token(**{name: value}), "bad_time")

    @pytest.mark.parametrize(
        ("iat", "exp"),
        [
            (NOW, 10**30),
            (-(10**30), NOW + 60),
            (NOW, 1e308),
            (-1e308, NOW + 60),
            (NOW, 2**63),
            (NOW - 2**63, NOW + 60),
        ],
    )
    def test_huge_numbers_do_not_stretch_the_lifetime(self, iat: float, exp: float) -> None:
        rejected(access_token(iat=iat, exp=exp), "lifetime_too_long")

    @pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
    @pytest.mark.parametrize("name", ["exp", "iat", "nbf", "other"])
    def test_non_finite_number_via_json_is_rejected(self, name: str, literal: str) -> None:
        placeholder = 123456789
        body = compact(claims(**{name: placeholder}))
        body = body.replace(f'"{name}":{placeholder}'.encode(), f'"{name}":{literal}'.encode())
        assert literal.encode() in body
        rejected(forge(body=body), "bad_payload")

    def test_integer_with_thousands_of_digits_is_rejected(self) -> None:
        body = compact(claims(exp=0)).replace(b'"exp":0', b'"exp":1' + b"0" * 5000)
        rejected(forge(body=body), "bad_payload")


class TestCallerMistakes:
    @pytest.mark.parametrize("leeway", [31, 300, -1, True])
    def test_leeway_beyond_thirty_seconds_is_refused(self, leeway: Any) -> None:
        with pytest.raises(ValueError, match="leeway"):
            check(access_token(), leeway=leeway)

    @pytest.mark.parametrize("max_lifetime", [0, -1, 86401, 10 * 365 * 86400, True])
    def test_unreasonable_max_lifetime_is_refused(self, max_lifetime: Any) -> None:
        with pytest.raises(ValueError, match="max_lifetime"):
            check(access_token(), max_lifetime=max_lifetime)

    @pytest.mark.parametrize(("name", "value"), [("audience", ""), ("audience", None), ("typ", "")])
    def test_missing_expectation_is_refused(self, name: str, value: object) -> None:
        with pytest.raises(ValueError, match=name):
            check(access_token(), **{name: value})


# -------------------------------------------------------------------------- signature integrity


def with_payload(token: str, body: dict[str, Any]) -> str:
    head, _, sig = token.split(".")
    return f"{head}.{b64(compact(body))}.{sig}"


class TestSignatureIntegrity:
    def test_token_signed_by_another_key_under_the_same_kid_is_rejected(self) -> None:
        rejected(sign(claims(), IMPOSTOR_A, typ="at+jwt"), "bad_signature")

    def test_token_signed_by_another_rsa_key_under_the_same_kid_is_rejected(self) -> None:
        token = forge(header(alg="RS256", kid=RSA_KEY.kid), signer=rs_signer(RSA_OTHER))
        rejected(token, "bad_signature")

    @pytest.mark.parametrize(
        "change",
        [{"sub": "DEU.liaison"}, {"exp": NOW + 600}, {"aud": AUDIENCE, "scope": "audit"}],
    )
    def test_tampered_payload_is_rejected(self, change: dict[str, Any]) -> None:
        rejected(with_payload(access_token(), claims(**change)), "bad_signature")

    def test_tampered_header_is_rejected(self) -> None:
        _, body, sig = access_token().split(".")
        head = b64(compact({"alg": "ES256", "typ": "at+jwt", "kid": CLIENT_A.kid}))  # reordered
        rejected(f"{head}.{body}.{sig}", "bad_signature")

    def test_signature_from_another_token_is_rejected(self) -> None:
        other = access_token(jti="another")
        head, body, _ = access_token().split(".")
        rejected(f"{head}.{body}.{other.split('.')[2]}", "bad_signature")

    @pytest.mark.parametrize(
        "signature",
        [
            b"\x00" * 64,
            b"\xff" * 64,
            b"\x00" * 32 + b"\x01" * 32,
            b"\x01" * 63,
            b"\x01" * 65,
            b"\x01" * 256,
            b"\x00",
        ],
    )
    def test_signature_of_arbitrary_bytes_is_rejected(self, signature: bytes) -> None:
        rejected(forge(signer=lambda _: signature), "bad_signature")

    def test_der_encoded_ecdsa_signature_is_rejected(self) -> None:
        def der_signer(data: bytes) -> bytes:
            return CLIENT_A.private_key.sign(data, ec.ECDSA(hashes.SHA256()))

        rejected(forge(signer=der_signer), "bad_signature")

    def test_truncated_rsa_signature_is_rejected(self) -> None:
        signer = rs_signer(RSA_PRIVATE)
        token = forge(header(alg="RS256", kid=RSA_KEY.kid), signer=lambda d: signer(d)[:-1])
        rejected(token, "bad_signature")


# --------------------------------------------------------------------------------- TokenError


class TestTokenError:
    def test_message_never_carries_token_contents(self) -> None:
        secret_claim = "classified-value-123"
        token = forge(body=compact(claims(jti=secret_claim))[:-1] + b',"x":NaN}')
        error = rejected(token)
        for text in (str(error), repr(error), str(error.args)):
            assert secret_claim not in text
            assert token not in text
            assert CLIENT not in text

    def test_underlying_exception_is_not_chained(self) -> None:
        error = rejected(f"{b64(b'{not json')}.{VALID_BODY}.{VALID_SIG}")
        assert error.__cause__ is None
        assert error.__suppress_context__

    def test_unexpected_exception_anywhere_becomes_token_error(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def explode(_: object) -> None:
            raise RecursionError("deep inside")

        monkeypatch.setattr(kit_jwt, "_parse", explode)
        rejected(VALID, "internal")
        for call in (
            lambda: peek_unverified(VALID),
            lambda: verify_signed_statement(VALID, keys=KEYS, typ=CHECKPOINT_TYP),
        ):
            with pytest.raises(TokenError) as caught:
                call()
            assert caught.value.reason == "internal"

    def test_every_failure_has_the_same_message(self) -> None:
        errors = [
            rejected(token)
            for token in (
                "",
                real_jwe(),
                access_token(aud="x"),
                access_token(exp=NOW - 600, iat=NOW - 700),
                sign(claims(), IMPOSTOR_A, typ="at+jwt"),
                forge(header(alg="none")),
            )
        ]
        assert {str(e) for e in errors} == {"invalid token"}
        assert {e.args for e in errors} == {("invalid token",)}


# ---------------------------------------------------------------------------------------- fuzz


def json_values() -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=8), children, max_size=4)
        ),
        max_leaves=12,
    )


def header_like() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {},
        optional={
            "alg": st.sampled_from(["ES256", "RS256", "HS256", "none"]) | st.text(max_size=6),
            "kid": st.sampled_from(list(KEYS)) | st.text(max_size=10),
            "typ": st.sampled_from(["at+jwt", "JWT"]) | json_values(),
            "crit": json_values(),
            "jku": st.text(max_size=20),
        },
    )


def claims_like() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {},
        optional={
            "iss": st.just(CLIENT) | json_values(),
            "sub": st.just(CLIENT) | json_values(),
            "aud": st.just(AUDIENCE) | json_values(),
            "exp": st.integers(NOW - 1000, NOW + 2000) | json_values(),
            "iat": st.integers(NOW - 1000, NOW + 1000) | json_values(),
            "nbf": json_values(),
            "jti": st.text(max_size=300) | json_values(),
        },
    )


def only_token_errors(call: Callable[[], object]) -> None:
    try:
        call()
    except TokenError as error:
        message = str(error)
    else:
        return
    assert message == "invalid token"


class TestFuzz:
    @FUZZ
    @given(st.text(max_size=2000))
    def test_arbitrary_text_raises_only_token_error(self, text: str) -> None:
        only_token_errors(lambda: check(text))
        only_token_errors(lambda: peek_unverified(text))

    @FUZZ
    @given(st.binary(max_size=2000))
    def test_arbitrary_bytes_raise_only_token_error(self, data: bytes) -> None:
        only_token_errors(lambda: check(data))
        only_token_errors(lambda: check(data.decode("latin-1")))

    @FUZZ
    @given(
        st.lists(st.text(alphabet="AZaz09-_.=+/ \x00", max_size=40), min_size=0, max_size=7),
    )
    def test_dotted_base64ish_segments_raise_only_token_error(self, parts: list[str]) -> None:
        only_token_errors(lambda: check(".".join(parts)))

    @FUZZ
    @given(json_values(), json_values(), st.binary(max_size=300))
    def test_any_json_header_and_payload_raise_only_token_error(
        self, head: Any, body: Any, signature: bytes
    ) -> None:
        token = f"{b64(compact(head))}.{b64(compact(body))}.{b64(signature)}"
        only_token_errors(lambda: check(token))
        only_token_errors(lambda: check_assertion(token))

    @FUZZ
    @given(header_like(), claims_like())
    def test_correctly_signed_odd_tokens_pass_only_when_every_rule_holds(
        self, head: dict[str, Any], body: dict[str, Any]
    ) -> None:
        token = forge(head, body)
        try:
            result = check(token)
        except TokenError:
            return  # the common case; that only TokenError escapes is the point of the test
        # Reaching here means the token genuinely satisfies the access-token profile.
        assert set(head) == {"alg", "kid", "typ"}
        assert (head["alg"], head["kid"], head["typ"].lower()) == ("ES256", CLIENT_A.kid, "at+jwt")
        assert result["aud"] == AUDIENCE
        assert result["iss"] == CLIENT
        assert result["sub"] == CLIENT
        assert isinstance(result["jti"], str)
        assert 0 < len(result["jti"]) <= 256
        for name in ("exp", "iat"):
            assert isinstance(result[name], int | float)
            assert not isinstance(result[name], bool)
        assert result["iat"] <= NOW + 30
        assert result["exp"] + 30 > NOW
        assert 0 < result["exp"] - result["iat"] <= 900

    @FUZZ
    @given(st.integers(0, len(VALID) - 1), st.characters(codec="ascii"))
    def test_any_single_character_change_breaks_the_token(self, index: int, char: str) -> None:
        mutated = VALID[:index] + char + VALID[index + 1 :]
        if mutated == VALID:
            assert check(mutated) == claims()
            return
        try:
            check(mutated)
        except TokenError:
            return
        # Only the last signature character may carry unused bits; strictness rejects those too.
        raise AssertionError("a changed token verified")  # pragma: no cover


# ------------------------------------------------------------------------- keys, JWKS, peeking


class TestSigningKeyAndJwks:
    def test_jwks_lists_only_public_ec_members(self) -> None:
        document = jwks([CLIENT_A, CLIENT_B])
        assert list(document) == ["keys"]
        for entry, key in zip(document["keys"], [CLIENT_A, CLIENT_B], strict=True):
            assert set(entry) == {"kty", "crv", "x", "y", "kid", "alg", "use"}
            assert entry["kty"] == "EC"
            assert entry["crv"] == "P-256"
            assert entry["alg"] == "ES256"
            assert entry["use"] == "sig"
            assert entry["kid"] == key.kid
            for coordinate in ("x", "y"):
                assert len(base64.urlsafe_b64decode(entry[coordinate] + "=")) == 32

    def test_jwks_entry_verifies_tokens_of_its_key(self) -> None:
        entry = jwks([CLIENT_B])["keys"][0]
        key = VerificationKey.from_jwk(entry["kid"], "ES256", entry)
        token = sign(claims(), CLIENT_B, typ="at+jwt")
        assert check(token, keys={key.kid: key}) == claims()

    def test_jwks_refuses_two_keys_under_one_kid(self) -> None:
        with pytest.raises(ValueError, match="duplicate"):
            jwks([CLIENT_A, IMPOSTOR_A])

    def test_empty_jwks_is_an_empty_list(self) -> None:
        assert jwks([]) == {"keys": []}

    def test_signing_key_repr_hides_the_private_key(self) -> None:
        private_number = str(CLIENT_A.private_key.private_numbers().private_value)
        for text in (repr(CLIENT_A), str(CLIENT_A), f"{CLIENT_A}"):
            assert "***" in text
            assert private_number not in text
            assert "PRIVATE" not in text

    def test_verification_key_repr_shows_no_key_material(self) -> None:
        text = repr(KEYS[CLIENT_A.kid])
        assert "client-a-1" in text
        assert "EllipticCurve" not in text

    def test_private_pem_is_unencrypted_pkcs8(self) -> None:
        pem = CLIENT_A.private_pem()
        assert pem.startswith("-----BEGIN PRIVATE KEY-----")
        loaded = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)

    def test_generated_keys_are_distinct_p256_keys(self) -> None:
        one, two = SigningKey.generate("k1"), SigningKey.generate("k2")
        assert isinstance(one.private_key.curve, ec.SECP256R1)
        assert one.public_jwk()["x"] != two.public_jwk()["x"]

    @pytest.mark.parametrize(
        "pem",
        [
            RSA_PRIVATE.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            P384_PRIVATE.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        ],
    )
    def test_signing_key_refuses_anything_but_p256(self, pem: bytes) -> None:
        with pytest.raises(ValueError, match="P-256"):
            SigningKey.from_pem("k", pem)

    @pytest.mark.parametrize(
        "pem",
        [
            CLIENT_A.private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"passphrase"),
            ),
            CLIENT_A.public_pem(),
            "garbage",
        ],
    )
    def test_signing_key_refuses_encrypted_public_or_garbage_pem(self, pem: str | bytes) -> None:
        with pytest.raises(ValueError, match="PEM") as caught:
            SigningKey.from_pem("k", pem)
        assert "BEGIN" not in str(caught.value)

    def test_signing_key_accepts_sec1_pem(self) -> None:
        pem = CLIENT_A.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        assert SigningKey.from_pem("k", pem).public_jwk()["x"] == CLIENT_A.public_jwk()["x"]

    @pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
    def test_sign_refuses_non_finite_numbers(self, value: float) -> None:
        with pytest.raises(ValueError, match="JSON"):
            sign(claims(exp=value), CLIENT_A, typ="at+jwt")

    def test_sign_requires_a_typ(self) -> None:
        with pytest.raises(ValueError, match="typ"):
            sign(claims(), CLIENT_A, typ="")


class TestPeekUnverified:
    def test_peek_returns_header_and_claims_without_checking_the_signature(self) -> None:
        forged = sign(claims(), IMPOSTOR_A, typ="JWT")
        head, body = peek_unverified(forged)
        assert head["kid"] == CLIENT_A.kid
        assert body == claims()

    @pytest.mark.parametrize(
        "token",
        [
            "A" * (MAX_TOKEN_BYTES + 1),
            f"{VALID}.",
            "a.b.c.d.e",
            forge(header(jku="https://attacker.example")),
            forge(header(alg="none")),
            forge(header(kid="../x")),
            forge(b"[]"),
            forge(body=b"[]"),
            forge(body=access_token().encode("ascii")),
            forge(body=claims(iss="ITA\x00liaison")),
            forge(body=claims(sub=["ITA.liaison"])),
        ],
    )
    def test_peek_applies_the_same_structural_checks(self, token: str) -> None:
        with pytest.raises(TokenError):
            peek_unverified(token)


CHECKPOINT_TYP = "tearline-checkpoint+jws"


class TestSignedStatements:
    def test_statement_round_trip_returns_its_payload(self) -> None:
        payload = {"tree_size": 3, "root_hash": "abc=", "timestamp": "2024-01-01T00:00:00Z"}
        token = sign(payload, CLIENT_A, typ=CHECKPOINT_TYP)
        assert verify_signed_statement(token, keys=KEYS, typ=CHECKPOINT_TYP) == payload

    def test_statement_signed_by_another_key_is_rejected(self) -> None:
        token = sign({"tree_size": 3}, IMPOSTOR_A, typ=CHECKPOINT_TYP)
        with pytest.raises(TokenError):
            verify_signed_statement(token, keys=KEYS, typ=CHECKPOINT_TYP)

    def test_access_token_is_not_a_statement(self) -> None:
        with pytest.raises(TokenError):
            verify_signed_statement(access_token(), keys=KEYS, typ=CHECKPOINT_TYP)

    @pytest.mark.parametrize("typ", ["at+jwt", "JWT", "application/at+jwt", "jwt"])
    def test_credentials_can_never_be_verified_as_statements(self, typ: str) -> None:
        with pytest.raises(ValueError, match="credentials"):
            verify_signed_statement(access_token(), keys=KEYS, typ=typ)


# ---------------------------------------------------------------------------------- house rule


APP = Path(__file__).resolve().parents[2] / "app"
TOKEN_CHECKS = re.compile(
    r"\bjwt\.decode\s*\(|\bjws\.verify\s*\(|\bget_unverified_\w+\s*\(|"
    r"from\s+jose\s+import\s+[^\n]*\b(jwt|jws)\b|import\s+jose\.(jwt|jws)\b|"
    r"from\s+jose\.(jwt|jws)\s+import"
)


class TestOnlyTheWrapperChecksTokens:
    def test_no_other_module_calls_jose_to_decode_or_verify(self) -> None:
        wrapper = APP / "kit" / "jwt.py"
        offenders = [
            str(path.relative_to(APP.parent))
            for path in APP.rglob("*.py")
            if path != wrapper and TOKEN_CHECKS.search(path.read_text(encoding="utf-8"))
        ]
        assert offenders == []
