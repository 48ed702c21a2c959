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
    clock.now += 0.2  # the first call at the halved pace goes out, and is throttled too
    rate.throttled()
    assert rate.rate == 2.5
    clock.now += 0.4
    rate.throttled()
    assert rate.rate == 2
    assert rate.throttles == 3


def test_calls_throttled_before_the_first_call_at_the_halved_pace_count_once() -> None:
    clock = Clock()
    rate = AdaptiveRate(10, 25, clock=clock)
    booked = [rate.reserve() for _ in range(10)]  # at 10/s: the last one 0.9 s from now
    assert booked[-1] == pytest.approx(0.9)

    clock.now += 0.05
    rate.throttled()
    for later in (0.3, 0.6, 0.9):  # calls booked at 10/s, throttled as they go out
        clock.now = 100.0 + later
        rate.throttled()
    assert rate.rate == 5
    assert rate.throttles == 4

    assert rate.reserve() == pytest.approx(0.1)  # the first slot at 5/s, after the ones booked at 10/s
    clock.now += 0.15
    rate.throttled()  # a call sent at the halved pace
    assert rate.rate == 2.5


def test_calls_booked_at_a_low_rate_are_spaced_at_the_rate_it_rises_to_by_their_turn() -> None:
    clock = Clock()
    rate = AdaptiveRate(1, 10, floor=1, quiet_seconds=1, step=1, clock=clock)

    waits = [rate.reserve() for _ in range(30)]

    # 1/s now, 2/s after one quiet second, 3/s after two, ...: the 30th in a little over 7 s, not 29 s at 1/s
    assert waits[:5] == pytest.approx([0.0, 1.0, 1.5, 2.0, 2.0 + 1 / 3])
    assert 7.0 < waits[-1] < 7.5
    assert waits[-1] - waits[-2] == pytest.approx(1 / 8)


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
