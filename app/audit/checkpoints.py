"""Signed checkpoints of the audit tree: issued by the maintainer, kept, and checked.

A checkpoint is `{tree_size, root_hash, timestamp}` signed as a compact JWS (ES256) with the
service key, so that anyone holding the JWKS can check it. One is issued when the tree has grown
by `audit_checkpoint_entries`, or when `audit_checkpoint_seconds` have passed and it has grown at
all. Timestamps never go backwards, even when the clock does. Each goes out as an
`audit.checkpoint` event to the chairs, so that copies live outside the service.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, select

from app.audit.canonical import format_time
from app.audit.models import Checkpoint
from app.kit import jwt
from app.kit.jwt import KeyResolver, SigningKey

CHECKPOINT_TYP = "audit-checkpoint+jwt"

_checkpoints = cast(Table, Checkpoint.__table__)


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def unb64(text: str) -> bytes:
    """A base64 SHA-256 hash; ValueError for anything else."""
    try:
        digest = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ValueError("not base64") from exc
    if len(digest) != 32:
        raise ValueError("not a SHA-256 hash")
    return digest


@dataclass(frozen=True)
class SignedCheckpoint:
    tree_size: int
    root_hash: bytes
    timestamp: datetime
    signature: str

    def public(self) -> dict[str, Any]:
        """The checkpoint as the API shows it (and as `tearline audit verify` reads it back)."""
        return {
            "tree_size": self.tree_size,
            "root_hash": b64(self.root_hash),
            "timestamp": format_time(self.timestamp),
            "signature": self.signature,
        }


def _of(row: Any) -> SignedCheckpoint:
    return SignedCheckpoint(
        tree_size=int(row.tree_size),
        root_hash=bytes(row.root_hash),
        timestamp=row.timestamp,
        signature=row.signature,
    )


def latest(conn: Connection) -> SignedCheckpoint | None:
    row = conn.execute(
        select(_checkpoints).order_by(_checkpoints.c.tree_size.desc()).limit(1)
    ).first()
    return None if row is None else _of(row)


def page(
    conn: Connection, since: datetime | None, after_size: int | None, limit: int
) -> list[SignedCheckpoint]:
    """Checkpoints in tree-size order, from `since` (a time) and after `after_size` (a cursor)."""
    statement = select(_checkpoints).order_by(_checkpoints.c.tree_size).limit(limit)
    if since is not None:
        statement = statement.where(_checkpoints.c.timestamp >= since)
    if after_size is not None:
        statement = statement.where(_checkpoints.c.tree_size > after_size)
    return [_of(row) for row in conn.execute(statement)]


def sign(key: SigningKey, tree_size: int, root_hash: bytes, timestamp: datetime) -> str:
    claims = {
        "tree_size": tree_size,
        "root_hash": b64(root_hash),
        "timestamp": format_time(timestamp),
    }
    return jwt.sign(claims, key, typ=CHECKPOINT_TYP)


def issue(
    conn: Connection, key: SigningKey, tree_size: int, root_hash: bytes, now: datetime
) -> SignedCheckpoint:
    """Store a new checkpoint; its timestamp is `now`, or the last one's if the clock went back."""
    last = latest(conn)
    if last is not None and tree_size <= last.tree_size:
        raise ValueError("a checkpoint must cover more entries than the last one")
    timestamp = max(now, last.timestamp) if last is not None else now
    signature = sign(key, tree_size, root_hash, timestamp)
    made = SignedCheckpoint(tree_size, root_hash, timestamp, signature)
    conn.execute(
        _checkpoints.insert().values(
            tree_size=made.tree_size,
            root_hash=made.root_hash,
            timestamp=made.timestamp,
            signature=made.signature,
        )
    )
    return made


class CheckpointError(ValueError):
    """A checkpoint that does not verify; the message says why."""


def parse(document: Mapping[str, Any], keys: KeyResolver) -> SignedCheckpoint:
    """A checkpoint in its public form whose signature verifies and covers exactly its fields."""
    try:
        size = document["tree_size"]
        root_text = document["root_hash"]
        stamp_text = document["timestamp"]
        signature = document["signature"]
    except (KeyError, TypeError) as exc:
        raise CheckpointError("not a checkpoint: a field is missing") from exc
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise CheckpointError("tree_size is not a count")
    if not isinstance(root_text, str) or not isinstance(stamp_text, str):
        raise CheckpointError("root_hash and timestamp must be text")
    if not isinstance(signature, str):
        raise CheckpointError("signature must be a compact JWS")
    try:
        root_hash = unb64(root_text)
        timestamp = datetime.fromisoformat(stamp_text)
    except ValueError as exc:
        raise CheckpointError(f"malformed field: {exc}") from exc
    if timestamp.tzinfo is None:
        raise CheckpointError("timestamp has no time zone")
    try:
        claims = jwt.verify_signed_statement(signature, keys=keys, typ=CHECKPOINT_TYP)
    except jwt.TokenError as exc:
        raise CheckpointError(f"signature does not verify ({exc.reason})") from exc
    signed = {"tree_size": size, "root_hash": root_text, "timestamp": stamp_text}
    if claims != signed:
        raise CheckpointError("the signed payload differs from the checkpoint's fields")
    return SignedCheckpoint(size, root_hash, timestamp, signature)
