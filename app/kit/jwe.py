"""Compact JWE (RSA-OAEP-256 + A256GCM) to a public RSA key that a webhook subscriber supplied.

Encryption only: the service never decrypts JWE, so nothing here parses a token. The JWE itself is
built by python-jose's ``jwe.encrypt``, which for this pair of algorithms does what RFC 7516 and
RFC 7518 ask: a fresh random 256-bit CEK per message, wrapped with RSA-OAEP using SHA-256 and
MGF1-SHA-256, a fresh random 96-bit IV, and the ASCII of the encoded protected header as AAD
(tests/kit/test_jwe.py checks each of these by decrypting with ``cryptography`` alone). What jose
does not do is judge the key: it would take a private key, a 512-bit key or a key meant for
signatures. :func:`parse_encryption_jwk` does that, and :func:`encrypt` hands jose only a
``cryptography`` public key object built from the checked numbers, never the JWK itself.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwe as jose_jwe

__all__ = [
    "ALGORITHM",
    "ENCRYPTION",
    "MAX_KID_LENGTH",
    "MAX_RSA_BITS",
    "MIN_RSA_BITS",
    "InvalidJwk",
    "encrypt",
    "parse_encryption_jwk",
]

ALGORITHM = "RSA-OAEP-256"
ENCRYPTION = "A256GCM"
MIN_RSA_BITS = 2048
# Larger keys buy nothing here and make every delivery slower; the bound also caps parsing work.
MAX_RSA_BITS = 8192
MAX_KID_LENGTH = 200
# NIST SP 800-56B bounds e below 2**256; the bound also keeps the string short.
_MAX_EXPONENT_BITS = 256
# Members that only a private key has (RFC 7518 section 6.3.2). A subscriber who sends one has
# leaked its private key to us; refusing (not stripping) makes them notice and rotate.
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth")
_WRAPPING_OPS = frozenset({"encrypt", "wrapKey"})
# Unpadded base64url (RFC 7515 section 2); a length of 1 mod 4 cannot encode whole bytes.
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_UNSAFE_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


class InvalidJwk(ValueError):
    """The subscriber's JWK cannot be used; the message is short and safe to show the caller."""


def _b64url_encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _uint(jwk: Mapping[str, Any], name: str, max_bits: int) -> int:
    value = jwk.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidJwk(f"JWK member {name!r} is required and must be a string")
    # Length checked before decoding, so an oversized member costs nothing.
    if len(value) > (max_bits // 8 + 2) * 4 // 3 + 4:
        raise InvalidJwk(f"JWK member {name!r} is too long")
    if not _BASE64URL.fullmatch(value) or len(value) % 4 == 1:
        raise InvalidJwk(f"JWK member {name!r} must be unpadded base64url")
    raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    # Re-encoding must give the same text back: refuses non-zero padding bits, so that one key
    # has one spelling.
    if _b64url_encode(raw) != value:
        raise InvalidJwk(f"JWK member {name!r} must be canonical base64url")
    return int.from_bytes(raw, "big")


def _check_usage(jwk: Mapping[str, Any]) -> None:
    # Each of these, when present, must say "encryption with RSA-OAEP-256": a key its owner marked
    # for signatures or for another algorithm is not one we may encrypt to.
    if "alg" in jwk and jwk["alg"] != ALGORITHM:
        raise InvalidJwk(f"JWK 'alg' must be {ALGORITHM}")
    if "use" in jwk and jwk["use"] != "enc":
        raise InvalidJwk("JWK 'use' must be 'enc'")
    if "key_ops" in jwk:
        ops = jwk["key_ops"]
        if not isinstance(ops, list) or not all(isinstance(op, str) for op in ops):
            raise InvalidJwk("JWK 'key_ops' must be a list of strings")
        if not _WRAPPING_OPS.intersection(ops):
            raise InvalidJwk("JWK 'key_ops' must include 'encrypt' or 'wrapKey'")


def _check_kid(kid: object) -> str:
    if not isinstance(kid, str) or not 0 < len(kid) <= MAX_KID_LENGTH or _UNSAFE_TEXT.search(kid):
        raise InvalidJwk(f"JWK 'kid' must be 1-{MAX_KID_LENGTH} printable characters")
    return kid


def _public_key(jwk: Mapping[str, Any]) -> tuple[rsa.RSAPublicKey, str | None]:
    if not isinstance(jwk, Mapping):
        raise InvalidJwk("JWK must be a JSON object")
    if any(name in jwk for name in _PRIVATE_MEMBERS):
        raise InvalidJwk("JWK must be a public key: private key members are not accepted")
    if jwk.get("kty") != "RSA":
        raise InvalidJwk("JWK 'kty' must be 'RSA'")
    _check_usage(jwk)
    n = _uint(jwk, "n", MAX_RSA_BITS)
    e = _uint(jwk, "e", _MAX_EXPONENT_BITS)
    # An RSA modulus is a product of two odd primes: an even n is not a key.
    if n % 2 == 0 or not MIN_RSA_BITS <= n.bit_length() <= MAX_RSA_BITS:
        raise InvalidJwk(f"RSA modulus must be {MIN_RSA_BITS} to {MAX_RSA_BITS} bits")
    if e % 2 == 0 or not 3 <= e < n or e.bit_length() > _MAX_EXPONENT_BITS:
        raise InvalidJwk("RSA public exponent must be odd and at least 3 (65537 is usual)")
    kid = _check_kid(jwk["kid"]) if "kid" in jwk else None
    try:
        key = rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError:  # pragma: no cover - every condition cryptography checks is checked above
        raise InvalidJwk("JWK is not a valid RSA public key") from None
    return key, kid


def parse_encryption_jwk(jwk: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a subscriber's RSA encryption JWK; return it normalised to kty, n, e and kid."""
    key, kid = _public_key(jwk)
    numbers = key.public_numbers()
    # Rebuilt from the numbers, minimal big-endian: members we do not know (x5u, jku, x5c, ...)
    # are dropped, so nothing stored can later make anyone fetch or trust something else.
    normalised: dict[str, Any] = {
        "kty": "RSA",
        "n": _b64url_encode(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
        "e": _b64url_encode(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")),
    }
    if kid is not None:
        normalised["kid"] = kid
    return normalised


def encrypt(plaintext: bytes, jwk: Mapping[str, Any]) -> str:
    """Encrypt plaintext to the JWK as a compact JWE (RSA-OAEP-256, A256GCM, kid if known)."""
    if not isinstance(plaintext, bytes):
        raise TypeError("plaintext must be bytes")
    # Checked again on every call: a stored JWK is input too, and the check is cheap.
    key, kid = _public_key(jwk)
    # Both algorithms named explicitly: jose's default would be "dir" with the key used as the CEK.
    token = jose_jwe.encrypt(plaintext, key, encryption=ENCRYPTION, algorithm=ALGORITHM, kid=kid)
    if not isinstance(token, bytes):  # pragma: no cover - jose 3.5 always returns bytes
        raise TypeError("python-jose returned an unexpected type")
    return token.decode("ascii")
