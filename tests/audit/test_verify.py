"""`verify()`: an untouched log verifies clean, and whatever the database's owner changes behind
the service's back is diagnosed: the kind of finding, and the entry or checkpoint it names."""

from __future__ import annotations

import base64
import functools
import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import Connection, Table, delete, insert, select, text, update
from sqlalchemy.exc import DBAPIError

from app.audit import canonical, checkpoints, tree
from app.audit import service as audit
from app.audit import verify as verifier
from app.audit.models import AuditEntry, AuditNode, Checkpoint
from app.audit.verify import Finding, Report
from app.db import transaction, utcnow
from app.kit import merkle
from app.kit.jwt import SigningKey
from tests.audit.conftest import maintain, maintain_all
from tests.conftest import World, drop_database, make_world

entries = cast(Table, AuditEntry.__table__)
nodes = cast(Table, AuditNode.__table__)
stored_checkpoints = cast(Table, Checkpoint.__table__)

ACTOR = audit.Actor(member="ITA", client="ITA.test")
APPEND_ONLY = ("audit_entries", "audit_nodes", "audit_checkpoints")
# Every column of an entry but its index and its leaf hash: what "the content" of an entry is.
CONTENT = tuple(c.name for c in entries.c if c.name not in {"id", "leaf_hash"})
PROOF_RANGE = re.compile(r"entries (\d+)\.\.(\d+)")


# -- tampering as the database's owner -------------------------------------------------------


@contextmanager
def as_dba(world: World) -> Iterator[Connection]:
    """A transaction that gets past the append-only triggers, as the database's owner can.

    PostgreSQL: replica mode (superuser only) fires no ordinary trigger for this transaction.
    SQLite: the triggers are dropped, and made again from their own SQL before the commit.
    """
    with world.state.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SET LOCAL session_replication_role = replica"))
            yield conn
            return
        triggers = conn.execute(
            text(
                "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' "
                "AND tbl_name IN ('audit_entries', 'audit_nodes', 'audit_checkpoints')"
            )
        ).all()
        assert len(triggers) == 2 * len(APPEND_ONLY), triggers
        for name, _ in triggers:
            conn.execute(text(f'DROP TRIGGER "{name}"'))
        yield conn
        for _, sql in triggers:
            conn.execute(text(sql))


def content_of(conn: Connection, index: int) -> dict[str, Any]:
    row = conn.execute(select(entries).where(entries.c.id == index)).one()
    return {name: row._mapping[name] for name in CONTENT}


def rehash(conn: Connection, indexes: Sequence[int]) -> None:
    """Give entries the leaf hashes of their present content, as a careful forger would."""
    for index in indexes:
        row = conn.execute(select(entries).where(entries.c.id == index)).one()
        conn.execute(
            update(entries)
            .where(entries.c.id == index)
            .values(leaf_hash=canonical.leaf_hash(row._mapping))
        )


def rebuild_nodes(conn: Connection) -> None:
    """Replace every stored tree node by the one the present leaf hashes give."""
    covered = tree.tree_size(conn)
    leaves = conn.execute(
        select(entries.c.leaf_hash).where(entries.c.id < covered).order_by(entries.c.id)
    ).scalars()
    frontier = merkle.Frontier()
    rebuilt = [
        {"level": level, "idx": i, "hash": digest}
        for leaf in leaves
        for (level, i), digest in frontier.append(bytes(leaf))
    ]
    conn.execute(delete(nodes))
    conn.execute(insert(nodes), rebuilt)


def shift_up(conn: Connection, start: int) -> None:
    """Move entries `start`, `start + 1`, ... one index up (last first: the index is a key)."""
    later = conn.execute(
        select(entries.c.id).where(entries.c.id >= start).order_by(entries.c.id.desc())
    ).scalars()
    for index in list(later):
        conn.execute(update(entries).where(entries.c.id == index).values(id=index + 1))


# -- building a log ----------------------------------------------------------------------------


def grow(world: World, count: int, tag: str = "verify") -> None:
    """`count` entries of distinct content, committed in one transaction."""
    with transaction(world.state.sessionmaker) as session:
        for n in range(count):
            audit.record(session, ACTOR, audit.Entry("test.verify", "allow", f"test:{tag}-{n}"))


def checkpoint(world: World) -> int:
    """Bring the tree up to date and issue a checkpoint over the whole log: its size."""
    progress = maintain_all(world)
    assert progress is not None
    assert progress.checkpoint is not None
    return progress.checkpoint.tree_size


