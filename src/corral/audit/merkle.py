"""RFC 6962 / RFC 9162 Merkle trees: hashing, proofs and their verification.

Hashes are SHA-256 and always 32-byte ``bytes``. A leaf hash is ``SHA-256(0x00 || data)``
(RFC 6962 §2.1), an interior node ``SHA-256(0x01 || left || right)``, and the empty tree's root
``SHA-256("")``.

Two layers live here, both pure:

* the DESIGN.md contract on lists of raw leaves (``root``, ``inclusion_proof``,
  ``consistency_proof``) and the verifiers (``verify_inclusion``, ``verify_consistency``), which
  return ``False`` for anything that does not verify and never raise for such values;
* the storage-facing half: a tree is stored as its *complete subtrees* (``NodeId(level,
  index)`` covers leaves ``[index * 2**level, (index + 1) * 2**level)``). ``*_plan`` functions say
  which nodes a root or a proof needs (O(log n) of them), the caller fetches them in one read,
  and ``*_from_nodes`` folds them; :class:`CompactRange` turns appends into new nodes.

>>> leaves = [b"a", b"b", b"c"]
>>> proof = inclusion_proof(leaves, 2)
>>> verify_inclusion(leaf_hash(b"c"), 2, 3, proof, root(leaves))
True
>>> verify_consistency(2, 3, root(leaves[:2]), root(leaves), consistency_proof(leaves, 2))
True
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "CompactRange",
    "NodeId",
    "consistency_plan",
    "consistency_proof",
    "consistency_proof_from_nodes",
    "inclusion_plan",
    "inclusion_proof",
    "inclusion_proof_from_nodes",
    "leaf_hash",
    "node_hash",
    "root",
    "root_from_nodes",
    "root_plan",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """RFC 6962 §2.1: ``MTH({d}) = SHA-256(0x00 || d)``."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 §2.1: ``SHA-256(0x01 || MTH(left) || MTH(right))``."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


# --------------------------------------------------------------------------- node addressing


@dataclass(frozen=True, slots=True)
class NodeId:
    """A complete subtree (level 0: a leaf), covering ``[index << level, (index+1) << level)``."""

    level: int
    index: int


_Range = tuple[int, int]  # [begin, end) of leaf indexes


def _split(size: int) -> int:
    """The largest power of two below ``size`` (RFC 6962's ``k``); requires size > 1."""
    return 1 << ((size - 1).bit_length() - 1)


def _decompose(begin: int, end: int) -> list[NodeId]:
    """The complete subtrees covering ``[begin, end)``, left to right.

    Requires ``begin`` aligned to the largest power of two not above ``end - begin``, which holds
    for every range an RFC 6962 proof or root names; then RFC 6962's ``MTH(D[begin:end])`` is the
    right fold of these nodes' hashes.
    """
    nodes = []
    while begin < end:
        level = (end - begin).bit_length() - 1
        while begin & ((1 << level) - 1):
            level -= 1
        nodes.append(NodeId(level, begin >> level))
        begin += 1 << level
    return nodes


def _inclusion_ranges(index: int, size: int) -> list[_Range]:
    """RFC 6962 §2.1.1 ``PATH(m, D[n])`` as leaf ranges, in proof order (bottom up)."""
    ranges: list[_Range] = []
    begin, end = 0, size
    while end - begin > 1:
        k = _split(end - begin)
        if index < begin + k:
            ranges.append((begin + k, end))
            end = begin + k
        else:
            ranges.append((begin, begin + k))
            begin += k
    ranges.reverse()
    return ranges


def _consistency_ranges(old_size: int, size: int) -> list[_Range]:
    """RFC 6962 §2.1.2 ``PROOF(m, D[n])`` as leaf ranges, in proof order; requires 0 < m < n."""
    ranges: list[_Range] = []
    begin, end, complete = 0, size, True
    while old_size != end:
        k = _split(end - begin)
        if old_size - begin <= k:
            ranges.append((begin + k, end))
            end = begin + k
        else:
            ranges.append((begin, begin + k))
            begin += k
            complete = False
    if not complete:
        ranges.append((begin, end))
    ranges.reverse()
    return ranges


def _plan(ranges: Iterable[_Range]) -> list[NodeId]:
    seen: dict[NodeId, None] = {}
    for begin, end in ranges:
        for node in _decompose(begin, end):
            seen[node] = None
    return list(seen)


def _fold(begin: int, end: int, nodes: Mapping[NodeId, bytes]) -> bytes:
    parts = [nodes[node] for node in _decompose(begin, end)]
    result = parts[-1]
    for part in reversed(parts[:-1]):
        result = node_hash(part, result)
    return result


