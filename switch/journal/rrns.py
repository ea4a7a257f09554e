"""RRNs (field 37): 12 digits, unique across every front end, handed out from blocks of a
PostgreSQL sequence (block ``b`` holds ``b * RRN_BLOCK`` up to the next block's first) without a
round trip each.

Every answer to a purchase carries one, a shed ``91`` included (spec section 3), so under overload
RRNs go at the rate of every request read, ten thousand a second on two cores. Blocks are fetched
in the background while the ones in hand would last ``RESERVE_S`` at the rate they go (a block at
least), several in one round trip: fetched one at a time, a quarter of a block ahead,
the next one was late under overload and every request waited for it (91 ms on average in the
RRN step, ``paysw bench overload``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable

RRN_BLOCK = 1000
RESERVE_S = 1.0  # RRNs kept in hand for this long at the rate they go
MAX_BLOCKS = 64  # fetched in one round trip, and held, at most (a block that went in a moment says little)
log = logging.getLogger("paysw.journal")

Fetch = Callable[[int], Awaitable[list[int]]]  # n: n new block numbers


class Rrns:
    def __init__(self, fetch: Fetch, clock: Callable[[], float] = time.monotonic) -> None:
        self._fetch = fetch
        self._clock = clock
        self._blocks: deque[int] = deque()  # fetched, not begun
        self._next = self._end = 0  # the block in use
        self._begun_at: float | None = None  # when the block in use was begun
        self._per_s = 0.0  # the rate RRNs go at, read from how long the last block lasted
        self._lock = asyncio.Lock()
        self._filling: asyncio.Task[None] | None = None

    async def next(self) -> str:
        if self._next >= self._end:
            await self._begin_block()
        rrn = self._next
        self._next += 1
        if self._filling is None and self.in_hand() < self._reserve():
            self._filling = asyncio.ensure_future(self._fill())
            self._filling.add_done_callback(_logged)
        return f"{rrn:012d}"

    def in_hand(self) -> int:
        return self._end - self._next + RRN_BLOCK * len(self._blocks)

    def close(self) -> None:
        if self._filling is not None:
            self._filling.cancel()

    def _reserve(self) -> int:
        return min(MAX_BLOCKS * RRN_BLOCK, max(RRN_BLOCK, math.ceil(self._per_s * RESERVE_S)))

    async def _begin_block(self) -> None:
        async with self._lock:
            if self._next < self._end:  # begun by another while this one waited for the lock
                return
            while not self._blocks:
                ahead = self._filling
                if ahead is None:  # this request fetches: a failure is its own
                    self._filling = asyncio.ensure_future(self._fill())
                    self._filling.add_done_callback(_logged)
                    await asyncio.shield(self._filling)  # (cancelled, it leaves the fetch to the others)
                else:  # the fetch ahead, in the background: failed, it is made again
                    with contextlib.suppress(Exception):
                        await asyncio.shield(ahead)
            now = self._clock()
            if self._begun_at is not None:
                self._per_s = RRN_BLOCK / max(now - self._begun_at, 1e-3)
            self._begun_at = now
            block = self._blocks.popleft()
            self._next, self._end = block * RRN_BLOCK, (block + 1) * RRN_BLOCK

    async def _fill(self) -> None:
        try:
            wanted = self._reserve() - self.in_hand()
            self._blocks.extend(await self._fetch(min(MAX_BLOCKS, max(1, math.ceil(wanted / RRN_BLOCK)))))
        finally:
            self._filling = None


def _logged(task: asyncio.Task[None]) -> None:
    """A fetch in the background that failed: the request that needs the block fetches again."""
    if not task.cancelled() and task.exception() is not None:
        log.warning("fetching RRN blocks failed", extra={"error": type(task.exception()).__name__})
