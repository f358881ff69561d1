"""RFC 9162 Merkle trees: the conformance vectors, the RFC's own recursions, and pymerkle."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import pymerkle
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.kit.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    Frontier,
    NodeId,
    ProofError,
    consistency_nodes,
    consistency_path,
    fold,
    frontier,
    inclusion_nodes,
    inclusion_path,
    leaf_hash,
    node_hash,
    perfect_ranges,
    root_from,
    root_from_inclusion,
    root_nodes,
    verify_consistency,
    verify_inclusion,
)

# The RFC 9162 proof vectors of transparency-dev/merkle (Apache 2.0, LICENSE beside them), kept
# in the repository so that a clean checkout anywhere runs them all.
VECTORS = Path(__file__).resolve().parent / "data" / "merkle"
VECTOR_FILES = sorted(VECTORS.rglob("*.json"))

FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,  # tests write nothing into the working tree
    suppress_health_check=[HealthCheck.too_slow],
)


# ------------------------------------------------------------------------ RFC 9162 by the letter


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1), as RFC 9162 section 2.1.1 defines k."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


class Rfc9162:
    """MTH, PATH and PROOF recursed exactly as RFC 9162 section 2.1 writes them.

    Hashing is spelt out with hashlib so nothing here leans on the module under test; subtree
    hashes are memoised by range only to keep the recursions quick.
    """

    def __init__(self, entries: Sequence[bytes]) -> None:
        self.entries = entries
        self._mth: dict[tuple[int, int], bytes] = {}

    def mth(self, start: int, end: int) -> bytes:
        """MTH(D[start:end])."""
        if (start, end) not in self._mth:
            n = end - start
            if n == 0:
                digest = _sha256(b"")
            elif n == 1:
                digest = _sha256(b"\x00" + self.entries[start])
            else:
                k = _split(n)
                left, right = self.mth(start, start + k), self.mth(start + k, end)
                digest = _sha256(b"\x01" + left + right)
            self._mth[start, end] = digest
        return self._mth[start, end]

    def node(self, node: NodeId) -> bytes:
        level, index = node
        return self.mth(index << level, (index + 1) << level)

    def path(self, m: int, start: int, end: int) -> list[bytes]:
        """PATH(m, D[start:end]), m counted from start."""
        if end - start == 1:
            return []
        k = _split(end - start)
        if m < k:
            return [*self.path(m, start, start + k), self.mth(start + k, end)]
        return [*self.path(m - k, start + k, end), self.mth(start, start + k)]

    def proof(self, m: int, n: int) -> list[bytes]:
        """PROOF(m, D[n]) = SUBPROOF(m, D[0:n], true)."""
        return self._subproof(m, 0, n, complete=True)

    def _subproof(self, m: int, start: int, end: int, *, complete: bool) -> list[bytes]:
        if m == end - start:
            return [] if complete else [self.mth(start, end)]
        k = _split(end - start)
        if m <= k:
            return [
                *self._subproof(m, start, start + k, complete=complete),
                self.mth(start + k, end),
            ]
        return [*self._subproof(m - k, start + k, end, complete=False), self.mth(start, start + k)]


def rfc_path_length(index: int, size: int) -> int:
    """How many hashes PATH(index, D[size]) holds: one per step of the RFC's recursion."""
    steps, start, end = 0, 0, size
    while end - start > 1:
        k = _split(end - start)
        start, end = (start + k, end) if index >= start + k else (start, start + k)
        steps += 1
    return steps


@st.composite
def trees(draw: st.DrawFn) -> Rfc9162:
    """A log of 1..300 distinct entries (sizes drawn evenly, so large trees are common)."""
    size = draw(st.integers(1, 300))
    salt = draw(st.binary(max_size=8))
    return Rfc9162([salt + i.to_bytes(2, "big") for i in range(size)])


@st.composite
def leaf_in_tree(draw: st.DrawFn) -> tuple[Rfc9162, int]:
    tree = draw(trees())
    return tree, draw(st.integers(0, len(tree.entries) - 1))


@st.composite
def two_sizes(draw: st.DrawFn) -> tuple[Rfc9162, int, int]:
    tree = draw(trees())
    second = draw(st.integers(1, len(tree.entries)))
    return tree, draw(st.integers(1, second)), second


