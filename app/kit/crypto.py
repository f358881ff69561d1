"""Authenticated encryption, key wrapping, keyed hashing and key derivation.

Domain-free building blocks for the envelope scheme: everything is AES-256-GCM, HMAC-SHA256 and
HKDF-SHA256 from `cryptography`, with the checks the library leaves to its callers (nonce length,
key length, canonical associated data) done here once.
"""

from __future__ import annotations

import os
from typing import NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import constant_time, hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

NONCE_SIZE = 12
KEY_SIZE = 32
TAG_SIZE = 16

# Prefixed to the caller's AAD when wrapping keys. associated_data() output always starts with a
# type tag (b"s" or b"i"), never with b"t", so a wrapped key can never be confused with a data
# ciphertext bound to the same parts, even if that data happens to be 32 bytes long.
_WRAP_DOMAIN = b"tearline/key-wrap\x00"

_TAG_STR = b"s"
_TAG_INT = b"i"


class CorruptionError(Exception):
    """Authenticated decryption failed: wrong key, wrong associated data, or altered bytes."""


class SecretBytes:
    """Key material that does not show itself in reprs, logs, pickles or equality timing."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes | bytearray | memoryview) -> None:
        # Refuse str explicitly: a str "key" is almost always base64 that was never decoded.
        if not isinstance(value, bytes | bytearray | memoryview):
            raise TypeError("SecretBytes wraps bytes only")
        self._value = bytes(value)

    def reveal(self) -> bytes:
        """Return the raw bytes; call only at the point of use."""
        return self._value

    def __len__(self) -> int:
        return len(self._value)

    def __repr__(self) -> str:
        return "SecretBytes('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretBytes):
            return NotImplemented
        return constant_time_equal(self._value, other._value)

    # Hashing a key would leak a function of it into dict/set internals; keys are not dict keys.
    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> NoReturn:
        # pickle and copy both go through here: keys must not leave the process by accident.
        raise TypeError("SecretBytes cannot be pickled or copied")


def constant_time_equal(a: bytes, b: bytes) -> bool:
    """Compare two byte strings in time independent of where they differ."""
    return constant_time.bytes_eq(a, b)


def new_key() -> SecretBytes:
    """Return a fresh random 256-bit key."""
    return SecretBytes(os.urandom(KEY_SIZE))


def _aesgcm(key: SecretBytes) -> AESGCM:
    if not isinstance(key, SecretBytes):
        raise TypeError("key must be SecretBytes")
    # AESGCM also accepts 128- and 192-bit keys; the spec says AES-256 only.
    if len(key) != KEY_SIZE:
        raise ValueError(f"AES-256-GCM key must be {KEY_SIZE} bytes")
    return AESGCM(key.reveal())


def aead_encrypt(key: SecretBytes, plaintext: bytes, aad: bytes) -> bytes:
    """Encrypt with AES-256-GCM under a fresh random nonce; return nonce || ciphertext || tag."""
    cipher = _aesgcm(key)
    nonce = os.urandom(NONCE_SIZE)
    # The library accepts nonces of 8..128 bytes; a short nonce raises the collision probability
    # for random nonces, so the size is checked here rather than trusted.
    if len(nonce) != NONCE_SIZE:
        raise RuntimeError("nonce has the wrong size")
    return nonce + cipher.encrypt(nonce, plaintext, aad)


def aead_decrypt(key: SecretBytes, blob: bytes, aad: bytes) -> bytes:
    """Decrypt a blob from aead_encrypt; raise CorruptionError if anything does not authenticate."""
    cipher = _aesgcm(key)
    if len(blob) < NONCE_SIZE + TAG_SIZE:
        raise CorruptionError("ciphertext is truncated")
    try:
        return cipher.decrypt(blob[:NONCE_SIZE], blob[NONCE_SIZE:], aad)
    except InvalidTag:
        # One message for every cause: callers must not learn which check failed.
        raise CorruptionError("ciphertext failed authentication") from None


def wrap_key(kek: SecretBytes, key: SecretBytes, aad: bytes) -> bytes:
    """Encrypt a key under a key-encryption key, bound to `aad`.

    AES-GCM rather than RFC 3394 key wrap: RFC 3394 has no associated data, so a wrapped key
    copied to another row would unwrap there; GCM's AAD binds it to its owner.
    """
    return aead_encrypt(kek, key.reveal(), _WRAP_DOMAIN + aad)


def unwrap_key(kek: SecretBytes, blob: bytes, aad: bytes) -> SecretBytes:
    """Reverse wrap_key; raise CorruptionError on any mismatch."""
    raw = aead_decrypt(kek, blob, _WRAP_DOMAIN + aad)
    if len(raw) != KEY_SIZE:
        raise CorruptionError("wrapped key has the wrong size")
    return SecretBytes(raw)


def _refuse_part(part: object) -> NoReturn:
    raise TypeError(f"associated data parts must be str or int, not {type(part).__name__}")


def associated_data(*parts: str | int) -> bytes:
    """Encode parts canonically (type tag + 4-byte length + bytes each) for use as AEAD AAD."""
    if not parts:
        raise ValueError("associated data needs at least one part")
    out = bytearray()
    for part in parts:
        # bool is an int subclass; True and 1 must not encode alike, so bools are refused.
        if isinstance(part, bool):
            _refuse_part(part)
        if isinstance(part, str):
            tag, data = _TAG_STR, part.encode("utf-8")
        elif isinstance(part, int):
            # Tagged separately so the int 1 and the string "1" never collide.
            tag, data = _TAG_INT, str(part).encode("ascii")
        else:
            _refuse_part(part)
        out += tag + len(data).to_bytes(4, "big") + data
    return bytes(out)


def hmac_sha256(key: SecretBytes, data: bytes) -> bytes:
    """Return HMAC-SHA256 of data under key."""
    mac = crypto_hmac.HMAC(key.reveal(), hashes.SHA256())
    mac.update(data)
    return mac.finalize()


def derive_key(master: SecretBytes, label: str) -> SecretBytes:
    """Derive an independent 256-bit key from master with HKDF-SHA256, info=label."""
    if not label:
        raise ValueError("derive_key needs a non-empty label")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=label.encode("utf-8"))
    return SecretBytes(hkdf.derive(master.reveal()))
