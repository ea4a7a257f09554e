"""Warnings a stranger can provoke at will (bad MACs, junk frames), logged at most once per key
per interval, so that a flood of them cannot flood the log: the ones held back are counted and
the count goes out with the next record of that key."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from typing import Any

_MAX_KEYS = 10_000  # past this many keys, those whose interval is over are forgotten (with their counts)


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._clock = clock
        self._seen: dict[Hashable, tuple[float, int]] = {}  # key -> (when last logged, held back since)

    def warning(self, key: Hashable, msg: str, extra: dict[str, Any]) -> None:
        """Log ``msg`` unless ``key`` was logged less than the interval ago; the record carries
        ``suppressed``: how many of the key's records were held back since the last one."""
        now = self._clock()
        last, suppressed = self._seen.get(key, (float("-inf"), 0))
        if now - last < self._interval_s:
            self._seen[key] = (last, suppressed + 1)
            return
        if len(self._seen) >= _MAX_KEYS:
            self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self._interval_s}
        self._seen[key] = (now, 0)
        self._logger.warning(msg, extra={**extra, "suppressed": suppressed})
