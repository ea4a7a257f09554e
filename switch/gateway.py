"""The front end's door to one channel: transactions are gathered into batches, one actor call
per batch, and each transaction's result is handed back as soon as its group streams in.

The gateway also keeps the channel's front-end bulkhead: a bounded number of transactions under
way, so a stuck channel can hold at most that many and never the whole switch.
"""

from __future__ import annotations

import asyncio
import itertools
import logging

from ray.actor import ActorHandle

from protocols import response_codes as rc
from protocols.messages import BATCH_ENCODER, RESULTS_DECODER, ChannelRequest, ChannelResult, Outcome

log = logging.getLogger("paysw.gateway")


class ChannelGateway:
    def __init__(self, name: str, actors: list[ActorHandle], max_batch: int, max_in_flight: int) -> None:
        self.name = name
        self._actors = itertools.cycle(actors)
        self._max_batch = max_batch
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self._queue: list[ChannelRequest] = []
        self._waiting: dict[int, asyncio.Future[ChannelResult]] = {}
        self._wakeup = asyncio.Event()
        self._batches: set[asyncio.Task[None]] = set()
        self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch(), name=f"gateway-{name}")

    def has_room(self) -> bool:
        return self.in_flight < self.max_in_flight

    async def call(self, req: ChannelRequest) -> ChannelResult:
        future: asyncio.Future[ChannelResult] = asyncio.get_running_loop().create_future()
        self._waiting[req.key] = future
        self._queue.append(req)
        self._wakeup.set()
        self.in_flight += 1
        try:
            return await future
        finally:
            self.in_flight -= 1

    async def _dispatch(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                task = asyncio.get_running_loop().create_task(self._run_batch(next(self._actors), batch))
                self._batches.add(task)
                task.add_done_callback(self._batches.discard)

    async def _run_batch(self, actor: ActorHandle, batch: list[ChannelRequest]) -> None:
        try:
            stream = actor.process.options(num_returns="streaming").remote(BATCH_ENCODER.encode(batch))
            async for ref in stream:
                for result in RESULTS_DECODER.decode(await ref):
                    self._settle(result)
        except Exception as exc:
            # The actor died or Ray failed mid-batch: whatever has no result may have reached the
            # channel, so it is UNKNOWN (never resent: Ray retries are off for money).
            log.error("channel actor call failed", extra={"channel": self.name, "error": type(exc).__name__})
        finally:
            for req in batch:
                if req.key in self._waiting:
                    self._settle(
                        ChannelResult(req.key, Outcome.UNKNOWN, rc.CHANNEL_UNAVAILABLE, "ACTOR", "channel actor failed")
                    )

    def _settle(self, result: ChannelResult) -> None:
        future = self._waiting.pop(result.key, None)
        if future is not None and not future.done():
            future.set_result(result)

    async def close(self) -> None:
        self._dispatcher.cancel()
        for task in list(self._batches):
            task.cancel()
        await asyncio.gather(*self._batches, return_exceptions=True)
