"""An entry as the audit API shows it, and the exact bytes its leaf hash is computed over.

api.md fixes both: the entry exactly as `GET /v1/audit/entries` returns it, without `leaf_hash`,
as JSON with sorted keys, separators `,` and `:`, UTF-8, no ASCII escaping. Anyone holding an
export can recompute every leaf hash, so the format here must never change.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from app.kit import merkle

FIELDS = (
    "index",
    "time",
    "actor",
    "client",
    "action",
    "target",
    "decision",
    "reasons",
    "policy_hash",
    "purpose",
    "request_id",
)


def format_time(moment: datetime) -> str:
    """UTC with microseconds, always 26 digits and a Z: what the database keeps, exactly."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime refused")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def public(row: Mapping[Any, Any]) -> dict[str, Any]:
    """The entry as the API shows it (without `leaf_hash`), from a stored row or its mapping."""
    return {
        "index": row["id"],
        "time": format_time(row["time"]),
        "actor": row["actor"],
        "client": row["client"],
        "action": row["action"],
        "target": row["target"],
        "decision": row["decision"],
        "reasons": list(row["reasons"]),
        "policy_hash": row["policy_hash"],
        "purpose": row["purpose"],
        "request_id": row["request_id"],
    }


def entry_bytes(entry: Mapping[str, Any]) -> bytes:
    """The canonical bytes of an entry in its public form."""
    return json.dumps(
        dict(entry), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


def leaf_hash(row: Mapping[Any, Any]) -> bytes:
    """The leaf hash of a stored row (or the row about to be stored)."""
    return merkle.leaf_hash(entry_bytes(public(row)))
