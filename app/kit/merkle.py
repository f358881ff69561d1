"""RFC 9162 Merkle trees kept as stored perfect subtrees: roots, proofs and their verification.

A node is a `NodeId` (level, index): the root of the perfect subtree over the leaves
[index << level, (index + 1) << level); level 0 holds the leaf hashes. Only such aligned,
complete subtrees are ever stored. Every other hash the RFC needs (a tree root, a proof element
over the ragged right edge) is folded from the O(log n) perfect subtrees that tile its range, so
no proof ever rebuilds the tree.

Planning a proof is split from computing it: `*_nodes` says which stored nodes are needed, and
`inclusion_path`/`consistency_path`/`root_from` compute the result from a mapping holding them
(a missing node raises KeyError).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

HASH_SIZE = 32
NodeId = tuple[int, int]
EMPTY_ROOT = hashlib.sha256(b"").digest()

# A leaf range [start, end) of the tree.
_Range = tuple[int, int]


class ProofError(ValueError):
    """A proof, or the claim it is checked against, does not hold."""


def leaf_hash(data: bytes) -> bytes:
    """The RFC 9162 leaf hash: SHA-256(0x00 || data)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The RFC 9162 interior node hash: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def perfect_ranges(start: int, end: int) -> list[NodeId]:
    """The perfect subtrees, left to right, whose fold is MTH(D[start:end]).

    MTH splits off the largest power of two first, so the pieces follow the binary digits of
    end - start; `start` must be a multiple of the first (largest) piece for them to be nodes.
    """
    count = end - start
    if start < 0 or count < 0:
        raise ValueError(f"[{start}, {end}) is not a leaf range")
    if count and start % (1 << (count.bit_length() - 1)):
        raise ValueError(f"[{start}, {end}) is not aligned to its largest perfect subtree")
    nodes: list[NodeId] = []
    for level in reversed(range(count.bit_length())):
        if count >> level & 1:
            nodes.append((level, start >> level))
            start += 1 << level
    return nodes


def frontier(size: int) -> list[NodeId]:
    """The perfect subtrees, left to right, that make up the tree of `size` leaves."""
    return perfect_ranges(0, size)


def fold(hashes: Sequence[bytes]) -> bytes:
    """The hash of a range from the hashes of its perfect_ranges, combined right to left."""
    if not hashes:
        return EMPTY_ROOT
    result = hashes[-1]
    for left in reversed(hashes[:-1]):
        result = node_hash(left, result)
    return result


def _check_length(what: str, digest: bytes, error: type[ValueError] = ValueError) -> None:
    if len(digest) != HASH_SIZE:
        raise error(f"{what} is {len(digest)} bytes, not {HASH_SIZE}")