def flipped(digest: bytes, at: int = 0) -> bytes:
    return digest[:at] + bytes([digest[at] ^ 1]) + digest[at + 1 :]


def each_tampered(path: list[bytes]) -> list[list[bytes]]:
    """The path with one byte flipped in each element in turn, then cut short and extended."""
    variants = [[*path[:i], flipped(h, i % HASH_SIZE), *path[i + 1 :]] for i, h in enumerate(path)]
    variants.append([*path, _sha256(b"extra")])
    if path:
        variants.append(path[:-1])
    return variants


# ------------------------------------------------------------------------ conformance vectors


def _b64(value: str | None) -> bytes:
    return base64.b64decode(value) if value else b""


def _wants_error(path: Path) -> bool:
    return bool(json.loads(path.read_text())["wantErr"])


def _vector_id(path: Path) -> str:
    return path.relative_to(VECTORS).as_posix()


def _verify_vector(path: Path) -> None:
    vector = json.loads(path.read_text())
    proof = [_b64(h) for h in vector["proof"] or []]
    if path.relative_to(VECTORS).parts[0] == "inclusion":
        leaf, root = _b64(vector["leafHash"]), _b64(vector["root"])
        verify_inclusion(vector["leafIdx"], vector["treeSize"], leaf, proof, root)
    else:
        first, second = _b64(vector["root1"]), _b64(vector["root2"])
        verify_consistency(vector["size1"], vector["size2"], first, second, proof)


class TestConformanceVectors:
    def test_vector_suite_holds_good_and_bad_cases_of_both_proofs(self) -> None:
        assert VECTORS.is_dir(), f"the RFC 9162 vectors are missing from {VECTORS}"
        verdicts = {(p.relative_to(VECTORS).parts[0], _wants_error(p)) for p in VECTOR_FILES}
        assert verdicts == {(k, e) for k in ("inclusion", "consistency") for e in (True, False)}

    @pytest.mark.parametrize(
        "path", [p for p in VECTOR_FILES if not _wants_error(p)], ids=_vector_id
    )
    def test_verifier_accepts_every_good_vector(self, path: Path) -> None:
        _verify_vector(path)

    @pytest.mark.parametrize("path", [p for p in VECTOR_FILES if _wants_error(p)], ids=_vector_id)
    def test_verifier_rejects_every_bad_vector(self, path: Path) -> None:
        with pytest.raises(ProofError):
            _verify_vector(path)


# ------------------------------------------------------------------------ hashing and ranges


class TestHashing:
    def test_hashes_match_rfc_9162_known_answers(self) -> None:
        assert EMPTY_ROOT.hex().startswith("e3b0c44298fc1c149afbf4c8996fb924")
        assert leaf_hash(b"") == base64.b64decode("bjQLnP+zepicpUTmu3gKLHiQHT+zNzh2hRGjBhevoB0=")
        assert node_hash(b"L", b"R") == _sha256(b"\x01LR")

    def test_fold_of_nothing_is_the_empty_root(self) -> None:
        assert fold([]) == EMPTY_ROOT
        assert root_from(0, {}) == Frontier().root() == EMPTY_ROOT

    def test_perfect_ranges_follow_the_binary_digits_of_the_width(self) -> None:
        assert perfect_ranges(0, 7) == frontier(7) == [(2, 0), (1, 2), (0, 6)]
        assert perfect_ranges(8, 13) == [(2, 2), (0, 12)]
        assert perfect_ranges(6, 7) == [(0, 6)]
        assert perfect_ranges(5, 5) == frontier(0) == root_nodes(0) == []

    @pytest.mark.parametrize(("start", "end"), [(2, 7), (4, 12), (-1, 3), (5, 4)])
    def test_misaligned_or_inverted_range_is_a_value_error(self, start: int, end: int) -> None:
        with pytest.raises(ValueError, match=r"leaf range|aligned"):
            perfect_ranges(start, end)


# ------------------------------------------------------------------------ frontier


