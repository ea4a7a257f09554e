"""Warnings a peer can cause at will (junk frames, failed MACs), at most one per key and
interval: a flood of bad input must not become a flood of log lines. What was held back is
counted and reported with the next line of the same key."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable

MAX_KEYS = 10_000  # past this, keys are forgotten (those whose interval has passed first): a bound on memory


class RateLimitedLog:
    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._seen: dict[Hashable, tuple[float, int]] = {}  # key: (when last logged, held back since)

    def warn(self, logger: logging.Logger, key: Hashable, msg: str, **extra: object) -> bool:
        """Log ``msg`` at WARNING unless ``key`` was logged less than ``interval_s`` ago; True
        when it was logged. The line carries ``suppressed``: how many were held back before it."""
        now = self._clock()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self.interval_s:
            self._seen[key] = (last[0], last[1] + 1)
            return False
        if last is None and len(self._seen) >= MAX_KEYS:
            self._forget_before(now - self.interval_s)
        suppressed = last[1] if last is not None else 0
        self._seen[key] = (now, 0)
        logger.warning(msg, extra={**extra, "suppressed": suppressed})
        return True

    def _forget_before(self, cutoff: float) -> None:
        self._seen = {k: v for k, v in self._seen.items() if v[0] >= cutoff}
        if len(self._seen) >= MAX_KEYS:  # that many peers at once: their counts are not worth the memory
            self._seen.clear()
