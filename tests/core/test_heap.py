"""The service's heap policy: settle collects what died, freezes what lives; the policy turns
automatic full collections off and hands everything back on exit."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from corral.core import heap


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture(autouse=True)
def _thawed() -> Iterator[None]:
    """Each test starts and ends with nothing frozen and CPython's own thresholds."""
    before = gc.get_threshold()
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_settle_collects_cycles_that_died_before_freezing_what_lives() -> None:
    dead, alive = Node(), Node()
    dead.other, alive.other = Node(), Node()
    dead.other.other = dead  # an unreachable cycle once `dead` is dropped
    probe = weakref.ref(dead)
    del dead
    assert probe() is not None  # reference counting alone cannot free a cycle

    pause_ms = heap.settle()

    assert probe() is None
    assert pause_ms >= 0
    assert gc.get_freeze_count() > 0
    assert gc.is_tracked(alive)
    kept = gc.get_objects()  # the frozen generation is not in any of the three
    assert not any(obj is alive for obj in kept)


def test_the_policy_turns_automatic_full_collections_off_and_restores_everything() -> None:
    before = gc.get_threshold()
    with heap.policy():
        during = gc.get_threshold()
        assert gc.get_freeze_count() > 0  # settled on entry
    assert during[:2] == before[:2]
    assert during[2] >= 2**30 > before[2]
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0  # handed back to the collector


def test_a_frozen_object_that_dies_acyclic_is_still_freed() -> None:
    """What the ledger forgets holds no cycles: reference counting frees it although frozen."""
    record = Node()
    probe = weakref.ref(record)
    heap.settle()
    del record
    assert probe() is None
