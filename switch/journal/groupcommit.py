"""Group commit: writes that arrive while earlier flushes are in flight are gathered and flushed
together, one round trip for many. The batch is whatever queued up, and under load (writes
arriving less than ``linger_s`` apart, on average) a little more: it lingers up to ``linger_s``
for ``fill`` writes.
A round trip costs the front end and PostgreSQL much the same CPU whatever it carries: paced at
1,000 a second batches held about 3, and CPU queueing made the tail. Lingering 2 ms (batches of
about 5) took PostgreSQL's CPU per purchase to 0.69 and p99 to 0.81 of what they were
(``paysw bench profile --rate 1000``, README). Where writes come further apart on average (an
idle switch) a wait would fill with nobody, and there is none. The mean moves with each write, not
with time: the first writes after load stops may still wait, and a few terminals in a closed loop,
whose writes come in bursts, wait part of the time (README: 8 % fewer approvals at 4)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger("paysw.journal")
GAP_WEIGHT = 0.2  # of each new gap between writes in their running mean
GAP_MAX_S = 10.0  # a longer pause counts as this: the mean forgets an idle hour within a few dozen writes


class GroupCommit(Generic[T, R]):
    """Feeds ``flush`` with batches of submitted items; ``flush`` returns one result per item.

    If a batch fails as a whole, its items are flushed one by one, so one bad row cannot fail
    its neighbours; an item that fails alone raises to its own submitter.
    """

    def __init__(
        self,
        name: str,
        flush: Callable[[Sequence[T]], Awaitable[Sequence[R]]],
        max_batch: int,
        max_parallel: int,
        on_batch: Callable[[str, int, float], None] | None = None,
        linger_s: float = 0.0,
        fill: int = 16,
    ) -> None:
        self._name = name
        self._flush = flush
        self._max_batch = max_batch
        self._slots = asyncio.Semaphore(max_parallel)
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._wakeup = asyncio.Event()
        self._on_batch = on_batch
        self._runner = asyncio.get_running_loop().create_task(self._run(), name=f"group-commit-{name}")
        self._flushes: set[asyncio.Task[None]] = set()
        self._linger_s = linger_s
        self._fill = min(fill, max_batch)
        self._filling: asyncio.Future[None] | None = None  # a linger's wait, ended early by a full batch
        self._gap = GAP_MAX_S  # running mean of the seconds between writes
        self._at = 0.0  # when the last write came

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._gap += (min(now - self._at, GAP_MAX_S) - self._gap) * GAP_WEIGHT
        self._at = now
        future: asyncio.Future[R] = loop.create_future()
        self._queue.append((item, future))
        self._wakeup.set()
        if self._filling is not None and len(self._queue) >= self._fill:
            _resolve(self._filling)
        return await future

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                await self._slots.acquire()
                if self._gap < self._linger_s and len(self._queue) < self._fill:
                    await self._linger()
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                task = asyncio.get_running_loop().create_task(self._flush_batch(batch))
                self._flushes.add(task)
                task.add_done_callback(self._flushes.discard)

    async def _linger(self) -> None:
        loop = asyncio.get_running_loop()
        self._filling = filling = loop.create_future()
        timer = loop.call_later(self._linger_s, _resolve, filling)
        try:
            await filling
        finally:
            timer.cancel()
            self._filling = None

    async def _flush_batch(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            try:
                results = await self._flush([item for item, _ in batch])
            except Exception as exc:
                if len(batch) == 1:
                    _resolve(batch[0][1], exc=exc)
                    return
                log.warning("%s batch of %d failed (%s); retrying one by one", self._name, len(batch), exc)
                for item, future in batch:
                    try:
                        (result,) = await self._flush([item])
                    except Exception as one_exc:
                        _resolve(future, exc=one_exc)
                    else:
                        _resolve(future, result=result)
                return
            for (_, future), result in zip(batch, results, strict=True):
                _resolve(future, result=result)
        finally:
            self._slots.release()
            if self._on_batch is not None:
                self._on_batch(self._name, len(batch), loop.time() - started)

    async def close(self) -> None:
        """Send a lingering batch now and wait for the flushes under way; what is still queued
        then (behind a flush that held every slot) fails, and is the resolver's."""
        self._linger_s = 0.0
        if self._filling is not None:
            _resolve(self._filling)
            await asyncio.sleep(0)  # the runner takes the batch
        self._runner.cancel()
        if self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)
        for _, future in self._queue:
            _resolve(future, exc=ConnectionError("journal closed"))
        self._queue.clear()


def _resolve(future: asyncio.Future[R], *, result: R | None = None, exc: BaseException | None = None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)  # type: ignore[arg-type]
