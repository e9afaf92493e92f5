"""The demo's pure parts: the accelerated clock, the day's plan, the clinic's policy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest

from corral.core.clock import AcceleratedClock, ManualClock
from corral.demo import clinic
from corral.demo.summary import percentile
from corral.supervisor.policy import load_policy

REAL = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)
DAY = datetime(2026, 12, 7, 6, 50, tzinfo=UTC)


def test_accelerated_clock_stands_still_until_it_begins() -> None:
    real = ManualClock(REAL)
    clock = AcceleratedClock(DAY, 3600, base=real)
    real.advance(timedelta(seconds=30))
    assert clock.now() == DAY
    clock.begin(real.now() + timedelta(seconds=2))
    real.advance(timedelta(seconds=1))
    assert clock.now() == DAY  # the origin is still ahead
    real.advance(timedelta(seconds=1.5))
    assert clock.now() == DAY + timedelta(minutes=30)
    assert clock.simulated(real.now() + timedelta(seconds=1)) == DAY + timedelta(hours=1.5)


def test_accelerated_clock_keeps_real_intervals() -> None:
    real = ManualClock(REAL)
    clock = AcceleratedClock(DAY, 1000, origin=REAL, base=real)
    before = clock.monotonic()
    real.advance(timedelta(seconds=2))
    assert clock.monotonic() - before == pytest.approx(2.0)
    assert clock.now() == DAY + timedelta(seconds=2000)


@pytest.mark.parametrize("bad", [0.0, -2.0])
def test_accelerated_clock_refuses_a_factor_that_is_not_positive(bad: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        AcceleratedClock(DAY, bad)


def test_accelerated_clock_refuses_naive_times() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        AcceleratedClock(datetime(2026, 12, 7, 7, 0), 60)


def test_the_plan_is_a_function_of_the_seed() -> None:
    world = clinic.example_world()
    assert clinic.plan_day(11, world) == clinic.plan_day(11, world)
    routine = [
        {step["at"] for step in steps if "conflict" not in step}
        for steps in (clinic.plan_day(seed, world)["billing"] for seed in range(6))
    ]
    assert len({frozenset(times) for times in routine}) > 1  # the seed changes the routine


def test_every_collision_is_in_the_plan_at_its_fixed_time_whatever_the_seed() -> None:
    world = clinic.example_world()
    first = None
    for seed in range(20):
        plan = clinic.plan_day(seed, world)
        collisions = {
            (agent, step["conflict"], step["at"])
            for agent, steps in plan.items()
            for step in steps
            if "conflict" in step
        }
        assert {name for _agent, name, _at in collisions} == set(clinic.CONFLICTS)
        first = first or collisions
        assert collisions == first


def test_an_agents_steps_are_in_order_and_apart() -> None:
    for seed in range(20):
        for agent, steps in clinic.plan_day(seed, clinic.example_world()).items():
            times = [datetime.fromisoformat(step["at"]) for step in steps]
            assert times == sorted(times), agent
            gaps = [(b - a).total_seconds() for a, b in pairwise(times)]
            assert min(gaps) >= 1800, (seed, agent)


def test_routine_messages_stay_under_the_daily_maximum_per_patient() -> None:
    for seed in range(20):
        texts: dict[str, int] = {}
        for steps in clinic.plan_day(seed, clinic.example_world()).values():
            for step in steps:
                if "patient" in step and step["task"] != "ghl_check_in":
                    phone = step["patient"]["phone"]
                    texts[phone] = texts.get(phone, 0) + 1
        assert max(texts.values()) <= 2


def test_the_policy_is_a_valid_tenant_policy() -> None:
    policy = load_policy(clinic.policy(clinic.example_world()))
    dmitri = next(p for p in clinic.PATIENTS if p["key"] == "dmitri")
    assert dmitri["phone"] in policy.opted_out
    assert set(policy.roles) == set(clinic.ROLES)


def test_real_time_maps_back_to_the_clock() -> None:
    world = clinic.example_world()
    world["clock"]["origin"] = 1000.0
    start = datetime.fromisoformat(world["clock"]["start"])
    assert clinic.real_time(world, start + timedelta(hours=1)) == pytest.approx(1001.0)
    assert clinic.offset_text(world) == "-08:00"
    assert clinic.local_hour(world, "2026-03-04T18:00:00Z") == 10


def test_percentile_is_nearest_rank() -> None:
    values = [float(n) for n in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([], 50) is None
