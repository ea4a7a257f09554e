"""A terminal that knows the addresses of several switches (two active sites, or front ends
listed in its configuration rather than behind a balancer) and moves to the next one when its
connection breaks or cannot be made.

What it does with a request left unanswered is the terminal's rule of the wire contract (spec
section 3: the 0400 is for a request that got no answer): it does not resend a purchase to another
site, it reverses it there. ``send`` raises ``NoAnswer`` for such a request, after the move;
``send_until_answered`` is for the reversal itself, which the terminal repeats (a retransmission,
the same STAN and field 7) until some site answers it."""

from __future__ import annotations

import asyncio

from bench.client import IsoClient
from protocols.iso8583 import Message

ROUNDS = 3  # times round every address before a terminal gives up on reaching any


class NoAnswer(Exception):
    """The request may or may not have reached a switch: the connection broke, or no answer came."""


class AllSitesDown(ConnectionError):
    pass


class FailoverTerminal:
    """One connection at a time, to ``addresses`` in order; requests may be pipelined on it."""

    def __init__(self, addresses: list[tuple[str, int]]) -> None:
        self._addresses = addresses
        self._at = 0
        self._client: IsoClient | None = None
        self._lock = asyncio.Lock()
        self.failovers = 0  # moves to another address after a connection broke or failed

    @property
    def address(self) -> tuple[str, int]:
        return self._addresses[self._at]

    async def _connection(self) -> IsoClient:
        async with self._lock:
            if self._client is not None and not self._client.closed.is_set():
                return self._client
            for _ in range(ROUNDS * len(self._addresses)):
                try:
                    self._client = await IsoClient.connect(*self.address)
                    return self._client
                except OSError:
                    self._move()
                    await asyncio.sleep(0.1)
            raise AllSitesDown(f"no switch answers at {', '.join(f'{h}:{p}' for h, p in self._addresses)}")

    def _move(self) -> None:
        self._at = (self._at + 1) % len(self._addresses)
        self.failovers += 1

    def _broken(self, client: IsoClient) -> None:
        """The connection ``client`` failed: the next request goes to the next address (once, however
        many requests were under way on it)."""
        if self._client is client:
            self._client = None
            self._move()

    async def send(self, message: Message, timeout: float = 30.0) -> Message:
        """The answer to ``message``; ``NoAnswer`` when the connection broke or stayed silent."""
        client = await self._connection()
        try:
            return await client.request(message, timeout=timeout)
        except (ConnectionError, TimeoutError) as exc:
            self._broken(client)
            await client.close()
            raise NoAnswer(f"{type(exc).__name__} from {self.address}") from None

    async def send_until_answered(self, message: Message, timeout: float = 30.0) -> Message:
        """``message`` (a reversal) again and again, moving between addresses, until answered."""
        for _ in range(ROUNDS * len(self._addresses)):
            try:
                return await self.send(message, timeout)
            except NoAnswer:
                await asyncio.sleep(0.1)
        raise AllSitesDown(f"no answer to a {message['t']} from any of {len(self._addresses)} switches")

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