class Frontier:
    """The compact range [0, size): hashes of the perfect subtrees of frontier(size)."""

    __slots__ = ("hashes", "size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if size < 0:
            raise ValueError(f"tree size {size} is negative")
        if len(hashes) != size.bit_count():
            raise ValueError(f"a tree of {size} leaves has {size.bit_count()} frontier hashes")
        for digest in hashes:
            _check_length("frontier hash", digest)
        self.size = size
        self.hashes = list(hashes)

    def append(self, leaf: bytes) -> list[tuple[NodeId, bytes]]:
        """Add one leaf hash; the nodes of level >= 1 it completes, lowest first, to store."""
        _check_length("leaf hash", leaf)
        completed: list[tuple[NodeId, bytes]] = []
        digest, level, index = leaf, 0, self.size
        while index & 1:  # a right child: merge with the left sibling ending the frontier
            digest = node_hash(self.hashes.pop(), digest)
            level, index = level + 1, index >> 1
            completed.append(((level, index), digest))
        self.hashes.append(digest)
        self.size += 1
        return completed

    def root(self) -> bytes:
        """The root hash of the tree of `size` leaves."""
        return fold(self.hashes)


def _path_ranges(index: int, size: int, bottom: int) -> list[_Range]:
    """Leaf ranges of the siblings on the way from node (bottom, index >> bottom) to the root.

    Below the level where the paths to `index` and to the last leaf meet, every level has a
    sibling (the one to the right at the meeting level may be ragged); above it, the path runs
    along the right edge and only left siblings, always perfect, exist.
    """
    inner = (index ^ (size - 1)).bit_length()
    ranges: list[_Range] = []
    for level in range(bottom, (size - 1).bit_length()):
        node = index >> level
        if level < inner or node & 1:
            start = (node ^ 1) << level
            ranges.append((start, min(start + (1 << level), size)))
    return ranges


def _inclusion_ranges(index: int, size: int) -> list[_Range]:
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of size {size}")
    return _path_ranges(index, size, 0)


def _consistency_ranges(first: int, second: int) -> list[_Range]:
    if not 0 < first <= second:
        raise ValueError(f"no consistency proof from size {first} to size {second}")
    if first == second:
        return []
    # The first tree's last perfect subtree sits at level `shift`; unless it is the whole first
    # tree, the proof starts with its hash, then climbs as an inclusion path from there.
    shift = (first & -first).bit_length() - 1
    last = first - 1
    seed = [] if first == 1 << shift else [(last >> shift << shift, first)]
    return seed + _path_ranges(last, second, shift)


def _nodes_of(ranges: list[_Range]) -> list[NodeId]:
    # The ranges of one proof are disjoint, so their nodes never repeat.
    return [node for start, end in ranges for node in perfect_ranges(start, end)]


def _hashes_of(ranges: list[_Range], nodes: Mapping[NodeId, bytes]) -> list[bytes]:
    return [fold([nodes[n] for n in perfect_ranges(start, end)]) for start, end in ranges]


def inclusion_nodes(index: int, size: int) -> list[NodeId]:
    """The stored nodes inclusion_path(index, size, ...) reads, without repeats."""
    return _nodes_of(_inclusion_ranges(index, size))


def inclusion_path(index: int, size: int, nodes: Mapping[NodeId, bytes]) -> list[bytes]:
    """RFC 9162 PATH(index, D[size]), bottom-up, from the nodes listed by inclusion_nodes."""
    return _hashes_of(_inclusion_ranges(index, size), nodes)


def consistency_nodes(first: int, second: int) -> list[NodeId]:
    """The stored nodes consistency_path(first, second, ...) reads, without repeats."""
    return _nodes_of(_consistency_ranges(first, second))


def consistency_path(first: int, second: int, nodes: Mapping[NodeId, bytes]) -> list[bytes]:
    """RFC 9162 PROOF(first, D[second]) for 0 < first <= second, from consistency_nodes."""
    return _hashes_of(_consistency_ranges(first, second), nodes)


def root_nodes(size: int) -> list[NodeId]:
    """The stored nodes root_from(size, ...) reads."""
    return frontier(size)


def root_from(size: int, nodes: Mapping[NodeId, bytes]) -> bytes:
    """The root hash of the tree of `size` leaves, from the nodes listed by root_nodes."""
    return fold([nodes[n] for n in frontier(size)])


def _climb(fn: int, sn: int, seed: bytes, path: Sequence[bytes]) -> tuple[bytes, bytes]:
    """The shared loop of RFC 9162 2.1.3.2 and 2.1.4.2: (hash from left siblings only, full)."""
    fr = sr = seed
    for sibling in path:
        if sn == 0:
            raise ProofError("the proof has more hashes than the tree has levels")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(sibling, fr), node_hash(sibling, sr)
            while fn and not fn & 1:  # skip the levels where the right edge has no sibling
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, sibling)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("the proof has fewer hashes than the tree has levels")
    return fr, sr


def root_from_inclusion(index: int, size: int, leaf: bytes, path: Sequence[bytes]) -> bytes:
    """The root that `path` proves leaf hash `leaf` at `index` under; ProofError if malformed."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of size {size}")
    _check_length("leaf hash", leaf, ProofError)
    for digest in path:
        _check_length("proof hash", digest, ProofError)
    return _climb(index, size - 1, leaf, path)[1]


def verify_inclusion(
    index: int, size: int, leaf: bytes, path: Sequence[bytes], root: bytes
) -> None:
    """Check an RFC 9162 inclusion proof of leaf hash `leaf`; ProofError unless it holds."""
    _check_length("root hash", root, ProofError)
    if root_from_inclusion(index, size, leaf, path) != root:
        raise ProofError(f"the path does not lead from leaf {index} to the root of size {size}")


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, path: Sequence[bytes]
) -> None:
    """Check an RFC 9162 consistency proof for 0 < first <= second; ProofError unless it holds.

    Equal sizes take an empty proof and identical roots (compared as given, as the RFC 9162
    conformance vectors expect). Nothing is consistent with the empty tree by proof.
    """
    if not 0 < first <= second:
        raise ProofError(f"no consistency proof from size {first} to size {second}")
    if first == second:
        if path:
            raise ProofError("a proof between equal sizes must be empty")
        if first_root != second_root:
            raise ProofError(f"two different roots for size {first}")
        return
    for what, digest in (("first root", first_root), ("second root", second_root)):
        _check_length(what, digest, ProofError)
    for digest in path:
        _check_length("proof hash", digest, ProofError)
    if not path:
        raise ProofError("the consistency proof is empty")
    if first & (first - 1) == 0:  # the first tree is one perfect subtree: its root is the seed
        path = [first_root, *path]
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr, sr = _climb(fn, sn, path[0], path[1:])
    if fr != first_root:
        raise ProofError(f"the proof does not lead to the root of size {first}")
    if sr != second_root:
        raise ProofError(f"the proof does not lead to the root of size {second}")