def root_plan(size: int) -> list[NodeId]:
    """The nodes whose hashes make the root of a tree of ``size`` leaves (none if empty)."""
    return _decompose(0, size)


def inclusion_plan(index: int, size: int) -> list[NodeId]:
    """The nodes an inclusion proof for leaf ``index`` in a tree of ``size`` needs.

    Requires ``0 <= index < size``. At most one proof element is not itself a complete subtree
    (the right border), so this is O(log size) nodes.
    """
    if not 0 <= index < size:
        raise ValueError(f"inclusion proof needs 0 <= index < size, got index {index}, size {size}")
    return _plan(_inclusion_ranges(index, size))


def consistency_plan(old_size: int, size: int) -> list[NodeId]:
    """The nodes a consistency proof from ``old_size`` to ``size`` needs; requires 0 <= m <= n."""
    if not 0 <= old_size <= size:
        raise ValueError(f"consistency proof needs 0 <= old_size <= size, got {old_size}, {size}")
    if old_size in (0, size):
        return []
    return _plan(_consistency_ranges(old_size, size))


def root_from_nodes(size: int, nodes: Mapping[NodeId, bytes]) -> bytes:
    """Fold the nodes of :func:`root_plan` into the tree's root."""
    return EMPTY_ROOT if size == 0 else _fold(0, size, nodes)


def inclusion_proof_from_nodes(index: int, size: int, nodes: Mapping[NodeId, bytes]) -> list[bytes]:
    """Fold the nodes of :func:`inclusion_plan` into the proof's hashes."""
    return [_fold(b, e, nodes) for b, e in _inclusion_ranges(index, size)]


def consistency_proof_from_nodes(
    old_size: int, size: int, nodes: Mapping[NodeId, bytes]
) -> list[bytes]:
    """Fold the nodes of :func:`consistency_plan` into the proof's hashes."""
    if old_size in (0, size):
        return []
    return [_fold(b, e, nodes) for b, e in _consistency_ranges(old_size, size)]


class CompactRange:
    """The right border of a growing tree: one hash per complete subtree covering ``[0, size)``.

    Appending a leaf returns every complete subtree that the leaf completes (itself at level 0
    first), which is all a store must write: O(1) amortized, O(log n) at worst.
    """

    def __init__(self, size: int = 0, border: Sequence[bytes] = ()) -> None:
        expected = root_plan(size)
        if len(border) != len(expected):
            raise ValueError(
                f"a tree of size {size} has {len(expected)} border nodes, not {len(border)}"
            )
        self._size = size
        self._border: list[tuple[int, bytes]] = [
            (node.level, h) for node, h in zip(expected, border, strict=True)
        ]

    @classmethod
    def load(
        cls, size: int, read: Callable[[list[NodeId]], Mapping[NodeId, bytes]]
    ) -> CompactRange:
        """Rebuild from storage: one read of :func:`root_plan` nodes."""
        plan = root_plan(size)
        nodes = read(plan)
        return cls(size, [nodes[node] for node in plan])

    @property
    def size(self) -> int:
        return self._size

    def root(self) -> bytes:
        if not self._border:
            return EMPTY_ROOT
        result = self._border[-1][1]
        for _, h in reversed(self._border[:-1]):
            result = node_hash(h, result)
        return result

    def append(self, leaf: bytes) -> list[tuple[NodeId, bytes]]:
        """Add one leaf *hash*; return the new complete subtrees with their hashes."""
        index = self._size
        created = [(NodeId(0, index), leaf)]
        self._border.append((0, leaf))
        while len(self._border) >= 2 and self._border[-1][0] == self._border[-2][0]:
            (level, right), (_, left) = self._border.pop(), self._border.pop()
            merged = node_hash(left, right)
            self._border.append((level + 1, merged))
            created.append((NodeId(level + 1, index >> (level + 1)), merged))
        self._size += 1
        return created

    def copy(self) -> CompactRange:
        clone = CompactRange()
        clone._size, clone._border = self._size, list(self._border)
        return clone


# ------------------------------------------------------------------ contract on leaf lists


def _all_nodes(leaves: Sequence[bytes]) -> dict[NodeId, bytes]:
    nodes: dict[NodeId, bytes] = {}
    tree = CompactRange()
    for data in leaves:
        nodes.update(tree.append(leaf_hash(data)))
    return nodes


