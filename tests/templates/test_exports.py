"""``corral.templates.__all__`` is exactly its public names, sorted as the other packages'."""

from __future__ import annotations

import types

import corral.templates as templates


def test_all_is_the_sorted_public_names() -> None:
    public = {
        key
        for key, value in vars(templates).items()
        if not key.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert sorted(templates.__all__) == sorted(public)
    assert templates.__all__ == sorted(templates.__all__, key=lambda n: (not n.isupper(), n))


def test_the_manual_runs() -> None:
    import doctest

    result = doctest.testmod(templates)
    assert result.attempted >= 10 and result.failed == 0
