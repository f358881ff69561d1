"""Signing and verifying compact JWS tokens: the only module that lets python-jose check a token.

python-jose 3.5 is unsafe in its defaults (see ``spec/security.md``, "Tokens"): it accepts HS256
tokens keyed with a public key when ``algorithms`` is loose, tokens without ``aud`` or ``exp``,
future ``iat``, any lifetime; it ignores ``typ`` and ``crit``, tries every key of a key set and has
no size limit. This module closes each gap itself and hands jose only the final signature check,
with one pinned asymmetric algorithm and a typed key object.

Decisions callers rely on:

* Every failure raises :class:`TokenError`, whose message is always the same; ``reason`` is a
  fixed identifier for audit logs and never contains token contents, claims or keys.
* ``typ``: the header must carry exactly the expected type (compared case-insensitively, with an
  optional ``application/`` prefix, per RFC 7515 section 4.1.9). Access tokens are verified with
  ``typ="at+jwt"`` and the header must carry it. Client assertions are verified with
  ``typ="JWT", allow_missing_typ=True``: RFC 7523 does not require ``typ`` and common client
  libraries omit it, so a missing ``typ`` is accepted there, but any other value (``at+jwt`` above
  all) is refused. ``allow_missing_typ`` cannot be combined with ``typ="at+jwt"``, so an
  assertion can never pass as an access token, nor an access token as an assertion.
* The header may carry only ``alg``, ``kid`` and ``typ``. Anything else is refused, whether named
  dangerous by the spec (``crit``, ``jku``, ``x5u``, ``jwk``, ``x5c``, ``zip``...) or unknown:
  a header parameter we do not understand is one an attacker might be steering.
* Keys are found by exact ``kid`` among the keys the caller offers, never by trying several. For a
  client assertion, read ``iss`` with :func:`peek_unverified`, offer only that client's keys, and
  pass ``issuer=<that client id>, require_sub_equals_iss=True`` so the signature confirms the
  value the keys were chosen by.
* Replay (single use of ``jti``) is not checked here: it needs shared state and is enforced by the
  caller, atomically, after :func:`verify` succeeds.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn, TypeAlias

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jwk, jws
from jose.backends.cryptography_backend import CryptographyECKey, CryptographyRSAKey
from jose.exceptions import JOSEError

__all__ = [
    "ACCESS_TOKEN_TYP",
    "ASSERTION_TYP",
    "MAX_LEEWAY",
    "MAX_TOKEN_BYTES",
    "Algorithm",
    "KeyResolver",
    "SigningKey",
    "TokenError",
    "VerificationKey",
    "jwks",
    "peek_unverified",
    "public_jwk",
    "sign",
    "verify",
    "verify_signed_statement",
]

Algorithm: TypeAlias = Literal["ES256", "RS256"]

# Asymmetric only: a symmetric alg keyed with a public key is the classic alg-confusion forgery.
ALLOWED_ALGORITHMS: frozenset[str] = frozenset({"ES256", "RS256"})
ACCESS_TOKEN_TYP = "at+jwt"  # noqa: S105 - a media type (RFC 9068), not a secret
ASSERTION_TYP = "JWT"
# Bounded before any decoding so a huge token costs nothing but a length check.
MAX_TOKEN_BYTES = 8 * 1024
# Clock skew tolerated on exp/iat/nbf; more would stretch every lifetime the policy sets.
MAX_LEEWAY = 30
# No caller may ask for more than a day, whatever it passes: a typo must not allow ten-year tokens.
MAX_LIFETIME_CEILING = 24 * 60 * 60
MAX_KID_LENGTH = 128
MAX_JTI_LENGTH = 256
MAX_CLAIM_STRING_LENGTH = 1024
MIN_RSA_BITS = 2048

REQUIRED_CLAIMS: tuple[str, ...] = ("iss", "sub", "aud", "exp", "iat", "jti")
ALLOWED_HEADER_PARAMETERS: frozenset[str] = frozenset({"alg", "kid", "typ"})
# Named so that the audit reason says what was attempted; all of them are refused. Each one either
# makes the verifier fetch or trust key material chosen by the sender (jku, x5u, jwk, x5c, x5t*),
# changes how the payload must be processed (crit, zip, cty, b64), or marks JWE input (enc).
FORBIDDEN_HEADER_PARAMETERS: frozenset[str] = frozenset(
    {"crit", "jku", "x5u", "jwk", "x5c", "x5t", "x5t#S256", "zip", "enc", "cty", "b64"}
)

_SEGMENT = r"[A-Za-z0-9_-]+"
_COMPACT_JWS = re.compile(rf"{_SEGMENT}\.{_SEGMENT}\.{_SEGMENT}")
# A nested token hidden in the payload, as JWS (3 parts) or JWE (5 parts, some possibly empty).
_NESTED_TOKEN = re.compile(rb"\s*[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*(\.[A-Za-z0-9_-]*){1,3}\s*")
# Key ids are looked up in databases and key files: no path separators, spaces or control bytes.
_KID = re.compile(rf"[A-Za-z0-9_-][A-Za-z0-9._:-]{{0,{MAX_KID_LENGTH - 1}}}")
# Control characters and lone surrogates break text columns and logs downstream (a 500, not a 401).
_UNSAFE_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_EC_SIGNATURE_BYTES = 64


class TokenError(Exception):
    """A token failed verification; the message never says why, ``reason`` does (for audit)."""

    MESSAGE = "invalid token"

    def __init__(self, reason: str) -> None:
        super().__init__(self.MESSAGE)
        self.reason = reason

    def __str__(self) -> str:
        return self.MESSAGE

    def __repr__(self) -> str:
        return f"TokenError(reason={self.reason!r})"


def _fail(reason: str) -> NoReturn:
    # `from None` drops the underlying exception, whose text may quote the token (JSON errors do).
    raise TokenError(reason) from None


# --------------------------------------------------------------------------------------- keys


def _check_kid(kid: object) -> str:
    if not isinstance(kid, str) or not _KID.fullmatch(kid):
        raise ValueError("kid must be 1-128 characters of [A-Za-z0-9._:-], not starting with '.'")
    return kid


def _check_public_key(alg: str, public_key: object) -> None:
    # The key type is pinned to the algorithm at registration, so a header can never change it.
    if alg == "ES256":
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
            public_key.curve, ec.SECP256R1
        ):
            raise ValueError("ES256 needs an EC P-256 public key")
    elif alg == "RS256":
        if not isinstance(public_key, rsa.RSAPublicKey) or public_key.key_size < MIN_RSA_BITS:
            raise ValueError(f"RS256 needs an RSA public key of at least {MIN_RSA_BITS} bits")
    else:
        raise ValueError("alg must be ES256 or RS256")


def _b64url_uint(value: object, *, length: int | None = None) -> int:
    if not isinstance(value, str) or not value:
        raise ValueError("JWK member must be a non-empty base64url string")
    raw = _b64url_decode(value)
    if length is not None and len(raw) != length:
        raise ValueError("JWK coordinate has the wrong length")
    return int.from_bytes(raw, "big")


@dataclass(frozen=True, eq=False)
class VerificationKey:
    """A public key pinned to one kid and one asymmetric algorithm."""

    kid: str
    alg: Algorithm
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey = field(repr=False)
    _jose_key: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _check_kid(self.kid)
        _check_public_key(self.alg, self.public_key)
        # jose gets a typed key object from the cryptography backend, never bytes or a string it
        # could reinterpret (a PEM string is exactly what HS256 confusion feeds on).
        jose_key = jwk.construct(self.public_key, self.alg)
        expected = CryptographyECKey if self.alg == "ES256" else CryptographyRSAKey
        if not isinstance(jose_key, expected):  # pragma: no cover - guards a jose backend swap
            raise ValueError("python-jose is not using the cryptography backend")
        object.__setattr__(self, "_jose_key", jose_key)

    @classmethod
    def from_pem(cls, kid: str, alg: Algorithm, pem: str | bytes) -> VerificationKey:
        """Build a verification key from a SubjectPublicKeyInfo PEM."""
        data = pem.encode("ascii") if isinstance(pem, str) else pem
        try:
            public_key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError, UnicodeError):
            raise ValueError("not a PEM public key") from None
        if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise ValueError("only EC P-256 and RSA public keys are accepted")
        return cls(kid=kid, alg=alg, public_key=public_key)

    @classmethod
    def from_jwk(cls, kid: str, alg: Algorithm, jwk_data: Mapping[str, Any]) -> VerificationKey:
        """Build a verification key from a public JWK whose kid/alg/use, if present, agree."""
        if "d" in jwk_data or "p" in jwk_data:
            # A private JWK where a public one belongs means the private key has leaked already.
            raise ValueError("a private JWK was given where a public one is expected")
        for name, expected in (("kid", kid), ("alg", alg), ("use", "sig")):
            if name in jwk_data and jwk_data[name] != expected:
                raise ValueError(f"JWK {name} does not match")
        kty = jwk_data.get("kty")
        public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey
        try:
            if alg == "ES256" and kty == "EC" and jwk_data.get("crv") == "P-256":
                numbers = ec.EllipticCurvePublicNumbers(
                    _b64url_uint(jwk_data.get("x"), length=32),
                    _b64url_uint(jwk_data.get("y"), length=32),
                    ec.SECP256R1(),
                )
                public_key = numbers.public_key()  # checks the point is on the curve
            elif alg == "RS256" and kty == "RSA":
                public_key = rsa.RSAPublicNumbers(
                    _b64url_uint(jwk_data.get("e")), _b64url_uint(jwk_data.get("n"))
                ).public_key()
            else:
                raise ValueError("JWK type does not match the algorithm")
        except (TokenError, ValueError, TypeError):
            raise ValueError("not a valid public JWK for this algorithm") from None
        return cls(kid=kid, alg=alg, public_key=public_key)


@dataclass(frozen=True, eq=False)
class SigningKey:
    """An ES256 private key with its kid; its repr never shows the key."""

    kid: str
    private_key: ec.EllipticCurvePrivateKey = field(repr=False)
    alg: Literal["ES256"] = "ES256"
    _jose_key: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _check_kid(self.kid)
        if self.alg != "ES256":
            raise ValueError("signing keys are ES256 only")
        if not isinstance(self.private_key, ec.EllipticCurvePrivateKey) or not isinstance(
            self.private_key.curve, ec.SECP256R1
        ):
            raise ValueError("ES256 needs an EC P-256 private key")
        object.__setattr__(self, "_jose_key", jwk.construct(self.private_key, "ES256"))

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid!r}, alg={self.alg!r}, private_key=***)"

    @classmethod
    def generate(cls, kid: str) -> SigningKey:
        """Create a fresh EC P-256 key."""
        return cls(kid=kid, private_key=ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def from_pem(cls, kid: str, pem: str | bytes) -> SigningKey:
        """Load an unencrypted EC P-256 private key from PEM (PKCS#8 or SEC1)."""
        data = pem.encode("ascii") if isinstance(pem, str) else pem
        try:
            private_key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError, UnicodeError):
            # The library's message is dropped: it must never end up quoting key material.
            raise ValueError("not an unencrypted PEM private key") from None
        if not isinstance(private_key, ec.EllipticCurvePrivateKey):
            raise ValueError("ES256 needs an EC P-256 private key")
        return cls(kid=kid, private_key=private_key)

    def private_pem(self) -> str:
        """The private key as unencrypted PKCS#8 PEM text (store it like a password)."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii")

    def public_pem(self) -> str:
        """The public key as SubjectPublicKeyInfo PEM text."""
        return (
            self.private_key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode("ascii")
        )

    def public_jwk(self) -> dict[str, str]:
        """The public half as a JWK for a JWKS (kty, crv, x, y, kid, alg, use)."""
        return _ec_jwk(self.kid, self.private_key.public_key())

    def verification_key(self) -> VerificationKey:
        """The matching public key, pinned to the same kid and alg."""
        return VerificationKey(kid=self.kid, alg=self.alg, public_key=self.private_key.public_key())


def _ec_jwk(kid: str, public_key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    numbers = public_key.public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": _b64url_encode(numbers.x.to_bytes(32, "big")),
        "y": _b64url_encode(numbers.y.to_bytes(32, "big")),
        "kid": kid,
        "alg": "ES256",
        "use": "sig",
    }


def public_jwk(key: VerificationKey) -> dict[str, str]:
    """An ES256 verification key as a JWK for a JWKS."""
    if key.alg != "ES256" or not isinstance(key.public_key, ec.EllipticCurvePublicKey):
        raise ValueError("only ES256 keys are published")
    return _ec_jwk(key.kid, key.public_key)


KeyResolver: TypeAlias = Callable[[str], VerificationKey | None] | Mapping[str, VerificationKey]


def jwks(keys: Iterable[SigningKey | VerificationKey]) -> dict[str, list[dict[str, str]]]:
    """A JWK Set holding the public parts of the given keys."""
    entries = [k.public_jwk() if isinstance(k, SigningKey) else public_jwk(k) for k in keys]
    kids = [entry["kid"] for entry in entries]
    if len(kids) != len(set(kids)):
        # Verifiers pick a key by kid; two keys under one kid would make that choice ambiguous.
        raise ValueError("duplicate kid in key set")
    return {"keys": entries}


# ------------------------------------------------------------------------------------ signing


def sign(claims: Mapping[str, Any], key: SigningKey, *, typ: str) -> str:
    """Sign claims as a compact JWS with header {alg, kid, typ}."""
    if not isinstance(typ, str) or not typ:
        raise ValueError("typ is required")
    # allow_nan=False: NaN/Infinity are not JSON and our own verifier would refuse them.
    payload = json.dumps(dict(claims), separators=(",", ":"), allow_nan=False).encode("utf-8")
    token: str = jws.sign(
        payload, key._jose_key, headers={"kid": key.kid, "typ": typ}, algorithm=key.alg
    )
    if len(token) > MAX_TOKEN_BYTES:
        raise ValueError("token would exceed the size limit and could never be verified")
    return token


# ------------------------------------------------------------------------------------ parsing


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(segment: str) -> bytes:
    """Strict base64url without padding: only the URL alphabet, canonical trailing bits."""
    if not re.fullmatch(_SEGMENT, segment) or len(segment) % 4 == 1:
        _fail("malformed")
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):  # pragma: no cover - the checks above rule this out
        _fail("malformed")
    # Non-canonical encodings (stray low bits) would let one token have many spellings.
    if _b64url_encode(raw) != segment:
        _fail("malformed")
    return raw


class _JSONRejectedError(ValueError):
    pass


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Parsers disagree on which duplicate wins; refusing them removes the ambiguity.
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise _JSONRejectedError("duplicate member")
        result[name] = value
    return result


def _reject_constant(_: str) -> NoReturn:
    # NaN and Infinity are not JSON; Python's parser accepts them unless told otherwise.
    raise _JSONRejectedError("non-finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # "1e400" parses to inf
        raise _JSONRejectedError("non-finite number")
    return value


def _json_object(data: bytes, reason: str) -> dict[str, Any]:
    try:
        value = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_reject_duplicates,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
        )
    except (ValueError, RecursionError, UnicodeError, TypeError):
        _fail(reason)
    if not isinstance(value, dict):
        _fail(reason)
    return value


@dataclass(frozen=True)
class _Parsed:
    header: dict[str, Any]
    claims: dict[str, Any]
    payload: bytes
    signature: bytes


def _parse(token: object) -> _Parsed:
    if not isinstance(token, str):
        _fail("malformed")
    # Size first, before any decoding; ASCII so that characters and bytes are the same count.
    if len(token) > MAX_TOKEN_BYTES:
        _fail("too_large")
    if not token.isascii():
        _fail("malformed")
    if token.count(".") == 4:
        _fail("jwe")  # compact JWE: we never decrypt, and jose would try to if asked
    # Exactly three non-empty segments: no JWE, no JSON serialisation, no trailing newline or dot.
    if not _COMPACT_JWS.fullmatch(token):
        _fail("malformed")
    header_segment, payload_segment, signature_segment = token.split(".")
    header = _json_object(_b64url_decode(header_segment), "bad_header")
    payload = _b64url_decode(payload_segment)
    if _NESTED_TOKEN.fullmatch(payload):
        _fail("nested")  # a token inside a token: we verify one layer, never unwrap another
    claims = _json_object(payload, "bad_payload")
    signature = _b64url_decode(signature_segment)
    return _Parsed(header=header, claims=claims, payload=payload, signature=signature)


def _clean_text(value: object, max_length: int) -> str | None:
    if not isinstance(value, str) or not 0 < len(value) <= max_length:
        return None
    if _UNSAFE_TEXT.search(value):
        return None
    return value


def _check_header_shape(header: dict[str, Any]) -> tuple[str, str]:
    names = set(header)
    if names & FORBIDDEN_HEADER_PARAMETERS:
        _fail("forbidden_header")  # never fetched, never trusted: no outbound request is possible
    if names - ALLOWED_HEADER_PARAMETERS:
        _fail("unknown_header")
    alg = header.get("alg")
    # Exact, case-sensitive: "none", "HS256", "ES384", "PS256", "es256" all stop here.
    if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
        _fail("alg_not_allowed")
    if "kid" not in header:
        _fail("missing_kid")  # without a kid we would have to try keys, which jose does badly
    kid = header["kid"]
    if not isinstance(kid, str) or not _KID.fullmatch(kid):
        _fail("bad_kid")  # before the resolver sees it: no traversal, NUL or injection reaches it
    return alg, kid


def _normalise_typ(value: str) -> str:
    # RFC 7515 4.1.9: media types compare case-insensitively and "application/" may be omitted.
    lowered = value.lower()
    if lowered.startswith("application/") and "/" not in lowered[len("application/") :]:
        return lowered[len("application/") :]
    return lowered


def _check_typ(header: dict[str, Any], expected: str, *, allow_missing: bool) -> None:
    if "typ" not in header:
        if not allow_missing:
            _fail("missing_typ")
        return
    typ = header["typ"]
    if not isinstance(typ, str) or _normalise_typ(typ) != _normalise_typ(expected):
        _fail("wrong_typ")  # keeps assertions and access tokens from standing in for each other


def _resolve_key(keys: KeyResolver, kid: str, alg: str) -> VerificationKey:
    found = keys.get(kid) if isinstance(keys, Mapping) else keys(kid)
    # Exact match re-checked here: a resolver backed by a case-insensitive collation or a prefix
    # match must not hand us someone else's key.
    if not isinstance(found, VerificationKey) or found.kid != kid:
        _fail("unknown_kid")
    if found.alg != alg:
        _fail("alg_mismatch")  # the key's pinned algorithm wins, never the header's
    return found


def _check_signature(token: str, parsed: _Parsed, key: VerificationKey) -> None:
    if key.alg == "ES256" and len(parsed.signature) != _EC_SIGNATURE_BYTES:
        _fail("bad_signature")
    try:
        # One algorithm, as a list, and a typed key object: jose cannot pick anything else.
        verified = jws.verify(token, key._jose_key, algorithms=[key.alg])
    except JOSEError:
        _fail("bad_signature")
    if verified != parsed.payload:  # pragma: no cover - same bytes unless jose parses differently
        _fail("bad_signature")


def _number(value: object) -> float | int | None:
    # bool is an int subclass in Python, but `true` is not a NumericDate.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None  # the JSON parser already refuses these; kept so this check stands alone
    return value


def _check_identity(
    claims: dict[str, Any], *, audience: str, issuer: str | None, require_sub_equals_iss: bool
) -> None:
    iss = _clean_text(claims["iss"], MAX_CLAIM_STRING_LENGTH)
    sub = _clean_text(claims["sub"], MAX_CLAIM_STRING_LENGTH)
    if iss is None or sub is None:
        _fail("bad_subject")
    aud = claims["aud"]
    # A single string, compared exactly: a list would let one token serve several audiences.
    if not isinstance(aud, str) or aud != audience:
        _fail("wrong_audience")
    if issuer is not None and iss != issuer:
        _fail("wrong_issuer")
    if require_sub_equals_iss and sub != iss:
        _fail("sub_not_iss")  # RFC 7523: a client assertion speaks for its issuer only
    if _clean_text(claims["jti"], MAX_JTI_LENGTH) is None:
        _fail("bad_jti")  # it becomes a key in the replay store


def _check_times(claims: dict[str, Any], *, max_lifetime: int, leeway: int, now: int) -> None:
    exp = _number(claims["exp"])
    iat = _number(claims["iat"])
    if exp is None or iat is None:
        _fail("bad_time")
    if iat > now + leeway:
        _fail("iat_in_future")  # a future iat would stretch the usable life beyond the policy
    if exp <= iat or exp - iat > max_lifetime:
        _fail("lifetime_too_long")  # exp - iat bounded by policy, however far away exp is
    if now >= exp + leeway:
        _fail("expired")
    if "nbf" in claims:
        nbf = _number(claims["nbf"])
        if nbf is None:
            _fail("bad_time")
        if now + leeway < nbf:
            _fail("not_yet_valid")


def _check_claims(
    claims: dict[str, Any],
    *,
    audience: str,
    issuer: str | None,
    max_lifetime: int,
    leeway: int,
    now: int,
    require_sub_equals_iss: bool,
) -> None:
    for name in REQUIRED_CLAIMS:
        if name not in claims:
            _fail("missing_claim")  # jose would happily accept a token without aud or exp
    _check_identity(
        claims, audience=audience, issuer=issuer, require_sub_equals_iss=require_sub_equals_iss
    )
    _check_times(claims, max_lifetime=max_lifetime, leeway=leeway, now=now)


def _check_call(typ: str, leeway: int) -> None:
    # Misuse by our own code is a programming error (ValueError), not a property of the token.
    if not isinstance(typ, str) or not typ:
        raise ValueError("typ is required")
    if isinstance(leeway, bool) or not isinstance(leeway, int) or not 0 <= leeway <= MAX_LEEWAY:
        raise ValueError(f"leeway must be between 0 and {MAX_LEEWAY} seconds")


# ------------------------------------------------------------------------------ verification


def verify(
    token: str,
    *,
    keys: KeyResolver,
    typ: str,
    audience: str,
    max_lifetime: int,
    issuer: str | None = None,
    leeway: int = MAX_LEEWAY,
    now: int | None = None,
    require_sub_equals_iss: bool = False,
    allow_missing_typ: bool = False,
) -> dict[str, Any]:
    """Verify a JWT's structure, header, signature and claims; return the claims or raise."""
    _check_call(typ, leeway)
    if allow_missing_typ and _normalise_typ(typ) == ACCESS_TOKEN_TYP:
        raise ValueError("access tokens must always carry typ at+jwt")
    if not isinstance(audience, str) or not audience:
        raise ValueError("audience is required")
    if (
        isinstance(max_lifetime, bool)
        or not isinstance(max_lifetime, int)
        or not 0 < max_lifetime <= MAX_LIFETIME_CEILING
    ):
        raise ValueError(f"max_lifetime must be between 1 and {MAX_LIFETIME_CEILING} seconds")
    current = int(time.time()) if now is None else now
    try:
        parsed = _parse(token)
        alg, kid = _check_header_shape(parsed.header)
        _check_typ(parsed.header, typ, allow_missing=allow_missing_typ)
        key = _resolve_key(keys, kid, alg)
        _check_signature(token, parsed, key)
        # Claims are judged only once the signature says who wrote them.
        _check_claims(
            parsed.claims,
            audience=audience,
            issuer=issuer,
            max_lifetime=max_lifetime,
            leeway=leeway,
            now=current,
            require_sub_equals_iss=require_sub_equals_iss,
        )
    except TokenError:
        raise
    except Exception:
        # Whatever breaks (a resolver, jose, the JSON parser), the caller sees one opaque failure.
        _fail("internal")
    return parsed.claims