def root(leaves: list[bytes]) -> bytes:
    """RFC 6962 §2.1 ``MTH(D[n])`` of raw leaf data; the empty tree's root is ``SHA-256("")``."""
    tree = CompactRange()
    for data in leaves:
        tree.append(leaf_hash(data))
    return tree.root()


def inclusion_proof(leaves: list[bytes], index: int) -> list[bytes]:
    """RFC 6962 §2.1.1 audit path for ``leaves[index]``; requires ``0 <= index < len(leaves)``."""
    size = len(leaves)
    inclusion_plan(index, size)  # checks the bounds
    return inclusion_proof_from_nodes(index, size, _all_nodes(leaves))


def consistency_proof(leaves: list[bytes], old_size: int) -> list[bytes]:
    """RFC 6962 §2.1.2 proof that the first ``old_size`` leaves are a prefix of ``leaves``.

    Requires ``0 <= old_size <= len(leaves)``; the proof is empty when ``old_size`` is 0 or
    ``len(leaves)`` (there is nothing to prove).
    """
    size = len(leaves)
    consistency_plan(old_size, size)  # checks the bounds
    return consistency_proof_from_nodes(old_size, size, _all_nodes(leaves))


# ----------------------------------------------------------------------------- verifiers
#
# RFC 9162 §2.1.3.2 and §2.1.4.2, in the exact-length form of transparency-dev/merkle's
# proof/verify.go: bounds first, then hash lengths, then the proof's exact length, then hashing.


def _is_hash(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == HASH_SIZE


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 64


def _inner_border(index: int, size: int) -> tuple[int, int]:
    """Split an inclusion proof's length: ``inner`` levels below the border, ``border`` above."""
    inner = (index ^ (size - 1)).bit_length()
    border = bin(index >> inner).count("1")
    return inner, border


def _chain_inner(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    for i, h in enumerate(proof):
        seed = node_hash(seed, h) if (index >> i) & 1 == 0 else node_hash(h, seed)
    return seed


def _chain_inner_right(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    for i, h in enumerate(proof):
        if (index >> i) & 1:
            seed = node_hash(h, seed)
    return seed


def _chain_border_right(seed: bytes, proof: Sequence[bytes]) -> bytes:
    for h in proof:
        seed = node_hash(h, seed)
    return seed


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """True iff ``proof`` shows the leaf with hash ``leaf_hash`` at ``index`` in the tree of
    ``size`` leaves whose root is ``root`` (RFC 9162 §2.1.3.2). Requires ``0 <= index < size``;
    anything else, or any hash that is not 32 bytes, or a proof of the wrong length, is False.
    """
    if not (_is_size(index) and _is_size(size) and index < size):
        return False
    if not (_is_hash(leaf_hash) and _is_hash(root)):
        return False
    if not isinstance(proof, Sequence) or not all(_is_hash(h) for h in proof):
        return False
    inner, border = _inner_border(index, size)
    if len(proof) != inner + border:
        return False
    computed = _chain_inner(leaf_hash, proof[:inner], index)
    computed = _chain_border_right(computed, proof[inner:])
    return computed == root


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """True iff ``proof`` shows that the tree of ``old_size`` leaves with root ``old_root`` is a
    prefix of the tree of ``new_size`` leaves with root ``new_root`` (RFC 9162 §2.1.4.2).

    Requires ``0 < old_size <= new_size`` (equal sizes need an empty proof and equal roots; a
    proof from the empty tree is meaningless and False). Never raises for bad values.
    """
    if not (_is_size(old_size) and _is_size(new_size) and old_size <= new_size):
        return False
    if not (_is_hash(old_root) and _is_hash(new_root)):
        return False
    if not isinstance(proof, Sequence) or not all(_is_hash(h) for h in proof):
        return False
    if old_size == new_size:
        return len(proof) == 0 and old_root == new_root
    if old_size == 0 or len(proof) == 0:
        return False
    inner, border = _inner_border(old_size - 1, new_size)
    shift = (old_size & -old_size).bit_length() - 1  # trailing zeros: levels the old tree fills
    inner -= shift
    # The proof starts with the hash of the subtree of size 2**shift, unless that is old_root.
    if old_size == 1 << shift:
        seed, rest = old_root, list(proof)
    else:
        seed, rest = proof[0], list(proof[1:])
    if len(rest) != inner + border:
        return False
    mask = (old_size - 1) >> shift
    old = _chain_border_right(_chain_inner_right(seed, rest[:inner], mask), rest[inner:])
    if old != old_root:
        return False
    new = _chain_border_right(_chain_inner(seed, rest[:inner], mask), rest[inner:])
    return new == new_root
