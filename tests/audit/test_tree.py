"""The stored tree: nodes added as leaves arrive, proofs and roots read from O(log n) nodes."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import Connection, select, text

from app.audit import tree
from app.audit.models import AuditEntry, AuditNode
from app.kit import merkle
from tests.audit.conftest import maintain_all
from tests.conftest import World


def _reference_root(leaves: list[bytes]) -> bytes:
    """MTH of RFC 9162 2.1.1, written out on the leaf hashes."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return merkle.node_hash(_reference_root(leaves[:k]), _reference_root(leaves[k:]))


def _leaves(conn: Connection) -> list[bytes]:
    rows = conn.execute(select(AuditEntry.leaf_hash).order_by(AuditEntry.id))
    return [bytes(h) for (h,) in rows]


def _add_entries(world: World, count: int) -> None:
    for _ in range(count):
        world.http.get("/v1/reports", headers=world.headers("DEU"))


class TestIntegrate:
    def test_nodes_cover_every_committed_leaf_and_give_the_reference_roots(
        self, fresh_world: World
    ) -> None:
        _add_entries(fresh_world, 40)
        maintain_all(fresh_world)
        with fresh_world.state.engine.connect() as conn:
            leaves = _leaves(conn)
            assert tree.tree_size(conn) == len(leaves) == tree.log_size(conn)
            for size in (1, 2, 3, 7, 8, 33, len(leaves)):
                assert tree.root(conn, size) == _reference_root(leaves[:size])

    def test_a_later_step_continues_where_the_last_stopped(
        self, fresh_world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(tree, "BATCH", 7)
        _add_entries(fresh_world, 30)
        with fresh_world.state.engine.begin() as conn:
            first = tree.integrate(conn)
        assert first == 7
        maintain_all(fresh_world)
        with fresh_world.state.engine.connect() as conn:
            leaves = _leaves(conn)
            stored = conn.execute(select(AuditNode.level, AuditNode.idx, AuditNode.hash)).all()
        expected = {}
        for level in range(1, len(leaves).bit_length()):
            width = 1 << level
            for i in range(len(leaves) // width):
                expected[(level, i)] = _reference_root(leaves[i * width : (i + 1) * width])
        assert {(lv, i): bytes(h) for lv, i, h in stored} == expected

    def test_with_nothing_new_it_changes_nothing(self, fresh_world: World) -> None:
        maintain_all(fresh_world)
        with fresh_world.state.engine.begin() as conn:
            size = tree.tree_size(conn)
            nodes = conn.execute(text("SELECT count(*) FROM audit_nodes")).scalar_one()
            assert tree.integrate(conn) == size
            assert conn.execute(text("SELECT count(*) FROM audit_nodes")).scalar_one() == nodes


class TestProofs:
    def test_inclusion_proofs_from_stored_nodes_verify_for_every_entry(
        self, fresh_world: World
    ) -> None:
        _add_entries(fresh_world, 20)
        maintain_all(fresh_world)
        with fresh_world.state.engine.connect() as conn:
            leaves = _leaves(conn)
            for size in (1, 5, len(leaves)):
                root = _reference_root(leaves[:size])
                for index in range(size):
                    leaf, path = tree.inclusion(conn, index, size)
                    assert leaf == leaves[index]
                    merkle.verify_inclusion(index, size, leaf, path, root)

    def test_consistency_proofs_from_stored_nodes_verify(self, fresh_world: World) -> None:
        _add_entries(fresh_world, 20)
        maintain_all(fresh_world)
        with fresh_world.state.engine.connect() as conn:
            leaves = _leaves(conn)
            n = len(leaves)
            for first, second in ((1, n), (3, 17), (16, n), (n, n)):
                path = tree.consistency(conn, first, second)
                merkle.verify_consistency(
                    first,
                    second,
                    _reference_root(leaves[:first]),
                    _reference_root(leaves[:second]),
                    path,
                )

    def test_a_proof_beyond_the_stored_nodes_is_refused_not_guessed(
        self, fresh_world: World
    ) -> None:
        _add_entries(fresh_world, 5)
        with fresh_world.state.engine.connect() as conn:
            size = tree.log_size(conn)
            assert tree.tree_size(conn) == 0
            with pytest.raises(tree.TreeError):
                tree.inclusion(conn, 0, size)
