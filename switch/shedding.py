"""Load shedding for the switch as a whole: when it is over capacity, new financial requests are
answered ``91`` at once, before any journal or channel work, so that memory stays flat and the
requests already under way finish in time. It recovers by itself as the load falls.

Two signals: requests under way in this front end (all connections together), and how late the
event loop runs its callbacks (a loop that lags is a CPU that cannot keep up; every request
waiting in it gets later still).
"""

from __future__ import annotations

import asyncio
import time

LAG_SAMPLE_S = 0.05
LAG_SMOOTHING = 0.3  # weight of the newest sample: a single hiccup does not shed, a trend does


class LoadShedder:
    def __init__(self, max_in_flight: int, max_loop_lag_ms: int) -> None:
        self.max_in_flight = max_in_flight
        self._max_lag_s = max_loop_lag_ms / 1000
        self.in_flight = 0
        self.loop_lag_s = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._max_lag_s > 0:
            self._task = asyncio.get_running_loop().create_task(self._measure_lag(), name="loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def overloaded(self) -> str | None:
        """None when a new request may be taken on, else the reason it may not."""
        if self.in_flight >= self.max_in_flight:
            return "in_flight"
        if self._max_lag_s > 0 and self.loop_lag_s > self._max_lag_s:
            return "loop_lag"
        return None

    async def _measure_lag(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(LAG_SAMPLE_S)
            late = max(0.0, time.monotonic() - before - LAG_SAMPLE_S)
            self.loop_lag_s += LAG_SMOOTHING * (late - self.loop_lag_s)
