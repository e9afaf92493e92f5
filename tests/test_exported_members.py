"""Each package's ``__all__`` is exactly its public names: nothing leaks, nothing is missing."""

from __future__ import annotations

import importlib
import types

import pytest

PACKAGES = [
    "corral.core",
    "corral.audit",
    "corral.broker",
    "corral.connectors",
    "corral.fakes",
    "corral.supervisor",
]
CONTRACT_MODULES = {
    "corral.audit.merkle": {
        "leaf_hash", "node_hash", "root", "inclusion_proof", "consistency_proof",
        "verify_inclusion", "verify_consistency",
    },
    "corral.audit.note": {"Signer", "Verifier", "generate_key", "sign", "open", "Checkpoint",
                          "NoteError"},
    "corral.core.canonical": {"canonicalize"},
}  # fmt: skip


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_the_sorted_public_names(name: str) -> None:
    module = importlib.import_module(name)
    public = {
        key
        for key, value in vars(module).items()
        if not key.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert sorted(module.__all__) == sorted(public)
    assert module.__all__ == sorted(module.__all__, key=lambda n: (not n.isupper(), n))


@pytest.mark.parametrize(("name", "contract"), CONTRACT_MODULES.items())
def test_design_contracts_are_exported(name: str, contract: set[str]) -> None:
    module = importlib.import_module(name)
    assert contract <= set(module.__all__)
    for attr in contract:
        assert callable(getattr(module, attr)) or isinstance(getattr(module, attr), type)
