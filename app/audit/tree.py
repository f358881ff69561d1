"""The Merkle tree over the audit log, kept in stored perfect subtrees.

Entries carry their leaf hashes (level 0). The maintainer (`integrate`) adds the hash of every
perfect subtree the new leaves complete (levels 1 and up) and records how far it got, so that any
root, inclusion proof or consistency proof up to that size is read from O(log n) stored nodes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

from sqlalchemy import Connection, Table, and_, or_, select, text, update

from app.audit.models import AuditEntry, AuditNode, AuditTree
from app.kit import merkle
from app.kit.merkle import NodeId

_entries = cast(Table, AuditEntry.__table__)
_nodes = cast(Table, AuditNode.__table__)
_tree = cast(Table, AuditTree.__table__)

# One maintainer at a time on PostgreSQL ("TLTREE" in ASCII); others skip their turn.
_TREE_LOCK = 0x544C54524545
# Leaves integrated per transaction: short enough not to hold SQLite's writer for long.
BATCH = 5000


class TreeError(Exception):
    """The stored tree cannot answer: a node it should hold is missing."""


def log_size(conn: Connection) -> int:
    """The number of committed entries (their indexes are 0 .. size - 1, without gaps)."""
    last = conn.execute(select(_entries.c.id).order_by(_entries.c.id.desc()).limit(1)).scalar()
    return 0 if last is None else int(last) + 1


def tree_size(conn: Connection) -> int:
    """How many leaves the stored nodes cover."""
    return int(conn.execute(select(_tree.c.size).where(_tree.c.id == 1)).scalar_one())


def load_nodes(conn: Connection, ids: Iterable[NodeId]) -> dict[NodeId, bytes]:
    """The stored hashes of `ids` (level 0 from the entries); TreeError if one is missing."""
    wanted = set(ids)
    leaves = sorted(i for level, i in wanted if level == 0)
    inner = sorted((level, i) for level, i in wanted if level > 0)
    found: dict[NodeId, bytes] = {}
    if leaves:
        hashed = conn.execute(
            select(_entries.c.id, _entries.c.leaf_hash).where(_entries.c.id.in_(leaves))
        )
        found.update({(0, int(i)): bytes(h) for i, h in hashed})
    if inner:
        found.update(_stored_nodes(conn, inner))
    missing = wanted - found.keys()
    if missing:
        raise TreeError(f"the stored tree lacks {len(missing)} node(s), e.g. {min(missing)}")
    return found


def _stored_nodes(conn: Connection, ids: list[NodeId]) -> dict[NodeId, bytes]:
    # One `level = l AND idx IN (...)` per level, OR-ed: both databases look each up in the
    # primary key (a row-value IN list makes SQLite scan the whole table).
    by_level: dict[int, list[int]] = {}
    for level, i in ids:
        by_level.setdefault(level, []).append(i)
    wanted = or_(
        *(and_(_nodes.c.level == level, _nodes.c.idx.in_(idxs)) for level, idxs in by_level.items())
    )
    rows = conn.execute(select(_nodes.c.level, _nodes.c.idx, _nodes.c.hash).where(wanted))
    return {(int(level), int(i)): bytes(h) for level, i, h in rows}


def stored_range(conn: Connection, level: int, first: int, last: int) -> dict[NodeId, bytes]:
    """The stored nodes of one level with index in [first, last] (a range scan of the key)."""
    rows = conn.execute(
        select(_nodes.c.idx, _nodes.c.hash).where(
            _nodes.c.level == level, _nodes.c.idx >= first, _nodes.c.idx <= last
        )
    )
    return {(level, int(i)): bytes(h) for i, h in rows}


def root(conn: Connection, size: int) -> bytes:
    """The root hash over the first `size` entries (size <= tree_size)."""
    ids = merkle.root_nodes(size)
    return merkle.root_from(size, load_nodes(conn, ids))


def inclusion(conn: Connection, index: int, size: int) -> tuple[bytes, list[bytes]]:
    """The leaf hash of entry `index` and its inclusion path in the tree of `size` leaves."""
    nodes = load_nodes(conn, [(0, index), *merkle.inclusion_nodes(index, size)])
    return nodes[(0, index)], merkle.inclusion_path(index, size, nodes)


def consistency(conn: Connection, first: int, second: int) -> list[bytes]:
    """The consistency path from the tree of `first` leaves to the tree of `second`."""
    nodes = load_nodes(conn, merkle.consistency_nodes(first, second))
    return merkle.consistency_path(first, second, nodes)


def _lock(conn: Connection) -> bool:
    if conn.dialect.name != "postgresql":
        return True  # the transaction already holds SQLite's one writer
    taken = conn.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": _TREE_LOCK})
    return bool(taken.scalar_one())


def integrate(conn: Connection, limit: int | None = None) -> int | None:
    """Add the nodes of up to `limit` new leaves; the size covered, or None if busy elsewhere.

    Runs in the caller's write transaction. Entries are read in index order; since indexes are
    given at commit without gaps, the committed entries are always a prefix of the log.
    """
    if not _lock(conn):
        return None
    size = tree_size(conn)
    rows = conn.execute(
        select(_entries.c.id, _entries.c.leaf_hash)
        .where(_entries.c.id >= size)
        .order_by(_entries.c.id)
        .limit(limit or BATCH)
    ).all()
    if not rows:
        return size
    ids = merkle.frontier(size)
    stored = load_nodes(conn, ids)
    frontier = merkle.Frontier(size, [stored[i] for i in ids])
    completed: list[dict[str, object]] = []
    for index, leaf in rows:
        if index != frontier.size:
            raise TreeError(f"entry {frontier.size} is missing from the log")
        for (level, i), digest in frontier.append(bytes(leaf)):
            completed.append({"level": level, "idx": i, "hash": digest})
    if completed:
        conn.execute(_nodes.insert(), completed)
    conn.execute(update(_tree).where(_tree.c.id == 1).values(size=frontier.size))
    return frontier.size
