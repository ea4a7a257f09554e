"""Load shedding for the switch as a whole: when it is over capacity, new financial requests are
answered ``91`` at once, before any journal or channel work, so that memory stays flat and the
requests already under way finish in time. It recovers by itself as the load falls.

The main signal is how long financial requests wait before their channel call (``QueueDelay``,
CoDel's detection): a queue that stays long for an interval is more load than the switch can
serve, wherever in the front end, the journal or the event loop it builds up. Shedding on it
keeps the accepted requests fast instead of making every customer wait toward the deadline.

Two backstops: requests under way in this front end (all connections together), and how late the
event loop runs its callbacks (a loop that lags is a CPU that cannot keep up; every request
waiting in it gets later still).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

LAG_SAMPLE_S = 0.05
LAG_SMOOTHING = 0.3  # weight of the newest sample: a single hiccup does not shed, a trend does
class QueueDelay:
    """CoDel's detection, used for admission: shedding starts once every wait recorded for
    ``interval_s`` has been above ``target_s`` (a standing queue, not a burst), and stops at the
    first wait below target. Shedding also stops when no wait at all was recorded for an interval
    (nothing was let through to tell whether the queue is still there)."""

    def __init__(self, target_s: float, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.target_s = target_s
        self.interval_s = interval_s
        self._clock = clock
        self._above_since: float | None = None  # since when every wait was above target
        self._shedding = False
        self._last_recorded = -float("inf")

    def record(self, waited_s: float) -> None:
        """One request's wait from its arrival to its channel call."""
        now = self._clock()
        self._last_recorded = now
        if waited_s < self.target_s:
            self._above_since, self._shedding = None, False
            return
        if self._above_since is None:
            self._above_since = now
        # Again after shedding too, only once every wait of an interval was above target, as CoDel
        # enters its dropping state only then (its memory of recent drops sets how fast it drops,
        # not whether). Re-entering at the first long wait, as this once did, sheds on a busy
        # box's tail waits, which pass the target while there is no standing queue.
        if now - self._above_since >= self.interval_s:
            self._shedding = True

    def shedding(self) -> bool:
        """Whether newcomers are to be answered ``91`` now."""
        if self._shedding and self._clock() - self._last_recorded >= self.interval_s:
            self._shedding, self._above_since = False, None
        return self._shedding


class LoadShedder:
    def __init__(
        self, max_in_flight: int, max_loop_lag_ms: int, queue_delay_ms: int = 0, queue_interval_ms: int = 100
    ) -> None:
        self.max_in_flight = max_in_flight
        self._max_lag_s = max_loop_lag_ms / 1000
        self.queue_delay = QueueDelay(queue_delay_ms / 1000, queue_interval_ms / 1000) if queue_delay_ms else None
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

    def calling_channel(self, arrived: float) -> None:
        """A request whose bytes were read at ``arrived`` (``time.monotonic()``: a step of the wall
        clock neither sheds nor hides a queue) is about to be sent to its channel: its wait so far
        is the queue's length."""
        if self.queue_delay is not None:
            self.queue_delay.record(time.monotonic() - arrived)

    def overloaded(self) -> str | None:
        """None when a new request may be taken on, else the reason it may not."""
        if self.queue_delay is not None and self.queue_delay.shedding():
            return "queue_delay"
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
