"""`tearline audit verify`: recompute the tree from the stored entries and check everything.

Checks, in one pass over the entries in index order:
- every index from 0 is present once (a gap is a deleted entry; an entry moved or inserted in the
  middle changes indexes, which the leaf hashes and roots give away);
- every entry's content still gives its stored leaf hash (an edited entry);
- every checkpoint, stored or saved elsewhere, is signed by a service key over exactly its
  fields (a forged one), timestamps do not go backwards as the tree grows, and the root
  recomputed from the entries at its size is the root it signed (an entry changed, inserted,
  removed or reordered before it, even with the leaf hashes and nodes rewritten to match);
- the log still reaches every checkpoint (truncation), and the service's latest checkpoint is
  not behind one saved elsewhere (a roll-back);
- the stored tree nodes that proofs are served from are the ones the entries give.
Each finding names the entry or checkpoint it is about.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Connection, Table, select

from app.audit import canonical, checkpoints, tree
from app.audit.checkpoints import CheckpointError, SignedCheckpoint
from app.audit.models import AuditEntry, Checkpoint
from app.kit import merkle
from app.kit.jwt import KeyResolver
from app.kit.merkle import NodeId

_entries = cast(Table, AuditEntry.__table__)
_checkpoints = cast(Table, Checkpoint.__table__)

CHUNK = 5000
# Findings of one kind beyond this many are counted, not listed.
MAX_LISTED = 20


@dataclass(frozen=True)
class Finding:
    kind: str
    detail: str
    entry: int | None = None
    checkpoint: int | None = None

    def __str__(self) -> str:
        if self.entry is not None:
            where = f"entry {self.entry}"
        elif self.checkpoint is not None:
            where = f"checkpoint at tree size {self.checkpoint}"
        else:
            where = "log"
        return f"{where}: {self.kind}: {self.detail}"


@dataclass
class Report:
    entries: int = 0
    checkpoints: int = 0
    saved: int = 0
    nodes: int = 0
    seconds: float = 0.0
    findings: list[Finding] = field(default_factory=list)
    unlisted: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.findings

    def add(self, finding: Finding) -> None:
        if sum(1 for f in self.findings if f.kind == finding.kind) >= MAX_LISTED:
            self.unlisted[finding.kind] = self.unlisted.get(finding.kind, 0) + 1
        else:
            self.findings.append(finding)

    @property
    def rate(self) -> float:
        return self.entries / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class _Target:
    """A root to compare with the recomputed tree when it reaches `size` leaves."""

    size: int
    root: bytes
    origin: str  # "stored" or "saved"


def _stored_checkpoints(conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(select(_checkpoints).order_by(_checkpoints.c.tree_size))
    return [
        SignedCheckpoint(int(r.tree_size), bytes(r.root_hash), r.timestamp, r.signature).public()
        for r in rows
    ]


def _check_checkpoints(
    documents: Sequence[Mapping[str, Any]], keys: KeyResolver, origin: str, report: Report
) -> list[SignedCheckpoint]:
    valid: list[SignedCheckpoint] = []
    for document in documents:
        try:
            valid.append(checkpoints.parse(document, keys))
        except CheckpointError as exc:
            size = document.get("tree_size") if isinstance(document, Mapping) else None
            report.add(
                Finding(
                    "forged",
                    f"{origin} checkpoint: {exc}",
                    checkpoint=size if isinstance(size, int) else None,
                )
            )
    valid.sort(key=lambda c: c.tree_size)
    for earlier, later in itertools.pairwise(valid):
        if later.timestamp < earlier.timestamp:
            report.add(
                Finding(
                    "rolled_back",
                    f"{origin} checkpoint is timestamped {canonical.format_time(later.timestamp)}, "
                    f"before the one at tree size {earlier.tree_size} "
                    f"({canonical.format_time(earlier.timestamp)})",
                    checkpoint=later.tree_size,
                )
            )
    return valid


def _compare_saved(
    stored: list[SignedCheckpoint], saved: list[SignedCheckpoint], report: Report
) -> None:
    by_size = {c.tree_size: c for c in stored}
    for copy in saved:
        mine = by_size.get(copy.tree_size)
        if mine is not None and mine.root_hash != copy.root_hash:
            report.add(
                Finding(
                    "forked",
                    "the service holds a checkpoint of this size with another root than the saved "
                    "copy: one of them was re-signed over other entries",
                    checkpoint=copy.tree_size,
                )
            )
    if saved and (not stored or stored[-1].tree_size < saved[-1].tree_size):
        held = stored[-1].tree_size if stored else 0
        report.add(
            Finding(
                "rolled_back",
                f"a saved checkpoint covers {saved[-1].tree_size} entries, the service's latest "
                f"only {held}: its checkpoints were rolled back",
                checkpoint=saved[-1].tree_size,
            )
        )


class _NodeCheck:
    """Compares the nodes the recomputation completes with the stored ones, in batches."""

    def __init__(self, conn: Connection, covered: int, report: Report) -> None:
        self._conn = conn
        self._covered = covered
        self._report = report
        self._pending: dict[NodeId, bytes] = {}

    def add(self, completed: list[tuple[NodeId, bytes]]) -> None:
        for (level, i), digest in completed:
            # Only nodes inside the covered size are stored yet.
            if (i + 1) << level <= self._covered:
                self._pending[(level, i)] = digest
        if len(self._pending) >= CHUNK:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        wanted, self._pending = self._pending, {}
        # The nodes completed by a run of leaves are runs of indexes per level: range scans.
        by_level: dict[int, list[int]] = {}
        for level, i in wanted:
            by_level.setdefault(level, []).append(i)
        stored: dict[NodeId, bytes] = {}
        for level, idxs in by_level.items():
            stored.update(tree.stored_range(self._conn, level, min(idxs), max(idxs)))
        self._report.nodes += len(wanted)
        for node, digest in sorted(wanted.items()):
            if stored.get(node) != digest:
                level, i = node
                first, last = i << level, ((i + 1) << level) - 1
                self._report.add(
                    Finding(
                        "node_mismatch",
                        f"stored tree node (level {level}, index {i}) "
                        + ("is missing" if node not in stored else "differs from the entries")
                        + f"; proofs over entries {first}..{last} would fail",
                    )
                )


def _check_negative(conn: Connection, report: Report) -> None:
    """Entries below index 0, where the tree has no place for them."""
    below = conn.execute(
        select(_entries.c.id).where(_entries.c.id < 0).order_by(_entries.c.id).limit(MAX_LISTED)
    ).scalars()
    for index in below:
        report.add(
            Finding("unexpected", "an entry at a negative index (inserted)", entry=int(index))
        )


def _check_roots(
    frontier: merkle.Frontier, due: Sequence[_Target], last_good: int, report: Report
) -> int:
    """Compare the checkpoints of the tree's current size with its root; the new last good size.

    A mismatch lies after the last smaller checkpoint that still holds.
    """
    matched = False
    for target in due:
        if frontier.root() == target.root:
            matched = True
            continue
        report.add(
            Finding(
                "root_mismatch",
                f"the entries no longer give the root of this {target.origin} "
                f"checkpoint: entries {last_good}..{target.size - 1} were changed, "
                "inserted, removed or reordered after it was signed",
                checkpoint=target.size,
            )
        )
    return frontier.size if matched else last_good


def verify(
    conn: Connection,
    keys: KeyResolver,
    saved: Sequence[Mapping[str, Any]] = (),
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Check the log in `conn` against its stored checkpoints and the `saved` ones."""
    started = time.perf_counter()
    report = Report()
    stored_documents = _stored_checkpoints(conn)
    report.checkpoints = len(stored_documents)
    report.saved = len(saved)
    stored = _check_checkpoints(stored_documents, keys, "stored", report)
    copies = _check_checkpoints(saved, keys, "saved", report)
    _compare_saved(stored, copies, report)
    targets: dict[int, list[_Target]] = {}
    for c in stored:
        targets.setdefault(c.tree_size, []).append(_Target(c.tree_size, c.root_hash, "stored"))
    for c in copies:
        targets.setdefault(c.tree_size, []).append(_Target(c.tree_size, c.root_hash, "saved"))

    end = tree.log_size(conn)
    covered = tree.tree_size(conn)
    _check_negative(conn, report)
    nodes = _NodeCheck(conn, covered, report)
    frontier = merkle.Frontier()
    expected = 0
    last_good = 0
    after = -1
    while True:
        rows = conn.execute(
            select(_entries)
            .where(_entries.c.id > after, _entries.c.id < end)
            .order_by(_entries.c.id)
            .limit(CHUNK)
        ).all()
        if not rows:
            break
        for row in rows:
            index = int(row.id)
            if index != expected:
                report.add(
                    Finding(
                        "missing",
                        f"entries {expected}..{index - 1} are not in the log (deleted)"
                        if index - 1 > expected
                        else "this entry is not in the log (deleted)",
                        entry=expected,
                    )
                )
            expected = index + 1
            leaf = canonical.leaf_hash(row._mapping)
            if bytes(row.leaf_hash) != leaf:
                report.add(
                    Finding("edited", "its content no longer gives its leaf hash", entry=index)
                )
            nodes.add(frontier.append(leaf))
            last_good = _check_roots(frontier, targets.get(frontier.size, ()), last_good, report)
        after = int(rows[-1].id)
        report.entries = frontier.size
        if progress is not None:
            progress(frontier.size, end)
    nodes.flush()
    for size in sorted(targets):
        if size > frontier.size:
            report.add(
                Finding(
                    "truncated",
                    f"the log holds {frontier.size} entries, fewer than this checkpoint covers",
                    checkpoint=size,
                )
            )
    if covered > end and not any(size > frontier.size for size in targets):
        # No checkpoint covered the lost tail yet, but the stored tree did.
        report.add(
            Finding(
                "truncated",
                f"the stored tree covers {covered} entries but the log holds {end}: "
                f"entries {end}..{covered - 1} were removed",
            )
        )
    report.entries = frontier.size
    report.seconds = time.perf_counter() - started
    return report