def log_size(world: World) -> int:
    with world.state.engine.connect() as conn:
        return tree.log_size(conn)


def saved_copies(world: World) -> list[dict[str, Any]]:
    """The stored checkpoints as a chair keeps them (the API's form)."""
    with world.state.engine.connect() as conn:
        return [c.public() for c in checkpoints.page(conn, None, None, 1000)]


def run_verify(world: World, saved: Sequence[dict[str, Any]] = ()) -> Report:
    with world.state.engine.connect() as conn:
        return verifier.verify(conn, world.state.verification_keys, saved)


def named(report: Report, *kinds: str) -> list[tuple[str, int | None, int | None]]:
    """(kind, entry, checkpoint) of the findings of `kinds` (all kinds if none given)."""
    return [
        (f.kind, f.entry, f.checkpoint) for f in report.findings if not kinds or f.kind in kinds
    ]


def kinds(report: Report) -> set[str]:
    return {f.kind for f in report.findings}


def only(report: Report) -> Finding:
    assert len(report.findings) == 1, [str(f) for f in report.findings]
    return report.findings[0]


@dataclass
class Log:
    """A log with two checkpoints and a tail they do not cover yet.

    [0, first) under both checkpoints, [first, second) under the latest only, [second, size)
    under none (the maintainer has not got to it).
    """

    world: World
    first: int
    second: int
    size: int

    @property
    def middle(self) -> int:
        """An entry between the two checkpoints: under the latest one, not the first."""
        return self.first + 2


@pytest.fixture
def eager(tmp_path: Path) -> Iterator[World]:
    """A world where one entry of growth is enough for a checkpoint: every step issues one."""
    world = make_world(tmp_path, audit_checkpoint_entries=1)
    yield world
    world.close()
    drop_database(world.settings.resolved_database_url)


@pytest.fixture
def log(eager: World) -> Log:
    world = eager
    created = world.submit("ITA")
    assert world.get("DEU", created["id"]).status_code == 200
    grow(world, 5, "first")
    first = checkpoint(world)
    grow(world, 6, "second")
    second = checkpoint(world)
    grow(world, 3, "tail")
    return Log(world, first, second, log_size(world))


# -- the untouched log --------------------------------------------------------------------


