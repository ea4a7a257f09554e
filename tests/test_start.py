"""The switch starts its channels' actors and its risk actors side by side (``switch.app.all_of``):
a failure of either is what the operator reads, as it is, and nothing of the other runs on."""

from __future__ import annotations

import asyncio

import pytest

from switch.app import all_of
from tests.conftest import run


def test_the_first_failure_is_raised_as_it_is_and_the_other_step_is_ended():
    ended: list[str] = []

    async def linking() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            ended.append("cancelled")
            raise
        ended.append("linked")  # not cancelled: it ran to its end

    async def counters() -> None:
        await asyncio.sleep(0.05)
        raise RuntimeError("the risk actors did not open their links within 120 s")

    async def start() -> list[str]:
        with pytest.raises(RuntimeError, match=r"^the risk actors did not open their links within 120 s$"):
            await all_of([linking(), counters()])
        return list(ended)  # as all_of left it

    assert run(start()) == ["cancelled"]  # and already ended


def test_steps_run_side_by_side_and_all_finish():
    started: list[int] = []
    all_started = asyncio.Event()

    async def step(n: int) -> None:
        started.append(n)
        if len(started) == 3:
            all_started.set()
        await all_started.wait()  # run one after the other, the first would wait for ever

    run(asyncio.wait_for(all_of([step(1), step(2), step(3)]), 10))
    assert sorted(started) == [1, 2, 3]
