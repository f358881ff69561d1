"""The sync feed: every event a member may learn of, in commit order, resumable from a cursor.

A cursor is the position of the last event the caller's page passed (shown or not), sealed
under a key derived from the keyring: in clear, positions would tell every member how many
events there are in all, including those about reports it cannot see.
"""

from __future__ import annotations

import base64
import binascii
import struct
from typing import Any

from sqlalchemy import Connection

from app.keys.provider import KeyProvider, UnknownKeyVersion
from app.kit import crypto
from app.kit.crypto import CorruptionError, SecretBytes
from app.policy.service import PolicyState
from app.webhooks import delivery

# Events examined per page at most: a page may come back short (even empty) with a cursor
# further on, so that a member that may learn of little never makes one request scan everything.
MAX_SCAN = 5000
_BATCH = 500
_AAD = b"tearline sync cursor"


def _cursor_key(keys: KeyProvider, version: int) -> SecretBytes:
    return crypto.derive_key(keys.master_key(version), "sync-cursor")


def seal_cursor(keys: KeyProvider, position: int) -> str:
    """An opaque cursor for `position`."""
    version = keys.current_master_version()
    blob = crypto.aead_encrypt(_cursor_key(keys, version), struct.pack(">Q", position), _AAD)
    return f"{version}.{base64.urlsafe_b64encode(blob).decode().rstrip('=')}"


def open_cursor(keys: KeyProvider, cursor: str) -> int:
    """The position in a cursor made by seal_cursor; ValueError for anything else."""
    try:
        version_text, sealed = cursor.split(".", 1)
        if not version_text.isdigit() or len(version_text) > 6:
            raise ValueError("not a key version")
        version = int(version_text)
        blob = base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))
        raw = crypto.aead_decrypt(_cursor_key(keys, version), blob, _AAD)
    except (ValueError, UnknownKeyVersion, binascii.Error, CorruptionError) as exc:
        raise ValueError("not a cursor of ours") from exc
    if len(raw) != 8:
        raise ValueError("not a cursor of ours")
    return int(struct.unpack(">Q", raw)[0])


def read_feed(
    conn: Connection, state: PolicyState, member: str, after: int, limit: int
) -> tuple[list[dict[str, Any]], int]:
    """Up to `limit` events after `after` that `member` may learn of now, and where it stopped."""
    chairs = delivery.chairs_of(state)
    out: list[dict[str, Any]] = []
    position = after
    scanned = 0
    while len(out) < limit and scanned < MAX_SCAN:
        fetched = delivery.events_after(conn, position, _BATCH)
        batch = delivery.decided_prefix(conn, state.bundle.hash, fetched)
        if not batch:
            break
        levels = delivery.levels_of(
            conn, state.bundle.hash, (e.about for e in batch if e.about is not None), [member]
        )
        for event in batch:
            position = event.position
            scanned += 1
            allowed = delivery.entitlement(event, member, levels, chairs)
            if allowed is not None:
                out.append(delivery.payload(event, delivery.thin_data(event, allowed)))
                if len(out) == limit:
                    break
        if len(batch) < _BATCH:
            # The end, or an event about a report not yet decided again: this page stops here.
            break
    return out, position
