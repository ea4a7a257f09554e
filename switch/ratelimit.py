"""Token buckets: the channels' quotas, per channel and per merchant at a channel."""

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
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class Quota:
    """A limit of ``rate`` a second (burst: one second's worth), or none when ``rate`` is 0."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._bucket = TokenBucket(rate, max(1.0, rate), clock) if rate > 0 else None

    def try_take(self) -> bool:
        return self._bucket is None or self._bucket.try_take()
