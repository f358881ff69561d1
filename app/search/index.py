"""The blind index: a keyed HMAC of each normalised entity value, one derived key per type.

The index key comes from the keyring and is used for nothing else: per entity type a key is
derived from it (HKDF, label `tearline/blind-index/v1/<type>`), so a digest of an IBAN can never
be compared with a digest of a name, and the index table reveals no value without the key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection, Table, delete, select

from app.db import PreparedInsert
from app.errors import Unprocessable
from app.kit import crypto
from app.kit.crypto import SecretBytes
from app.search.models import EntityIndex
from app.search.normalize import ENTITY_TYPES, InvalidEntity, normalize

_LABEL = "tearline/blind-index/v1/"
_index = cast(Table, EntityIndex.__table__)
_INSERT = PreparedInsert(_index, ["report_id", "entity_type", "digest", "key_id", "originator"])


@dataclass(frozen=True, order=True)
class IndexEntry:
    """One entity as indexed: its type and the digest of its normalised value."""

    entity_type: str
    digest: bytes


class BlindIndex:
    """Computes the digests of entity values under one index key."""

    def __init__(self, index_key: SecretBytes) -> None:
        # Names the key in every row it made, without revealing it: rows of an older key are
        # what `tearline search reindex` rebuilds after a rotation.
        self.key_id = crypto.hmac_sha256(index_key, b"tearline/blind-index/key-id").hex()[:16]
        self._keys = {t: crypto.derive_key(index_key, _LABEL + t) for t in ENTITY_TYPES}

    def __repr__(self) -> str:
        return f"BlindIndex(key_id={self.key_id!r})"

    def entry(self, entity_type: str, value: str) -> IndexEntry:
        """The index entry of one value; InvalidEntity if it is not a valid entity of its type."""
        canonical = normalize(entity_type, value)
        return IndexEntry(
            entity_type, crypto.hmac_sha256(self._keys[entity_type], canonical.encode())
        )

    def entries(self, entities: Sequence[Any], loc: Sequence[str]) -> list[IndexEntry]:
        """The distinct entries of `entities` (objects with `type` and `value`), in order.

        Unprocessable, naming each invalid one at `loc` + its position, if any is invalid; the
        message never repeats a value.
        """
        out: dict[IndexEntry, None] = {}
        errors: list[dict[str, Any]] = []
        for i, entity in enumerate(entities):
            try:
                out[self.entry(entity.type, entity.value)] = None
            except InvalidEntity as exc:
                errors.append(
                    {"loc": [*loc, str(i), "value"], "msg": str(exc), "type": "invalid_entity"}
                )
        if errors:
            raise Unprocessable("An entity is not valid for its type.", errors)
        return list(out)


def replace_entries(
    conn: Connection,
    index: BlindIndex,
    report_id: str,
    originator: str,
    entries: Iterable[IndexEntry],
) -> None:
    """Make `entries` the report's index rows (its current version's entities), in the
    caller's transaction."""
    replace_batch(conn, index, {report_id: list(entries)}, {report_id: originator})


def replace_batch(
    conn: Connection,
    index: BlindIndex,
    entries: Mapping[str, Iterable[IndexEntry]],
    originators: Mapping[str, str],
) -> None:
    """`replace_entries` for several reports at once: one DELETE, one INSERT."""
    if not entries:
        return
    conn.execute(delete(_index).where(_index.c.report_id.in_(sorted(entries))))
    insert_entries(conn, index, entries, originators)


def insert_entries(
    conn: Connection,
    index: BlindIndex,
    entries: Mapping[str, Iterable[IndexEntry]],
    originators: Mapping[str, str],
) -> None:
    """Index rows for reports that have none yet (each report's entries deduplicated);
    `originators` names each report's originator."""
    rows = [
        {
            "report_id": report_id,
            "entity_type": e.entity_type,
            "digest": e.digest,
            "key_id": index.key_id,
            "originator": originators[report_id],
        }
        for report_id, report_entries in entries.items()
        for e in dict.fromkeys(report_entries)
    ]
    _INSERT.run(conn, rows)


def current_entries(conn: Connection, index: BlindIndex, report_id: str) -> list[IndexEntry]:
    """The report's index rows made with the key in force."""
    rows = conn.execute(
        select(_index.c.entity_type, _index.c.digest).where(
            _index.c.report_id == report_id, _index.c.key_id == index.key_id
        )
    )
    return [IndexEntry(t, d) for t, d in rows]


def drop_entries(conn: Connection, report_id: str) -> None:
    """Forget a report's entities (purge: nothing of its content may stay findable)."""
    conn.execute(delete(_index).where(_index.c.report_id == report_id))
