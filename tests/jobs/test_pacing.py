"""The adaptive rate's arithmetic, on an injected clock."""

from __future__ import annotations

import pytest

from airflow_ml_batch.jobs.pacing import AdaptiveRate


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_calls_are_spaced_at_the_initial_rate() -> None:
    clock = Clock()
    rate = AdaptiveRate(10, 25, clock=clock)

    waits = [rate.reserve() for _ in range(4)]

    assert waits == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_throttling_halves_the_rate_down_to_the_floor_and_pushes_the_next_call_out() -> None:
    clock = Clock()
    rate = AdaptiveRate(10, 25, floor=2, clock=clock)

    rate.throttled()
    assert rate.rate == 5
    assert rate.reserve() == pytest.approx(0.2)
    rate.throttled()
    rate.throttled()
    assert rate.rate == 2
    assert rate.throttles == 3


def test_quiet_spells_raise_the_rate_step_by_step_up_to_the_ceiling() -> None:
    clock = Clock()
    rate = AdaptiveRate(10, 25, quiet_seconds=5, step=2.5, clock=clock)
    rate.throttled()  # 5/s

    clock.now += 4.9
    assert rate.rate == 5
    clock.now += 0.1
    assert rate.rate == 7.5
    clock.now += 10
    assert rate.rate == 12.5
    clock.now += 1000
    assert rate.rate == 25


def test_a_throttle_restarts_the_quiet_spell() -> None:
    clock = Clock()
    rate = AdaptiveRate(10, 25, quiet_seconds=5, step=1, clock=clock)

    clock.now += 4
    rate.throttled()
    clock.now += 4
    assert rate.rate == 5


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"initial": 30, "ceiling": 25}, "0 < floor <= initial <= ceiling, not 0.5, 30, 25"),
        ({"initial": 10, "ceiling": 25, "floor": 0}, "0 < floor <= initial <= ceiling, not 0, 10, 25"),
        ({"initial": 10, "ceiling": 25, "quiet_seconds": 0}, "quiet_seconds must be positive"),
    ],
)
def test_bad_settings_are_named(arguments: dict[str, float], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        AdaptiveRate(**arguments)  # type: ignore[arg-type]
