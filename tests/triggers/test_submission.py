"""SubmitPacer: the order in which the callers sharing one pace get their slots (no AWS call, a real event loop)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from airflow_ml_batch.triggers.submission import SubmitPacer, pacing_turn


async def test_each_slot_goes_to_the_lowest_turn_waiting_then_to_the_first_come() -> None:
    pacer = SubmitPacer(rate=50.0)
    await pacer.wait(9)  # the first slot is free: the callers below all wait for later ones
    order: list[str] = []

    async def caller(turn: int, name: str) -> None:
        await pacer.wait(turn)
        order.append(name)

    await asyncio.gather(*(caller(turn, name) for turn, name in [(5, "5"), (1, "1a"), (3, "3"), (0, "0"), (1, "1b")]))

    assert order == ["0", "1a", "1b", "3", "5"]


async def test_a_caller_cancelled_while_it_waits_leaves_its_slot_to_the_next() -> None:
    pacer = SubmitPacer(rate=50.0)
    await pacer.wait()
    order: list[str] = []

    async def caller(turn: int, name: str) -> None:
        await pacer.wait(turn)
        order.append(name)

    gone = asyncio.ensure_future(caller(0, "gone"))
    others = [asyncio.ensure_future(caller(turn, str(turn))) for turn in (2, 1)]
    await asyncio.sleep(0)  # every caller is waiting
    gone.cancel()
    await asyncio.gather(*others)

    assert order == ["1", "2"]
    assert gone.cancelled()


def test_a_triggers_turn_is_its_tasks_map_index() -> None:
    assert pacing_turn(SimpleNamespace(task_instance=SimpleNamespace(map_index=7))) == 7
    assert pacing_turn(SimpleNamespace(task_instance=SimpleNamespace(map_index=None))) == -1
    assert pacing_turn(SimpleNamespace(task_instance=SimpleNamespace(map_index=-1))) == -1
    assert pacing_turn(SimpleNamespace()) == -1  # a trigger run outside a triggerer has no task instance
