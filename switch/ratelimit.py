"""Token buckets: the channels' quotas, per channel and per merchant at a channel; and the
signatures that failed, per peer."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """``rate`` tokens a second, holding at most ``burst``; a call takes one or is refused."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._burst = burst
        self._clock = clock
        self._tokens = burst
        self._last = clock()

    def try_take(self) -> bool:
        if self.available() >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def available(self) -> float:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        return self._tokens


class Quota:
    """A limit of ``rate`` a second (burst: one second's worth), or none when ``rate`` is 0."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._bucket = TokenBucket(rate, max(1.0, rate), clock) if rate > 0 else None

    def try_take(self) -> bool:
        return self._bucket is None or self._bucket.try_take()


MAX_PEERS = 10_000  # peers' buckets held; past it, the full ones are forgotten


class FailureLimit:
    """At most ``per_minute`` failures a minute for each peer (its address), a minute's worth at
    once: past them the peer is refused until it has earned one back. For the checks that cost
    the switch (a signature verified), so that a peer sending forgeries cannot make it verify at
    will. ``per_minute`` 0: no limit."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._per_minute = per_minute
        self._clock = clock
        self._peers: dict[str, TokenBucket] = {}

    def refused(self, peer: str) -> bool:
        bucket = self._peers.get(peer)
        return bucket is not None and bucket.available() < 1.0

    def failed(self, peer: str) -> None:
        if not self._per_minute:
            return
        bucket = self._peers.get(peer)
        if bucket is None:
            if len(self._peers) >= MAX_PEERS:
                self._peers = {p: b for p, b in self._peers.items() if b.available() < self._per_minute}
                if len(self._peers) >= MAX_PEERS:  # that many failing at once: memory first
                    self._peers.clear()
            bucket = self._peers[peer] = TokenBucket(self._per_minute / 60, self._per_minute, self._clock)
        bucket.try_take()
