"""A front end's side of the risk actors: one link to each shard, the asks of one event-loop turn
sent as one frame per shard, each answered or given up on after the configured wait."""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
from collections.abc import Callable

from ray.actor import ActorHandle

from actors.link import ActorLink
from risk.messages import ANSWERS, Answer, Ask

log = logging.getLogger("paysw.risk")
LINK_RETRY_S = (0.2, 5.0)
LINK_OPEN_TIMEOUT_S = 120.0  # a shard rebuilding a busy day from the journal takes a while


class Unreachable(Exception):
    """A shard did not answer in time (its link is down, or it is rebuilding)."""


class CounterShards:
    def __init__(self, actors: list[ActorHandle], timeout_s: float, tls: ssl.SSLContext | None = None) -> None:
        self._actors = actors
        self._timeout_s = timeout_s
        self._tls = tls
        self._links: list[ActorLink | None] = [None] * len(actors)
        self._queues: list[list[Ask]] = [[] for _ in actors]
        self._waiting: dict[int, asyncio.Future[Answer]] = {}
        self._next_key = 0
        self._flush_scheduled = False
        self._tasks: list[asyncio.Task[None]] = []
        self.linked = [asyncio.Event() for _ in actors]

    @property
    def shards(self) -> int:
        return len(self._actors)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._keep_linked(i)) for i in range(len(self._actors))]

    async def ask(self, asks: dict[int, Ask]) -> list[Answer]:
        """Each shard's answer to its ask; ``Unreachable`` if any is not in within the wait."""
        futures = [self._queue(shard, ask) for shard, ask in asks.items()]
        try:
            if len(futures) == 1:  # (most payments' subjects are on one or two shards)
                return [await futures[0]]
            return list(await asyncio.gather(*futures))
        except ConnectionError as exc:
            raise Unreachable(str(exc)) from None

    def tell(self, asks: list[tuple[int, Ask]]) -> None:
        """Send now, not answered (the approvals and reversals of one journal commit, to count),
        with whatever asks are queued: before the terminal is answered, so that a payment sent
        after the answer, to any front end, is judged with it. A shard whose link is down misses
        it, and catches up from the journal when it starts again."""
        for shard, ask in asks:
            if self._links[shard] is not None:
                self._queues[shard].append(ask)  # key 0: no answer comes
        self._flush()

    def _queue(self, shard: int, ask: Ask) -> asyncio.Future[Answer]:
        self._next_key += 1
        ask = Ask(self._next_key, ask.op, ask.subjects, ask.rrn, ask.amount_fen, ask.merchant, ask.terminal, ask.checks)
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        if self._links[shard] is None:
            future.set_exception(ConnectionError(f"no link to risk shard {shard}"))
            return future
        self._waiting[ask.key] = future
        self._queues[shard].append(ask)
        if not self._flush_scheduled:  # the asks of one loop turn leave as one frame per shard
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        sent: list[int] = []
        try:
            for shard, queue in enumerate(self._queues):
                if queue:
                    self._queues[shard] = []
                    link = self._links[shard]
                    if link is not None and link.is_open:
                        sent.extend(ask.key for ask in queue if ask.key)
                        link.send(queue)
                    else:
                        for ask in queue:
                            self._fail(ask.key, f"no link to risk shard {shard}")
        finally:  # one deadline for the asks of the turn, not a timer each; even if a send raised
            if sent:
                asyncio.get_running_loop().call_later(self._timeout_s, self._expire, sent)

    def _expire(self, keys: list[int]) -> None:
        for key in keys:
            self._fail(key, f"no answer within {self._timeout_s * 1000:.0f} ms")

    def _fail(self, key: int, why: str) -> None:
        future = self._waiting.pop(key, None)
        if future is not None and not future.done():
            future.set_exception(ConnectionError(why))

    def _answers(self, answers: list[Answer]) -> None:
        for answer in answers:
            future = self._waiting.pop(answer.key, None)
            if future is not None and not future.done():
                future.set_result(answer)

    async def _keep_linked(self, shard: int) -> None:
        retry = LINK_RETRY_S[0]
        while True:
            lost = asyncio.Event()
            try:
                address = await asyncio.wait_for(self._actors[shard].open_link.remote(), LINK_OPEN_TIMEOUT_S)
                self._links[shard] = await ActorLink.connect(
                    address, self._answers, functools.partial(self._lost, shard, lost), self._tls, ANSWERS
                )
            except Exception as exc:  # restarting (rebuilding), or gone
                log.warning("cannot open a link to the risk actor", extra={"shard": shard, "error": type(exc).__name__})
                await asyncio.sleep(retry)
                retry = min(retry * 2, LINK_RETRY_S[1])
                continue
            retry = LINK_RETRY_S[0]
            self.linked[shard].set()
            await lost.wait()

    def _lost(self, shard: int, lost: asyncio.Event) -> None:
        self._links[shard] = None
        self.linked[shard].clear()
        for key in list(self._waiting):  # which shard each was for is not kept: fail them all
            self._fail(key, f"link to risk shard {shard} lost")
        lost.set()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for link in self._links:
            if link is not None:
                link.close()


def spread(subjects: tuple, shards: int, shard_of: Callable) -> dict[int, list]:
    """``subjects`` by the shard that counts each."""
    if shards == 1 and subjects:  # every subject is the one shard's: no hash of each (two a subject a payment)
        return {0: list(subjects)}
    by_shard: dict[int, list] = {}
    for subject in subjects:
        by_shard.setdefault(shard_of(subject, shards), []).append(subject)
    return by_shard
