"""A circuit breaker for one channel shard, as the front end sees it.

CLOSED: calls go through; each outcome goes into a sliding window (the last ``window_calls``
outcomes, none older than ``window_s``). Once the window holds ``min_calls`` outcomes and the
failure rate or the slow-call rate reaches its threshold, the circuit OPENs: calls are refused
at once (the terminal gets ``91``) for ``open_ms``. Then HALF_OPEN: ``probes`` calls go through;
all of them fine closes the circuit, any failure opens it again.

A call still outstanding past ``slow_call_ms`` counts as slow straight away (``record_overdue``),
so a hung channel opens the circuit after about ``slow_call_ms``, not after its full timeout.

A quiet channel (a small bank at night) never puts ``min_calls`` outcomes in the window, so the rate
rule cannot judge it; while it cannot, ``consecutive_failures`` failing calls in a row open the
circuit: failed calls since the last success, plus the calls outstanding past ``slow_call_ms`` now
(failing while they are outstanding; their outcome, when it comes, extends or ends the streak).
The streak has no time limit: at a quiet till the customers may be minutes apart.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from enum import IntEnum
from typing import Annotated

from msgspec import Meta, Struct

Positive = Annotated[int, Meta(ge=1)]


class BreakerSettings(Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """A channel shard's circuit breaker (``switch.breaker``). The defaults follow Hystrix and
    resilience4j (50 % failures over a window of recent calls, at least 20 of them) with a short
    open state: a payment channel that is back should get traffic again within seconds."""

    failure_rate: Annotated[float, Meta(gt=0, le=1)] = 0.5  # failed calls (no answer, refused, errors)
    slow_rate: Annotated[float, Meta(gt=0, le=1)] = 0.5  # calls at or over slow_call_ms
    slow_call_ms: Positive = 3_000
    window_calls: Annotated[int, Meta(ge=2)] = 100
    window_s: Annotated[float, Meta(gt=0)] = 10.0
    min_calls: Positive = 20
    open_ms: Annotated[int, Meta(ge=100)] = 5_000  # then half-open
    probes: Positive = 5  # calls let through half-open; all fine closes the circuit
    # While the window holds fewer than min_calls (a quiet channel, a small bank at night), this many
    # calls failing in a row open the circuit (calls outstanding past slow_call_ms count as failing):
    # else every customer waits out a hung channel's timeout. 3, not 1: one or two failures may be
    # the customer's or the network's; three with no success between are the channel's.
    consecutive_failures: Positive = 3


class CircuitState(IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    def __init__(
        self,
        settings: BreakerSettings,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[CircuitState], None] | None = None,
    ) -> None:
        self.settings = settings  # replaced live by ``configure``
        self._clock = clock
        self._on_change = on_change
        self._state = CircuitState.CLOSED
        self._window: deque[tuple[float, bool, bool]] = deque()  # (when, failed, slow)
        self._failed = self._slow = 0
        self._consecutive = 0  # failed calls since the last success, in this closed spell
        self._overdue: set[int] = set()  # calls counted slow already: their outcome is not counted again
        self._hanging: set[int] = set()  # those of them still outstanding in this closed spell's streak
        self._opened_at = 0.0
        self._probes_started = self._probes_passed = 0
        self.forced_open = False  # an operator's hold (e.g. the channel's actors are gone for good)

    @property
    def state(self) -> CircuitState:
        if (
            self._state is CircuitState.OPEN
            and not self.forced_open
            and self._clock() - self._opened_at >= self.settings.open_ms / 1000
        ):
            self._move(CircuitState.HALF_OPEN)
        return self._state

    def allows(self) -> bool:
        """Whether a call would be let through now (without taking a probe slot)."""
        state = self.state
        if state is CircuitState.CLOSED:
            return True
        return state is CircuitState.HALF_OPEN and self._probes_started < self.settings.probes

    def configure(self, settings: BreakerSettings) -> None:
        """New settings (a reload: ``switch.live.LIMITS``), the window and state kept: the next
        outcomes are judged by them. Half-open, the probes passed may already be enough now."""
        self.settings = settings
        if self._state is CircuitState.HALF_OPEN and self._probes_passed >= settings.probes:
            self._close()

    def acquire(self) -> bool:
        """Let one call through, taking a probe slot when half-open."""
        if not self.allows():
            return False
        if self._state is CircuitState.HALF_OPEN:
            self._probes_started += 1
        return True

    def record(self, failed: bool, seconds: float, call: int | None = None) -> None:
        """The outcome of a call this breaker let through (``call``: its key for ``record_overdue``)."""
        if call in self._overdue:
            self._overdue.discard(call)
            if call in self._hanging:  # it failed all along, or its late answer ends the streak
                self._hanging.discard(call)
                self._consecutive = self._consecutive + 1 if failed else 0
            return
        slow = seconds * 1000 >= self.settings.slow_call_ms
        state = self.state
        if state is CircuitState.HALF_OPEN:
            if failed or slow:
                self._open()
                return
            self._probes_passed += 1
            if self._probes_passed >= self.settings.probes:
                self._close()
            return
        if state is CircuitState.CLOSED:
            self._consecutive = self._consecutive + 1 if failed else 0
            self._add(failed, slow)

    def release(self, call: int | None = None) -> None:
        """A call let through that never reached the channel (refused inside the switch)."""
        if call in self._overdue:  # it tells nothing of the channel: out of the streak too
            self._overdue.discard(call)
            self._hanging.discard(call)
            return
        if self._state is CircuitState.HALF_OPEN and self._probes_started > self._probes_passed:
            self._probes_started -= 1

    def record_overdue(self, call: int) -> None:
        """The call ``call`` let through is still outstanding past the slow-call threshold: slow,
        and failing until its outcome comes (``record`` with the same key)."""
        self._overdue.add(call)
        state = self.state
        if state is CircuitState.HALF_OPEN:
            self._open()  # a probe this slow has failed
        elif state is CircuitState.CLOSED:
            self._hanging.add(call)
            self._add(False, True)

    def force_open(self) -> None:
        self.forced_open = True
        self._open()

    def reset(self) -> None:
        """Close the circuit now and forget the window (an operator's decision)."""
        self.forced_open = False
        self._close()

    def snapshot(self) -> dict[str, object]:
        calls = len(self._window)
        return {
            "state": self.state.name.lower(),
            "calls_in_window": calls,
            "failure_rate": round(self._failed / calls, 3) if calls else 0.0,
            "slow_rate": round(self._slow / calls, 3) if calls else 0.0,
            "failing_in_a_row": self._failing_in_a_row,
            "forced_open": self.forced_open,
        }

    @property
    def _failing_in_a_row(self) -> int:
        return self._consecutive + len(self._hanging)

    def _add(self, failed: bool, slow: bool) -> None:
        now = self._clock()
        self._window.append((now, failed, slow))
        self._failed += failed
        self._slow += slow
        oldest = now - self.settings.window_s
        while self._window and (len(self._window) > self.settings.window_calls or self._window[0][0] < oldest):
            _, old_failed, old_slow = self._window.popleft()
            self._failed -= old_failed
            self._slow -= old_slow
        calls = len(self._window)
        if calls >= self.settings.min_calls:
            if self._failed >= self.settings.failure_rate * calls or self._slow >= self.settings.slow_rate * calls:
                self._open()
        # Too few calls to judge a rate. At volume a streak says little (a channel failing 5 % of
        # calls has 3 in a row once in 8000 calls); here it is all there is.
        elif self._failing_in_a_row >= self.settings.consecutive_failures:
            self._open()

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._move(CircuitState.OPEN)

    def _close(self) -> None:
        self._move(CircuitState.CLOSED)

    def _move(self, state: CircuitState) -> None:
        self._window.clear()
        self._failed = self._slow = self._consecutive = 0
        self._hanging.clear()
        self._probes_started = self._probes_passed = 0
        changed = state is not self._state
        self._state = state
        if changed and self._on_change is not None:
            self._on_change(state)