class TestFrontier:
    @FUZZ
    @given(trees())
    def test_append_gives_the_rfc_root_at_every_size(self, tree: Rfc9162) -> None:
        front = Frontier()
        for size, entry in enumerate(tree.entries, start=1):
            front.append(leaf_hash(entry))
            assert front.size == size
            assert front.root() == tree.mth(0, size)
            assert front.hashes == [tree.node(n) for n in frontier(size)]

    @FUZZ
    @given(trees())
    def test_append_returns_every_completed_node_once_with_its_subtree_hash(
        self, tree: Rfc9162
    ) -> None:
        front, seen = Frontier(), []
        for entry in tree.entries:
            completed = front.append(leaf_hash(entry))
            assert [level for (level, _), _ in completed] == list(range(1, len(completed) + 1))
            seen += completed
        size = len(tree.entries)
        expected = {(lv, i) for lv in range(1, size.bit_length()) for i in range(size >> lv)}
        assert [n for n, _ in seen] == sorted(expected, key=lambda n: ((n[1] + 1) << n[0], n[0]))
        assert all(digest == tree.node(n) for n, digest in seen)

    @FUZZ
    @given(trees(), st.data())
    def test_frontier_resumed_from_stored_nodes_continues_identically(
        self, tree: Rfc9162, data: st.DataObject
    ) -> None:
        cut = data.draw(st.integers(0, len(tree.entries)))
        whole, resumed = Frontier(), Frontier(cut, [tree.node(n) for n in frontier(cut)])
        for entry in tree.entries[:cut]:
            whole.append(leaf_hash(entry))
        for entry in tree.entries[cut:]:
            assert resumed.append(leaf_hash(entry)) == whole.append(leaf_hash(entry))
        assert resumed.root() == whole.root() == tree.mth(0, len(tree.entries))

    @pytest.mark.parametrize(
        ("size", "hashes"),
        [(-1, []), (3, [EMPTY_ROOT]), (2, [EMPTY_ROOT, EMPTY_ROOT]), (1, [b"short"])],
    )
    def test_frontier_refuses_a_wrong_count_or_length_of_hashes(
        self, size: int, hashes: list[bytes]
    ) -> None:
        with pytest.raises(ValueError, match=r"negative|frontier hash"):
            Frontier(size, hashes)

    def test_append_refuses_a_leaf_hash_of_the_wrong_length(self) -> None:
        front = Frontier()
        with pytest.raises(ValueError, match="leaf hash is 5 bytes"):
            front.append(b"short")
        assert front.size == 0


# ------------------------------------------------------------------------ inclusion


class TestInclusion:
    @FUZZ
    @given(leaf_in_tree())
    def test_path_from_listed_nodes_alone_is_the_rfc_path_and_verifies(
        self, case: tuple[Rfc9162, int]
    ) -> None:
        tree, index = case
        size = len(tree.entries)
        ids = inclusion_nodes(index, size)
        assert len(set(ids)) == len(ids) <= 2 * size.bit_length()
        path = inclusion_path(index, size, {n: tree.node(n) for n in ids})
        assert path == tree.path(index, 0, size)
        leaf, root = tree.node((0, index)), tree.mth(0, size)
        assert root_from_inclusion(index, size, leaf, path) == root
        verify_inclusion(index, size, leaf, path, root)

    @FUZZ
    @given(leaf_in_tree())
    def test_tampered_path_wrong_index_leaf_or_root_is_rejected(
        self, case: tuple[Rfc9162, int]
    ) -> None:
        tree, index = case
        size = len(tree.entries)
        leaf, root, path = tree.node((0, index)), tree.mth(0, size), tree.path(index, 0, size)
        for bad_path in each_tampered(path):
            with pytest.raises(ProofError):
                verify_inclusion(index, size, leaf, bad_path, root)
        for other in {index - 1, index + 1, index ^ 1, size}:
            if other != index:
                with pytest.raises(ProofError):
                    verify_inclusion(other, size, leaf, path, root)
        with pytest.raises(ProofError):
            verify_inclusion(index, size, flipped(leaf), path, root)
        with pytest.raises(ProofError):
            verify_inclusion(index, size, leaf, path, flipped(root, HASH_SIZE - 1))

    def test_every_leaf_of_every_tree_up_to_64_leaves_gets_the_rfc_path(self) -> None:
        tree = Rfc9162([i.to_bytes(1, "big") for i in range(64)])
        for size in range(1, 65):
            for index in range(size):
                ids = inclusion_nodes(index, size)
                path = inclusion_path(index, size, {n: tree.node(n) for n in ids})
                assert path == tree.path(index, 0, size), (index, size)
                verify_inclusion(index, size, tree.node((0, index)), path, tree.mth(0, size))

    @pytest.mark.parametrize(("leaf", "path"), [(b"x" * 31, []), (EMPTY_ROOT, [b"x" * 33])])
    def test_hash_of_the_wrong_length_is_a_proof_error(
        self, leaf: bytes, path: list[bytes]
    ) -> None:
        size = len(path) + 1
        with pytest.raises(ProofError, match=r"hash is 3[13] bytes"):
            root_from_inclusion(size - 1, size, leaf, path)

    def test_path_of_the_wrong_length_leads_to_no_root(self) -> None:
        tree = Rfc9162([b"a", b"b", b"c", b"d", b"e"])
        path = tree.path(2, 0, 5)
        with pytest.raises(ProofError, match="more hashes than the tree has levels"):
            root_from_inclusion(2, 5, tree.node((0, 2)), [*path, EMPTY_ROOT])
        with pytest.raises(ProofError, match="fewer hashes than the tree has levels"):
            root_from_inclusion(2, 5, tree.node((0, 2)), path[:-1])

    def test_a_missing_stored_node_is_a_key_error(self) -> None:
        with pytest.raises(KeyError):
            inclusion_path(5, 13, {})

    @pytest.mark.parametrize(("index", "size"), [(-1, 3), (3, 3), (0, 0)])
    def test_planning_a_leaf_outside_the_tree_is_a_value_error(self, index: int, size: int) -> None:
        with pytest.raises(ValueError, match="not in a tree"):
            inclusion_nodes(index, size)

    def test_planning_a_huge_tree_reads_a_logarithmic_number_of_nodes(self) -> None:
        size = 10_000_000
        for index in (0, 4_999_999, 9_999_999):
            ids = inclusion_nodes(index, size)
            path = inclusion_path(index, size, {n: _sha256(repr(n).encode()) for n in ids})
            assert len(ids) <= 2 * size.bit_length()
            assert len(path) == rfc_path_length(index, size)


