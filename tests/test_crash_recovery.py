"""``kill -9`` of the switch at random moments under steady traffic loses nothing: after a
restart, recovery settles every transaction, and the journal agrees with every channel's ledger
(nothing lost, nothing charged that the journal does not show APPROVED, nothing left open).
The test has a journal and simulators of its own, so every order the channels hold is one it sent
and must be in the journal. Its draws are seeded (``PAYSW_TEST_SEED`` replays a failed run's codes,
amounts and kill moments; not the scheduling). CI runs 3 kills; ``-m slow`` runs 10."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from tests.conftest import SwitchProcess, run
from tests.support import settle_and_compare, steady_traffic


async def kill_rounds(
    switch: SwitchProcess, kills: int, rng: random.Random
) -> tuple[dict[str, str], set[str], set[str]]:
    answers: dict[str, str] = {}
    reversed_rrns: set[str] = set()
    maybe_reversed: set[str] = set()
    for _ in range(kills):
        switch.start()
        stop = asyncio.Event()
        traffic = asyncio.create_task(steady_traffic(switch.port, answers, reversed_rrns, maybe_reversed, stop, rng))
        await asyncio.sleep(rng.uniform(1.0, 3.0))
        switch.kill()  # at a random moment, with transactions under way
        stop.set()
        await asyncio.wait_for(traffic, 40)
    return answers, reversed_rrns, maybe_reversed - reversed_rrns


def crash_test(kills: int, stack: tuple[Path, str, dict[str, int]], seed: int, log: Path) -> None:
    config, database_url, simulators = stack
    rng = random.Random(seed)
    replay = f"replay with PAYSW_TEST_SEED={seed}"
    switch = SwitchProcess(config, database_url, log)

    async def scenario() -> None:
        answers, reversed_rrns, unanswered_reversals = await kill_rounds(switch, kills, rng)
        switch.start()  # the restart whose recovery settles what the kills left open
        try:
            await settle_and_compare(database_url, simulators, answers, reversed_rrns, unanswered_reversals, replay)
        finally:
            assert switch.stop() == 0

    run(scenario())


def test_kill_9_loses_nothing(own_stack, seed, tmp_path):
    crash_test(3, own_stack, seed, tmp_path / "crash.log")


@pytest.mark.slow
def test_kill_9_ten_times_loses_nothing(own_stack, seed, tmp_path):
    crash_test(10, own_stack, seed, tmp_path / "crash.log")