class TestUntouchedLog:
    def test_an_untouched_log_verifies_without_findings(self, log: Log) -> None:
        report = run_verify(log.world)

        assert report.findings == []
        assert report.ok
        assert (report.entries, report.checkpoints) == (log.size, 2)
        assert report.nodes > 0

    def test_an_untouched_log_verifies_against_saved_copies_of_its_checkpoints(
        self, log: Log
    ) -> None:
        report = run_verify(log.world, saved_copies(log.world))

        assert report.findings == []
        assert report.saved == 2

    def test_a_log_kept_in_many_small_steps_with_a_clock_going_back_verifies_clean(
        self, eager: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        world = eager
        # Three leaves per maintenance step, and verification in chunks of seven entries, so
        # that steps, chunks and stored subtrees all end at different places.
        monkeypatch.setattr(tree, "BATCH", 3)
        monkeypatch.setattr(tree, "integrate", functools.partial(tree.integrate, limit=3))
        monkeypatch.setattr(verifier, "CHUNK", 7)
        start = utcnow()
        # Minutes after start, then before the last checkpoint: timestamps must not follow.
        clock = [10, 20, 5, 30, 1, 40]
        issued = []
        for step, minutes in enumerate(clock):
            grow(world, 4 + step, f"step{step}")
            pending = True
            while pending:
                progress = maintain(world, now=start + timedelta(minutes=minutes))
                assert progress is not None
                if progress.checkpoint is not None:
                    issued.append(progress.checkpoint)
                pending = progress.pending

        report = run_verify(world, saved_copies(world))

        assert report.findings == []
        assert report.checkpoints == len(issued) > len(clock)
        stamps = [c.timestamp for c in issued]
        assert stamps == sorted(stamps)
        assert report.entries == log_size(world) == issued[-1].tree_size

    def test_progress_is_reported_up_to_the_whole_log(self, log: Log) -> None:
        seen: list[tuple[int, int]] = []
        with log.world.state.engine.connect() as conn:
            verifier.verify(
                conn,
                log.world.state.verification_keys,
                progress=lambda done, total: seen.append((done, total)),
            )

        assert seen[-1] == (log.size, log.size)


# -- entries changed ----------------------------------------------------------------------


class TestEditedEntry:
    def test_an_edited_entry_is_named_and_the_checkpoint_over_it_fails(self, log: Log) -> None:
        k = log.middle
        with as_dba(log.world) as conn:
            conn.execute(update(entries).where(entries.c.id == k).values(decision="deny"))

        report = run_verify(log.world)

        assert named(report, "edited", "root_mismatch") == [
            ("edited", k, None),
            ("root_mismatch", None, log.second),
        ]
        (edited,) = (f for f in report.findings if f.kind == "edited")
        assert str(edited) == f"entry {k}: edited: its content no longer gives its leaf hash"
        # The stored nodes above the entry no longer match either; each one says so.
        assert kinds(report) == {"edited", "root_mismatch", "node_mismatch"}
        for finding in report.findings:
            if finding.kind == "node_mismatch":
                first, last = map(int, PROOF_RANGE.findall(finding.detail)[0])
                assert first <= k <= last

    @pytest.mark.parametrize("where", ["under_both_checkpoints", "under_the_latest_only"])
    def test_an_edit_with_leaf_hash_and_nodes_rewritten_is_caught_by_the_checkpoint_roots(
        self, log: Log, where: str
    ) -> None:
        k = 3 if where == "under_both_checkpoints" else log.middle
        with as_dba(log.world) as conn:
            conn.execute(update(entries).where(entries.c.id == k).values(target="report:other"))
            rehash(conn, [k])
            rebuild_nodes(conn)

        report = run_verify(log.world)

        if where == "under_both_checkpoints":
            expected = [
                (log.first, f"entries 0..{log.first - 1}"),
                (log.second, f"entries 0..{log.second - 1}"),
            ]
        else:
            expected = [(log.second, f"entries {log.first}..{log.second - 1}")]
        assert [(f.kind, f.checkpoint) for f in report.findings] == [
            ("root_mismatch", size) for size, _ in expected
        ]
        for finding, (size, entry_range) in zip(report.findings, expected, strict=True):
            assert str(finding) == (
                f"checkpoint at tree size {size}: root_mismatch: the entries no longer give the "
                f"root of this stored checkpoint: {entry_range} were changed, inserted, removed "
                "or reordered after it was signed"
            )

    def test_an_edit_after_the_latest_checkpoint_is_still_caught_by_its_leaf_hash(
        self, log: Log
    ) -> None:
        k = log.size - 1
        with as_dba(log.world) as conn:
            conn.execute(update(entries).where(entries.c.id == k).values(actor="DEU"))

        assert named(run_verify(log.world)) == [("edited", k, None)]


class TestDeletedEntry:
    def test_an_entry_deleted_in_the_middle_is_named_as_missing(self, log: Log) -> None:
        k = log.middle
        with as_dba(log.world) as conn:
            conn.execute(delete(entries).where(entries.c.id == k))

        report = run_verify(log.world)

        assert named(report, "missing", "root_mismatch") == [
            ("missing", k, None),
            ("root_mismatch", None, log.second),
        ]
        assert str(report.findings[0]) == (
            f"entry {k}: missing: this entry is not in the log (deleted)"
        )
        assert kinds(report) <= {"missing", "root_mismatch", "node_mismatch"}

    def test_several_entries_deleted_together_are_named_as_one_range(self, log: Log) -> None:
        k = log.middle
        with as_dba(log.world) as conn:
            conn.execute(delete(entries).where(entries.c.id.in_([k, k + 1, k + 2])))

        report = run_verify(log.world)

        assert named(report, "missing") == [("missing", k, None)]
        assert report.findings[0].detail == (f"entries {k}..{k + 2} are not in the log (deleted)")
        assert ("root_mismatch", None, log.second) in named(report)

    def test_the_first_entry_deleted_is_named_as_missing(self, log: Log) -> None:
        with as_dba(log.world) as conn:
            conn.execute(delete(entries).where(entries.c.id == 0))

        report = run_verify(log.world)

        assert named(report, "missing") == [("missing", 0, None)]
        assert named(report, "root_mismatch") == [
            ("root_mismatch", None, log.first),
            ("root_mismatch", None, log.second),
        ]


class TestInsertedEntry:
    def forge_at(self, conn: Connection, k: int) -> None:
        shift_up(conn, k)
        forged = {**audit.row(ACTOR, audit.Entry("report.read", "allow", "report:forged")), "id": k}
        forged["leaf_hash"] = canonical.leaf_hash(forged)
        conn.execute(insert(entries), [forged])

    def test_an_inserted_entry_shows_in_the_later_entries_whose_index_moved(self, log: Log) -> None:
        k = log.middle
        with as_dba(log.world) as conn:
            self.forge_at(conn, k)

        report = run_verify(log.world)

        # The forged entry carries a right leaf hash; every entry pushed up does not.
        assert named(report, "edited") == [("edited", i, None) for i in range(k + 1, log.size + 1)]
        assert named(report, "root_mismatch") == [("root_mismatch", None, log.second)]
        assert kinds(report) == {"edited", "root_mismatch", "node_mismatch"}

    def test_an_inserted_entry_with_every_hash_rewritten_is_caught_by_the_checkpoint_root(
        self, log: Log
    ) -> None:
        k = log.middle
        with as_dba(log.world) as conn:
            self.forge_at(conn, k)
            rehash(conn, range(k + 1, log.size + 1))
            rebuild_nodes(conn)

        report = run_verify(log.world)

        finding = only(report)
        assert (finding.kind, finding.checkpoint) == ("root_mismatch", log.second)
        assert f"entries {log.first}..{log.second - 1} were changed" in finding.detail


class TestReorderedEntries:
    def swap(self, conn: Connection, i: int, j: int) -> None:
        first, second = content_of(conn, i), content_of(conn, j)
        conn.execute(update(entries).where(entries.c.id == i).values(**second))
        conn.execute(update(entries).where(entries.c.id == j).values(**first))

    def test_two_swapped_entries_are_both_named(self, log: Log) -> None:
        i, j = log.middle, log.middle + 2
        with as_dba(log.world) as conn:
            self.swap(conn, i, j)

        report = run_verify(log.world)

        assert named(report, "edited", "root_mismatch") == [
            ("edited", i, None),
            ("edited", j, None),
            ("root_mismatch", None, log.second),
        ]

    def test_two_swapped_entries_with_every_hash_rewritten_are_caught_by_the_checkpoint_root(
        self, log: Log
    ) -> None:
        i, j = log.middle, log.middle + 2
        with as_dba(log.world) as conn:
            self.swap(conn, i, j)
            rehash(conn, [i, j])
            rebuild_nodes(conn)

        report = run_verify(log.world)

        finding = only(report)
        assert (finding.kind, finding.checkpoint) == ("root_mismatch", log.second)
        assert f"entries {log.first}..{log.second - 1} were changed" in finding.detail


class TestTruncatedLog:
    def test_entries_deleted_from_the_end_past_a_checkpoint_are_named_as_truncation(
        self, log: Log
    ) -> None:
        keep = log.middle
        with as_dba(log.world) as conn:
            conn.execute(delete(entries).where(entries.c.id >= keep))

        report = run_verify(log.world)

        finding = only(report)
        assert (finding.kind, finding.checkpoint) == ("truncated", log.second)
        assert str(finding) == (
            f"checkpoint at tree size {log.second}: truncated: the log holds {keep} entries, "
            "fewer than this checkpoint covers"
        )

    def test_a_log_truncated_below_both_checkpoints_names_both(self, log: Log) -> None:
        with as_dba(log.world) as conn:
            conn.execute(delete(entries).where(entries.c.id >= 4))

        report = run_verify(log.world)

        assert named(report) == [
            ("truncated", None, log.first),
            ("truncated", None, log.second),
        ]

    def test_a_tail_no_checkpoint_covers_yet_can_go_unnoticed(self, log: Log) -> None:
        # The limit of any log: what no checkpoint covers yet, nothing can vouch for.
        with as_dba(log.world) as conn:
            conn.execute(delete(entries).where(entries.c.id >= log.second))

        assert run_verify(log.world).findings == []


# -- checkpoints changed ------------------------------------------------------------------


def _resign_payload(signature: str, **changes: Any) -> str:
    """The same JWS header and signature over a payload with `changes` made."""
    header, payload, tail = signature.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    edited = base64.urlsafe_b64encode(json.dumps(claims, separators=(",", ":")).encode())
    return f"{header}.{edited.rstrip(b'=').decode()}.{tail}"


class TestForgedCheckpoint:
    FORGERIES = ("signed_by_another_key", "payload_edited", "root_hash_changed", "time_changed")

    @pytest.mark.parametrize("forgery", FORGERIES)
    def test_a_forged_checkpoint_is_named_as_forged(self, log: Log, forgery: str) -> None:
        world = log.world
        with world.state.engine.connect() as conn:
            latest = checkpoints.latest(conn)
            assert latest is not None
            other_root = tree.root(conn, log.first)
        change: dict[str, Any]
        if forgery == "signed_by_another_key":
            # Over exactly the stored fields, under the service key's own kid: only the key that
            # signed differs.
            impostor = SigningKey.generate(world.state.signing_key.kid)
            signature = checkpoints.sign(impostor, log.second, other_root, latest.timestamp)
            change = {"signature": signature, "root_hash": other_root}
        elif forgery == "payload_edited":
            signature = _resign_payload(latest.signature, root_hash=checkpoints.b64(other_root))
            change = {"signature": signature, "root_hash": other_root}
        elif forgery == "root_hash_changed":
            change = {"root_hash": other_root}
        else:
            change = {"timestamp": latest.timestamp + timedelta(days=1)}
        with as_dba(world) as conn:
            conn.execute(
                update(stored_checkpoints)
                .where(stored_checkpoints.c.tree_size == log.second)
                .values(**change)
            )

        report = run_verify(world)

        finding = only(report)
        assert (finding.kind, finding.checkpoint) == ("forged", log.second)
        if forgery in {"signed_by_another_key", "payload_edited"}:
            assert finding.detail.startswith("stored checkpoint: signature does not verify")
        else:
            assert finding.detail == (
                "stored checkpoint: the signed payload differs from the checkpoint's fields"
            )

    def test_a_checkpoint_added_with_another_key_is_named_as_forged_not_as_truncation(
        self, log: Log
    ) -> None:
        world = log.world
        impostor = SigningKey.generate("impostor-1")
        size = log.size + 100
        with world.state.engine.begin() as conn:  # an INSERT: no trigger to get past
            conn.execute(
                insert(stored_checkpoints).values(
                    tree_size=size,
                    root_hash=b"\x07" * 32,
                    timestamp=utcnow(),
                    signature=checkpoints.sign(impostor, size, b"\x07" * 32, utcnow()),
                )
            )

        finding = only(run_verify(world))

        assert (finding.kind, finding.checkpoint) == ("forged", size)
        assert finding.detail.startswith("stored checkpoint: signature does not verify")

    def test_a_saved_copy_that_was_edited_is_named_as_forged(self, log: Log) -> None:
        saved = saved_copies(log.world)
        saved[0]["root_hash"] = checkpoints.b64(b"\x01" * 32)

        finding = only(run_verify(log.world, saved))

        assert (finding.kind, finding.checkpoint) == ("forged", log.first)
        assert finding.detail == (
            "saved checkpoint: the signed payload differs from the checkpoint's fields"
        )


class TestRolledBackCheckpoints:
    def test_deleted_latest_checkpoints_are_named_against_a_saved_copy(self, log: Log) -> None:
        saved = saved_copies(log.world)
        with as_dba(log.world) as conn:
            conn.execute(delete(stored_checkpoints).where(stored_checkpoints.c.tree_size > 0))

        report = run_verify(log.world, saved)

        finding = only(report)
        assert (finding.kind, finding.checkpoint) == ("rolled_back", log.second)
        assert str(finding) == (
            f"checkpoint at tree size {log.second}: rolled_back: a saved checkpoint covers "
            f"{log.second} entries, the service's latest only 0: its checkpoints were rolled back"
        )

    def test_the_latest_checkpoint_deleted_is_named_against_a_saved_copy(self, log: Log) -> None:
        saved = saved_copies(log.world)
        with as_dba(log.world) as conn:
            conn.execute(
                delete(stored_checkpoints).where(stored_checkpoints.c.tree_size == log.second)
            )

        finding = only(run_verify(log.world, saved))

        assert (finding.kind, finding.checkpoint) == ("rolled_back", log.second)
        assert f"the service's latest only {log.first}" in finding.detail

    def test_log_and_checkpoints_rolled_back_together_are_named_against_a_saved_copy(
        self, log: Log
    ) -> None:
        saved = saved_copies(log.world)
        with as_dba(log.world) as conn:
            conn.execute(
                delete(stored_checkpoints).where(stored_checkpoints.c.tree_size == log.second)
            )
            conn.execute(delete(entries).where(entries.c.id >= log.first))

        report = run_verify(log.world, saved)

        # Without the saved copy every stored checkpoint still holds; only the stored tree, which
        # covered the removed tail (the DBA left audit_tree as it was), gives the cut away.
        assert named(run_verify(log.world)) == [("truncated", None, None)]
        assert named(report) == [
            ("rolled_back", None, log.second),
            ("truncated", None, log.second),
        ]

    def test_a_checkpoint_timestamped_before_an_earlier_one_is_named_as_rolled_back(
        self, log: Log
    ) -> None:
        world = log.world
        with world.state.engine.begin() as conn:
            size = tree.integrate(conn)
            assert size == log.size
            earlier = checkpoints.latest(conn)
            assert earlier is not None
            back = earlier.timestamp - timedelta(hours=1)
            # Signed with the service's own key: only the order of the timestamps is wrong.
            signature = checkpoints.sign(world.state.signing_key, size, tree.root(conn, size), back)
            conn.execute(
                insert(stored_checkpoints).values(
                    tree_size=size,
                    root_hash=tree.root(conn, size),
                    timestamp=back,
                    signature=signature,
                )
            )

        finding = only(run_verify(world))

        assert (finding.kind, finding.checkpoint) == ("rolled_back", size)
        assert finding.detail == (
            f"stored checkpoint is timestamped {canonical.format_time(back)}, before the one at "
            f"tree size {log.second} ({canonical.format_time(earlier.timestamp)})"
        )


class TestForkedCheckpoint:
    def test_a_checkpoint_resigned_over_edited_entries_is_named_against_a_saved_copy(
        self, log: Log
    ) -> None:
        # The worst case: the DBA holds the service key, rewrites an entry, every hash and node,
        # and re-signs the checkpoint. Only a copy kept outside the service can tell.
        world = log.world
        saved = saved_copies(world)
        k = log.middle
        with as_dba(world) as conn:
            conn.execute(update(entries).where(entries.c.id == k).values(decision="deny"))
            rehash(conn, [k])
            rebuild_nodes(conn)
            root = tree.root(conn, log.second)
            old = checkpoints.latest(conn)
            assert old is not None
            conn.execute(
                update(stored_checkpoints)
                .where(stored_checkpoints.c.tree_size == log.second)
                .values(
                    root_hash=root,
                    signature=checkpoints.sign(
                        world.state.signing_key, log.second, root, old.timestamp
                    ),
                )
            )

        assert run_verify(world).findings == []
        report = run_verify(world, saved)

        assert named(report) == [
            ("forked", None, log.second),
            ("root_mismatch", None, log.second),
        ]
        forked, mismatch = report.findings
        assert forked.detail == (
            "the service holds a checkpoint of this size with another root than the saved copy: "
            "one of them was re-signed over other entries"
        )
        # The range is the one since the last checkpoint the entries still give (the first):
        # the stored checkpoint of the same size, which they give now, does not vouch for it.
        assert mismatch.detail == (
            "the entries no longer give the root of this saved checkpoint: entries "
            f"{log.first}..{log.second - 1} were changed, inserted, removed or reordered after "
            "it was signed"
        )


# -- stored tree nodes changed --------------------------------------------------------------


class TestTreeNodes:
    @pytest.mark.parametrize("level", [1, 2, 3])
    def test_an_altered_node_is_named_with_the_entries_whose_proofs_it_breaks(
        self, log: Log, level: int
    ) -> None:
        with as_dba(log.world) as conn:
            changed = conn.execute(
                update(nodes)
                .where(nodes.c.level == level, nodes.c.idx == 0)
                .values(hash=b"\x00" * 32)
            )
            assert changed.rowcount == 1

        finding = only(run_verify(log.world))

        last = (1 << level) - 1
        assert (finding.kind, finding.entry, finding.checkpoint) == ("node_mismatch", None, None)
        assert str(finding) == (
            f"log: node_mismatch: stored tree node (level {level}, index 0) differs from the "
            f"entries; proofs over entries 0..{last} would fail"
        )

    def test_a_deleted_node_is_named_as_missing_from_the_tree(self, log: Log) -> None:
        with as_dba(log.world) as conn:
            conn.execute(delete(nodes).where(nodes.c.level == 1, nodes.c.idx == 1))

        finding = only(run_verify(log.world))

        assert finding.kind == "node_mismatch"
        assert finding.detail == (
            "stored tree node (level 1, index 1) is missing; proofs over entries 2..3 would fail"
        )


class TestTamperingHelper:
    def test_the_append_only_triggers_are_back_after_tampering(self, log: Log) -> None:
        with as_dba(log.world) as conn:
            conn.execute(update(entries).where(entries.c.id == 0).values(decision="deny"))

        with pytest.raises(DBAPIError, match="append-only"), log.world.state.engine.begin() as conn:
            conn.execute(update(entries).where(entries.c.id == 1).values(decision="deny"))
        assert named(run_verify(log.world), "edited") == [("edited", 0, None)]