# ------------------------------------------------------------------------ consistency


class TestConsistency:
    @FUZZ
    @given(two_sizes())
    def test_path_from_listed_nodes_alone_is_the_rfc_proof_and_verifies(
        self, case: tuple[Rfc9162, int, int]
    ) -> None:
        tree, first, second = case
        ids = consistency_nodes(first, second)
        assert len(set(ids)) == len(ids) <= 2 * second.bit_length() + 1
        path = consistency_path(first, second, {n: tree.node(n) for n in ids})
        assert path == tree.proof(first, second)
        verify_consistency(first, second, tree.mth(0, first), tree.mth(0, second), path)

    @FUZZ
    @given(two_sizes())
    def test_tampered_path_or_wrong_root_is_rejected(self, case: tuple[Rfc9162, int, int]) -> None:
        tree, first, second = case
        first_root, second_root = tree.mth(0, first), tree.mth(0, second)
        path = tree.proof(first, second)
        for bad_path in each_tampered(path):
            with pytest.raises(ProofError):
                verify_consistency(first, second, first_root, second_root, bad_path)
        with pytest.raises(ProofError):
            verify_consistency(first, second, flipped(first_root), second_root, path)
        with pytest.raises(ProofError):
            verify_consistency(first, second, first_root, flipped(second_root), path)

    def test_every_pair_of_sizes_up_to_64_leaves_gets_the_rfc_proof(self) -> None:
        tree = Rfc9162([i.to_bytes(1, "big") for i in range(64)])
        for second in range(1, 65):
            for first in range(1, second + 1):
                ids = consistency_nodes(first, second)
                path = consistency_path(first, second, {n: tree.node(n) for n in ids})
                assert path == tree.proof(first, second), (first, second)
                verify_consistency(first, second, tree.mth(0, first), tree.mth(0, second), path)

    @pytest.mark.parametrize("short", ["first root", "second root", "proof hash"])
    def test_hash_of_the_wrong_length_is_a_proof_error(self, short: str) -> None:
        tree = Rfc9162([b"a", b"b", b"c", b"d", b"e"])
        hashes = {"first root": tree.mth(0, 3), "second root": tree.mth(0, 5)}
        path = tree.proof(3, 5)
        if short in hashes:
            hashes[short] = hashes[short][:-1]
        else:
            path[-1] = path[-1][:-1]
        with pytest.raises(ProofError, match=f"{short} is 31 bytes"):
            verify_consistency(3, 5, hashes["first root"], hashes["second root"], path)

    def test_equal_sizes_need_no_nodes_and_give_an_empty_proof(self) -> None:
        assert consistency_nodes(7, 7) == []
        assert consistency_path(7, 7, {}) == []
        verify_consistency(7, 7, EMPTY_ROOT, EMPTY_ROOT, [])

    @pytest.mark.parametrize(("first", "second"), [(0, 5), (5, 4), (-1, 3)])
    def test_planning_impossible_sizes_is_a_value_error(self, first: int, second: int) -> None:
        with pytest.raises(ValueError, match="no consistency proof"):
            consistency_nodes(first, second)

    @pytest.mark.parametrize(("first", "second"), [(0, 5), (0, 0), (5, 4), (-1, 3)])
    def test_verifying_impossible_sizes_is_a_proof_error(self, first: int, second: int) -> None:
        with pytest.raises(ProofError, match="no consistency proof"):
            verify_consistency(first, second, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT])


