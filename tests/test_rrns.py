"""RRN blocks (``switch.journal.rrns``) from a sequence of block numbers, on an injected clock: as
many blocks fetched at once as a second at the present rate needs, in the background; a failed
fetch is fetched again by the request that needs the block. (Against PostgreSQL's sequence, across
front ends: ``tests/test_journal.py``.)"""

from __future__ import annotations

import asyncio
import itertools

from switch.journal.rrns import MAX_BLOCKS, RRN_BLOCK, Rrns
from tests.conftest import run


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Sequence:
    """``nextval`` of a sequence, ``n`` values a round trip; fails the rounds listed in ``failing``."""

    def __init__(self, failing: tuple[int, ...] = ()) -> None:
        self._values = itertools.count(1)
        self.asked: list[int] = []
        self._failing = failing

    async def __call__(self, n: int) -> list[int]:
        self.asked.append(n)
        await asyncio.sleep(0)
        if len(self.asked) in self._failing:
            raise ConnectionError("the database went away")
        return [next(self._values) for _ in range(n)]


def test_at_ten_thousand_a_second_a_second_of_blocks_is_fetched_in_one_round_trip():
    async def scenario() -> tuple[list[int], list[str]]:
        sequence, clock = Sequence(), Clock()
        rrns = Rrns(sequence, clock)
        taken = []
        for _ in range(RRN_BLOCK * 3):
            taken.append(await rrns.next())
            clock.now += 0.0001  # 10,000 a second
            await asyncio.sleep(0)  # (the fetches run in the background)
        return sequence.asked, taken

    asked, taken = run(scenario())
    assert asked[:2] == [1, 1]  # a block, then one ahead, while the rate is not known yet
    assert max(asked) >= 9  # then a second's worth (10 blocks, less what is in hand) at once
    assert len(set(taken)) == len(taken) and all(len(r) == 12 and r.isdigit() for r in taken)
    assert int(taken[0]) == RRN_BLOCK and int(taken[-1]) // RRN_BLOCK == 3  # blocks in order, none skipped


def test_a_failed_fetch_is_made_again_by_the_request_that_needs_a_block():
    async def scenario() -> tuple[list[str], list[int]]:
        sequence = Sequence(failing=(2,))  # the background fetch ahead fails
        rrns = Rrns(sequence, Clock())
        taken = [await rrns.next() for _ in range(RRN_BLOCK + 1)]
        return taken, sequence.asked

    taken, asked = run(scenario())
    assert asked[:3] == [1, 1, 1] and len(set(taken)) == RRN_BLOCK + 1  # the third: made again
    assert int(taken[-1]) // RRN_BLOCK == 2  # from the fetch made again (the failed one took no number)


def test_a_block_gone_in_a_moment_holds_no_more_than_max_blocks():
    """A burst used a block in no time: the rate it gives is no reason to hold a million RRNs."""

    async def scenario() -> tuple[Rrns, Sequence]:
        sequence = Sequence()
        rrns = Rrns(sequence, Clock())  # the clock never moves: every block lasts no time
        for _ in range(RRN_BLOCK * 3):
            await rrns.next()
            await asyncio.sleep(0)
        for _ in range(10):
            await asyncio.sleep(0)
        return rrns, sequence

    rrns, sequence = run(scenario())
    assert rrns.in_hand() <= (MAX_BLOCKS + 1) * RRN_BLOCK
    assert sum(sequence.asked) <= MAX_BLOCKS + 4
