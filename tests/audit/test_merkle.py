"""RFC 6962 hashing and proofs: upstream vectors, a literal reference, and properties."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.audit import merkle
from tests.audit import _reference as ref
from tests.conftest import vector

TREE = vector("rfc6962-tree-hashes.json")
LEAVES = [bytes.fromhex(h) for h in TREE["leaf_inputs_hex"]]
INCLUSION = vector("rfc6962-inclusion-proofs.json")["cases"]
CONSISTENCY = vector("rfc6962-consistency-proofs.json")["cases"]


def _b64(value: str | None) -> bytes:
    return base64.b64decode(value or "")


def _proof(value: list[str] | None) -> list[bytes]:
    return [_b64(p) for p in value or []]


def _case_id(case: dict[str, Any]) -> str:
    return f"{case['file']}"


def test_tree_vectors_every_node_and_root() -> None:
    levels = TREE["node_hashes_by_level"]["levels"]
    nodes: dict[merkle.NodeId, bytes] = {}
    tree = merkle.CompactRange()
    for data in LEAVES:
        nodes.update(tree.append(merkle.leaf_hash(data)))
    for level, hashes in enumerate(levels):
        for index, want in enumerate(hashes):
            assert nodes[merkle.NodeId(level, index)].hex() == want, (level, index)
    roots = _roots(TREE["root_hashes_by_tree_size"])
    assert [size for size, _ in roots] == list(range(9))
    for size, want in roots:
        assert merkle.root(LEAVES[:size]).hex() == want, size


def _roots(roots: dict[str, Any]) -> list[tuple[int, str]]:
    return list(enumerate(roots["roots"]))


@pytest.mark.parametrize("case", TREE["hasher_vectors"], ids=lambda c: c["desc"])
def test_hasher_vectors(case: dict[str, str]) -> None:
    if case["op"] == "empty_root":
        got = merkle.root([])
        assert got == merkle.EMPTY_ROOT
    elif case["op"] == "hash_leaf":
        got = merkle.leaf_hash(case["input_utf8"].encode())
    else:
        got = merkle.node_hash(case["left_utf8"].encode(), case["right_utf8"].encode())
    assert got.hex() == case["want"]


@pytest.mark.parametrize("case", INCLUSION, ids=_case_id)
def test_inclusion_vectors(case: dict[str, Any]) -> None:
    ok = merkle.verify_inclusion(
        _b64(case["leafHash"]),
        case["leafIdx"],
        case["treeSize"],
        _proof(case["proof"]),
        _b64(case["root"]),
    )
    assert ok is (not case["wantErr"]), case["desc"]


@pytest.mark.parametrize("case", CONSISTENCY, ids=_case_id)
def test_consistency_vectors(case: dict[str, Any]) -> None:
    ok = merkle.verify_consistency(
        case["size1"],
        case["size2"],
        _b64(case["root1"]),
        _b64(case["root2"]),
        _proof(case["proof"]),
    )
    assert ok is (not case["wantErr"]), case["desc"]


def test_vector_counts_match_the_readme() -> None:
    assert len(INCLUSION) == 59
    assert len(CONSISTENCY) == 50


def test_our_proofs_match_the_valid_vectors() -> None:
    for case in INCLUSION:
        if not case["wantErr"] and case["treeSize"] <= len(LEAVES):
            got = merkle.inclusion_proof(LEAVES[: case["treeSize"]], case["leafIdx"])
            if merkle.leaf_hash(LEAVES[case["leafIdx"]]) == _b64(case["leafHash"]):
                assert got == _proof(case["proof"]), case["file"]


@pytest.mark.parametrize("size", range(1, 40))
def test_against_reference_small_trees(size: int) -> None:
    leaves = [bytes([i]) * (i % 5) for i in range(size)]
    assert merkle.root(leaves) == ref.mth(leaves)
    for index in range(size):
        proof = merkle.inclusion_proof(leaves, index)
        assert proof == ref.path(index, leaves)
        assert merkle.verify_inclusion(
            merkle.leaf_hash(leaves[index]), index, size, proof, ref.mth(leaves)
        )
    for old in range(1, size + 1):
        proof = merkle.consistency_proof(leaves, old)
        assert proof == (ref.proof(old, leaves) if old < size else [])
        assert merkle.verify_consistency(old, size, ref.mth(leaves[:old]), ref.mth(leaves), proof)


leaf_lists = st.lists(st.binary(max_size=8), min_size=1, max_size=70)


@given(leaf_lists, st.data())
def test_inclusion_property(leaves: list[bytes], data: st.DataObject) -> None:
    size = len(leaves)
    index = data.draw(st.integers(0, size - 1))
    proof = merkle.inclusion_proof(leaves, index)
    top = merkle.root(leaves)
    lh = merkle.leaf_hash(leaves[index])
    assert merkle.verify_inclusion(lh, index, size, proof, top)
    # Any single-bit change to any input makes it fail.
    if proof:
        i = data.draw(st.integers(0, len(proof) - 1))
        bad = [*proof]
        bad[i] = bytes([bad[i][0] ^ 1]) + bad[i][1:]
        assert not merkle.verify_inclusion(lh, index, size, bad, top)
        assert not merkle.verify_inclusion(lh, index, size, proof[:-1], top)
    assert not merkle.verify_inclusion(lh, index, size, [*proof, top], top)


@given(leaf_lists, st.data())
def test_consistency_property(leaves: list[bytes], data: st.DataObject) -> None:
    size = len(leaves)
    old = data.draw(st.integers(1, size))
    proof = merkle.consistency_proof(leaves, old)
    old_root, new_root = merkle.root(leaves[:old]), merkle.root(leaves)
    assert merkle.verify_consistency(old, size, old_root, new_root, proof)
    if proof:
        assert not merkle.verify_consistency(old, size, new_root, new_root, proof) or old == size
        forked = [*leaves[: old - 1], leaves[old - 1] + b"!", *leaves[old:]]
        assert not merkle.verify_consistency(old, size, merkle.root(forked[:old]), new_root, proof)


@given(
    st.one_of(st.integers(), st.booleans(), st.none()),
    st.one_of(st.integers(), st.none()),
    st.one_of(st.binary(), st.none()),
    st.one_of(st.lists(st.binary()), st.none(), st.text()),
)
def test_verifiers_never_raise(index: Any, size: Any, h: Any, proof: Any) -> None:
    assert merkle.verify_inclusion(h, index, size, proof, h) in (True, False)
    assert merkle.verify_consistency(index, size, h, h, proof) in (True, False)


def test_consistency_from_empty_tree_is_false() -> None:
    assert not merkle.verify_consistency(0, 3, merkle.EMPTY_ROOT, merkle.root([b"a"] * 3), [])
    assert not merkle.verify_consistency(
        0, 3, merkle.EMPTY_ROOT, merkle.root([b"a"] * 3), [b"\0" * 32]
    )


@given(st.integers(0, 5000), st.data())
def test_plans_are_logarithmic_and_fold_correctly(size: int, data: st.DataObject) -> None:
    leaves = [i.to_bytes(2, "big") for i in range(size)]
    nodes = merkle._all_nodes(leaves)
    limit = 2 * max(size, 1).bit_length() + 2
    assert len(merkle.root_plan(size)) <= size.bit_length()
    assert merkle.root_from_nodes(size, nodes) == merkle.root(leaves)
    if size:
        index = data.draw(st.integers(0, size - 1))
        plan = merkle.inclusion_plan(index, size)
        assert len(plan) <= limit
        assert merkle.inclusion_proof_from_nodes(index, size, {n: nodes[n] for n in plan}) == (
            merkle.inclusion_proof(leaves, index)
        )
        old = data.draw(st.integers(0, size))
        cplan = merkle.consistency_plan(old, size)
        assert len(cplan) <= limit
        got = merkle.consistency_proof_from_nodes(old, size, {n: nodes[n] for n in cplan})
        assert got == merkle.consistency_proof(leaves, old)


def test_compact_range_reload_continues_the_same_tree() -> None:
    leaves = [bytes([i]) for i in range(37)]
    full = merkle._all_nodes(leaves)
    tree = merkle.CompactRange.load(20, lambda plan: {n: full[n] for n in plan})
    for data in leaves[20:]:
        for node, h in tree.append(merkle.leaf_hash(data)):
            assert full[node] == h
    assert tree.root() == merkle.root(leaves)


def test_plan_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="index"):
        merkle.inclusion_plan(3, 3)
    with pytest.raises(ValueError, match="old_size"):
        merkle.consistency_plan(4, 3)
    with pytest.raises(ValueError, match="border"):
        merkle.CompactRange(3, [b"\0" * 32])
