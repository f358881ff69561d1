"""Webhook secrets and signatures exactly as the Standard Webhooks specification defines them.

A receiver verifies with any Standard Webhooks library: HMAC-SHA256 under the decoded `whsec_`
secret over ``f"{webhook-id}.{webhook-timestamp}."`` followed by the raw body, sent as
``v1,<standard base64>``; several signatures are separated by spaces. During a secret rotation both
the new and the old secret sign, so a receiver still holding the old one keeps verifying until the
overlap ends.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from secrets import token_bytes

from app.kit.crypto import SecretBytes, hmac_sha256

__all__ = [
    "MAX_SECRET_BYTES",
    "MIN_SECRET_BYTES",
    "SECRET_PREFIX",
    "headers",
    "new_secret",
    "secret_bytes",
    "sign",
]

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's marker, not a secret
SECRET_SIZE = 32
# The specification's bounds: fewer than 24 random bytes is too easy to guess, more than 64 is
# beyond what receiver libraries are required to accept.
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64
SIGNATURE_VERSION = "v1"

# Standard (not URL-safe) base64 with padding, as the specification and its libraries use.
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
# The id travels in a header and in the signed string: visible ASCII only, so no CR/LF injection
# and no space (the signature header's separator).
_MSG_ID = re.compile(r"[\x21-\x7e]{1,255}")


def new_secret() -> str:
    """Return a fresh `whsec_` secret holding 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(token_bytes(SECRET_SIZE)).decode("ascii")


def secret_bytes(secret: str) -> SecretBytes:
    """Decode a `whsec_` secret into its key bytes; raise ValueError if it is malformed or short."""
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"webhook secret must start with {SECRET_PREFIX}")
    encoded = secret[len(SECRET_PREFIX) :]
    # Strict: b64decode alone would skip stray characters and accept what we never issued.
    if not _BASE64.fullmatch(encoded):
        raise ValueError("webhook secret must be standard base64")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except binascii.Error:  # pragma: no cover - the pattern above admits only valid base64
        raise ValueError("webhook secret must be standard base64") from None
    if not MIN_SECRET_BYTES <= len(raw) <= MAX_SECRET_BYTES:
        raise ValueError(f"webhook secret must hold {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes")
    return SecretBytes(raw)


def _check_message(msg_id: str, timestamp: int) -> None:
    if not isinstance(msg_id, str) or not _MSG_ID.fullmatch(msg_id):
        raise ValueError("webhook id must be 1-255 visible ASCII characters")
    # bool is an int subclass; True is not a time.
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
        raise ValueError("webhook timestamp must be a non-negative integer (unix seconds)")


def sign(secrets: Sequence[SecretBytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """Return the `webhook-signature` value: one `v1,<base64>` per secret, current first."""
    # Fail closed: an empty list would send an unsigned webhook that no receiver can trust.
    if not secrets:
        raise ValueError("at least one webhook secret is required")
    _check_message(msg_id, timestamp)
    if not isinstance(body, bytes):
        raise TypeError("webhook body must be bytes, exactly as sent")
    signed = f"{msg_id}.{timestamp}.".encode("ascii") + body
    signatures = []
    for secret in secrets:
        if not isinstance(secret, SecretBytes):
            raise TypeError("webhook secrets must be SecretBytes")
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"webhook secret must hold at least {MIN_SECRET_BYTES} bytes")
        digest = base64.b64encode(hmac_sha256(secret, signed)).decode("ascii")
        signatures.append(f"{SIGNATURE_VERSION},{digest}")
    return " ".join(signatures)


def headers(
    secrets: Sequence[SecretBytes], msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """Return the headers of one delivery attempt: id, timestamp, signature and content type."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secrets, msg_id, timestamp, body),
        "content-type": "application/json",
    }
