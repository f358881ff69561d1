"""What a member's client does to get a token: sign an RFC 7523 assertion with its own key."""

from __future__ import annotations

import time
import uuid

from app.kit import jwt
from app.kit.jwt import SigningKey


def make_assertion(client_id: str, key: SigningKey, audience: str, *, lifetime: int = 60) -> str:
    """A fresh, single-use client assertion for the token endpoint whose issuer is `audience`."""
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "jti": uuid.uuid4().hex,
        "iat": now,
        "exp": now + lifetime,
    }
    return jwt.sign(claims, key, typ=jwt.ASSERTION_TYP)