def verify_signed_statement(token: str, *, keys: KeyResolver, typ: str) -> dict[str, Any]:
    """Verify a signed statement that is not a credential (e.g. an audit checkpoint)."""
    _check_call(typ, 0)
    # No time or audience checks here, so this must never be able to accept a credential.
    if _normalise_typ(typ) in {_normalise_typ(ACCESS_TOKEN_TYP), _normalise_typ(ASSERTION_TYP)}:
        raise ValueError("credentials are verified with verify(), never as statements")
    try:
        parsed = _parse(token)
        alg, kid = _check_header_shape(parsed.header)
        _check_typ(parsed.header, typ, allow_missing=False)
        key = _resolve_key(keys, kid, alg)
        _check_signature(token, parsed, key)
    except TokenError:
        raise
    except Exception:
        _fail("internal")
    return parsed.claims


def peek_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a structurally valid token, UNVERIFIED: use only to choose keys."""
    try:
        parsed = _parse(token)
        _check_header_shape(parsed.header)
        # iss/sub are what callers route on (a database lookup): make them safe to pass along.
        for name in ("iss", "sub"):
            if (
                name in parsed.claims
                and _clean_text(parsed.claims[name], MAX_CLAIM_STRING_LENGTH) is None
            ):
                _fail("bad_subject")
    except TokenError:
        raise
    except Exception:
        _fail("internal")
    return parsed.header, parsed.claims
