"""The front end's door to one channel: transactions are gathered into batches, one actor call
per batch, and each transaction's result is handed back as soon as its group streams in.

The gateway also keeps the channel's front-end bulkhead: a bounded number of transactions under
way, so a stuck channel can hold at most that many and never the whole switch.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from typing import NamedTuple

from ray.actor import ActorHandle

from protocols import response_codes as rc
from protocols.messages import BATCH_ENCODER, RESULTS_DECODER, ChannelRequest, ChannelResult, Outcome

log = logging.getLogger("paysw.gateway")


class PaymentRef(NamedTuple):
    """What a channel call needs to know of the payment it is about."""

    out_trade_no: str
    amount_fen: int
    merchant_channel_id: str
    terminal_id: str
    created: float  # epoch seconds of the write-ahead
    channel_txn_id: str = ""
    refund_no: str = ""  # a refund: its own order number at the channel
    total_fen: int = 0  # a refund: the payment's whole amount


class ChannelGateway:
    def __init__(self, name: str, actors: list[ActorHandle], max_batch: int, max_in_flight: int) -> None:
        self.name = name
        self._actors = itertools.cycle(actors)
        self._max_batch = max_batch
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self._keys = itertools.count(1)
        self._queue: list[ChannelRequest] = []
        self._waiting: dict[int, asyncio.Future[ChannelResult]] = {}
        self._wakeup = asyncio.Event()
        self._batches: set[asyncio.Task[None]] = set()
        self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch(), name=f"gateway-{name}")

    def has_room(self) -> bool:
        return self.in_flight < self.max_in_flight

    async def call(
        self,
        op: str,
        ref: PaymentRef,
        deadline: float,
        auth_code: str = "",
        on_late: Callable[[ChannelResult], None] | None = None,
    ) -> ChannelResult:
        """One channel call, answered by ``deadline`` (epoch seconds) at the latest: past it the
        result is UNKNOWN, and the call's own late answer goes to ``on_late`` (to be kept; the
        resolver settles the transaction from the channel's side, never from a late answer alone)."""
        key = next(self._keys)
        req = ChannelRequest(
            key,
            op,
            ref.out_trade_no,
            ref.amount_fen,
            auth_code,
            ref.merchant_channel_id,
            ref.terminal_id,
            deadline,
            ref.created,
            ref.channel_txn_id,
            refund_no=ref.refund_no,
            total_fen=ref.total_fen,
        )
        future: asyncio.Future[ChannelResult] = asyncio.get_running_loop().create_future()
        self._waiting[key] = future
        self._queue.append(req)
        self._wakeup.set()
        # Counted until the call itself ends, not until we stop waiting: a stuck call holds its place.
        self.in_flight += 1
        future.add_done_callback(self._call_ended)
        try:
            return await asyncio.wait_for(asyncio.shield(future), max(0.0, deadline - time.time()))
        except TimeoutError:
            future.add_done_callback(lambda done: self._late(op, done, on_late))
            return ChannelResult(key, Outcome.UNKNOWN, rc.CHANNEL_UNAVAILABLE, "DEADLINE", "no answer in time")

    def _late(
        self, op: str, done: asyncio.Future[ChannelResult], on_late: Callable[[ChannelResult], None] | None
    ) -> None:
        result = done.result()
        log.warning("late channel answer", extra={"channel": self.name, "op": op, "outcome": result.outcome.value})
        if on_late is not None:
            on_late(result)

    def _call_ended(self, _: asyncio.Future[ChannelResult]) -> None:
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
