"""``switch.journal.groupcommit``: batches gathered while a flush is in flight, and under load a
linger for more. The flush here is a plain function recording each batch: what is tested is how
writes are grouped, not PostgreSQL (``test_journal`` runs the group commits against it)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from switch.journal.groupcommit import GroupCommit
from tests.conftest import run


def recorder() -> tuple[list[list[int]], object]:
    batches: list[list[int]] = []

    async def flush(items: Sequence[int]) -> list[int]:
        batches.append(list(items))
        return list(items)

    return batches, flush


async def busy(commit: GroupCommit, writes: int = 20) -> None:
    """Writes in quick succession: load, as the group commit reads it."""
    assert await asyncio.gather(*(commit.submit(-n) for n in range(1, writes + 1)))


@pytest.mark.parametrize("linger_s, expected", [(0.0, [[3], [4]]), (0.5, [[3, 4]])])
def test_under_load_a_batch_lingers_for_the_next_write(linger_s, expected):
    """While writes come less than the linger apart, the next write waits up to the linger, and
    the write that follows it 0.1 s later goes in the same round trip; with no linger each goes
    alone."""

    async def scenario() -> None:
        batches, flush = recorder()
        commit = GroupCommit("t", flush, max_batch=512, max_parallel=1, linger_s=linger_s)
        try:
            await busy(commit)
            third = asyncio.ensure_future(commit.submit(3))
            await asyncio.sleep(0.1)
            assert await commit.submit(4) == 4 and await third == 3
        finally:
            await commit.close()
        assert batches[1:] == expected

    run(scenario())


def test_writes_further_apart_than_the_linger_never_wait():
    """An idle switch, or a few terminals, pay nothing for the linger: writes 1.5 s apart with a
    linger of 1 s each go at once (a wait would outlast the 0.9 s allowed)."""

    async def scenario() -> None:
        batches, flush = recorder()
        commit = GroupCommit("t", flush, max_batch=512, max_parallel=1, linger_s=1.0)
        try:
            for item in range(3):
                if item:
                    await asyncio.sleep(1.5)
                assert await asyncio.wait_for(commit.submit(item), 0.9) == item
        finally:
            await commit.close()
        assert batches == [[0], [1], [2]]

    run(scenario())


def test_a_full_batch_ends_the_linger():
    """The linger waits for ``fill`` writes, not for its whole length once they are there."""

    async def scenario() -> None:
        batches, flush = recorder()
        commit = GroupCommit("t", flush, max_batch=512, max_parallel=1, linger_s=5.0, fill=4)
        try:
            await busy(commit)
            waiting = []
            for item in range(2, 6):
                waiting.append(asyncio.ensure_future(commit.submit(item)))
                await asyncio.sleep(0.01)
            assert await asyncio.wait_for(asyncio.gather(*waiting), 2.5) == [2, 3, 4, 5]
        finally:
            await commit.close()
        assert batches[1:] == [[2, 3, 4, 5]]

    run(scenario())


def test_closing_sends_a_lingering_batch():
    """A journal closed while a batch lingers commits it rather than failing its writes."""

    async def scenario() -> None:
        batches, flush = recorder()
        commit = GroupCommit("t", flush, max_batch=512, max_parallel=1, linger_s=30.0)
        await busy(commit)
        lingering = asyncio.ensure_future(commit.submit(7))
        await asyncio.sleep(0.05)
        assert batches[1:] == []  # waiting for more
        await asyncio.wait_for(commit.close(), 5)
        assert await lingering == 7 and batches[1:] == [[7]]

    run(scenario())