# ------------------------------------------------------------------------ pymerkle as a witness


def pymerkle_rule(index: int, size: int) -> list[int]:
    """pymerkle's bits for PATH(index, D[size]): 1 where the path's node is a right child.

    Bottom-up, then a 0 for the root; pymerkle recomputes them and refuses a proof that differs.
    """
    bits: list[int] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        right = index >= start + k
        bits.append(int(right))
        start, end = (start + k, end) if right else (start, start + k)
    return [*reversed(bits), 0]


def pymerkle_log(tree: Rfc9162) -> pymerkle.InmemoryTree:
    # sha256 with its default second-preimage "security" on is RFC 9162's 0x00/0x01 hashing.
    log = pymerkle.InmemoryTree(algorithm="sha256")
    log.append_entries(tree.entries)
    return log


class TestAgainstPymerkle:
    @FUZZ
    @given(trees())
    def test_pymerkle_computes_the_same_root_at_every_size(self, tree: Rfc9162) -> None:
        log, front = pymerkle_log(tree), Frontier()
        assert log.get_root(0) == front.root()
        for size, entry in enumerate(tree.entries, start=1):
            front.append(leaf_hash(entry))
            assert log.get_root(size) == front.root()

    @FUZZ
    @given(leaf_in_tree(), st.data())
    def test_pymerkle_serves_our_inclusion_path_and_accepts_it(
        self, case: tuple[Rfc9162, int], data: st.DataObject
    ) -> None:
        tree, index = case
        size = data.draw(st.integers(index + 1, len(tree.entries)))
        log = pymerkle_log(tree)
        leaf, root = leaf_hash(tree.entries[index]), log.get_root(size)
        ids = inclusion_nodes(index, size)
        path = inclusion_path(index, size, {n: tree.node(n) for n in ids})
        assert log.prove_inclusion(index + 1, size).path == [leaf, *path]
        ours = pymerkle.InclusionProof(
            "sha256", True, size, index + 1, pymerkle_rule(index, size), [leaf, *path]
        )
        pymerkle.verify_inclusion(leaf, root, ours, index=index + 1, size=size, algorithm="sha256")
        if path:
            ours.path[-1] = flipped(ours.path[-1])
            with pytest.raises(pymerkle.InvalidProof):
                pymerkle.verify_inclusion(leaf, root, ours, index=index + 1, size=size)

    @FUZZ
    @given(two_sizes())
    def test_pymerkle_consistency_proofs_hold_between_our_roots(
        self, case: tuple[Rfc9162, int, int]
    ) -> None:
        # pymerkle's consistency paths are not RFC 9162 PROOF(m, D[n]) (it descends to the first
        # new leaf), so it can only vouch for our roots here, not verify our paths.
        tree, first, second = case
        ours = {n: tree.node(n) for n in root_nodes(first) + root_nodes(second)}
        first_root, second_root = root_from(first, ours), root_from(second, ours)
        proof = pymerkle_log(tree).prove_consistency(first, second)
        pymerkle.verify_consistency(
            first_root, second_root, proof, prior_size=first, later_size=second, algorithm="sha256"
        )
