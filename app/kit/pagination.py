"""Opaque cursors for newest-first pages ordered by (timestamp, id)."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime


def encode_position(stamp: datetime, item_id: str) -> str:
    """An opaque cursor pointing after the item at (`stamp`, `item_id`)."""
    raw = json.dumps([stamp.isoformat(), item_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_position(cursor: str) -> tuple[datetime, str]:
    """The (timestamp, id) in a cursor made by encode_position; ValueError otherwise."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, item_id = json.loads(raw)
        position = datetime.fromisoformat(stamp)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise ValueError("not a cursor of ours") from exc
    if position.tzinfo is None or not isinstance(item_id, str):
        raise ValueError("not a cursor of ours")
    return position, item_id
