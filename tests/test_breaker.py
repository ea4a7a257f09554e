"""The circuit breaker, the quotas and the load shedder on a clock the test moves by hand."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest

from switch.breaker import BreakerSettings, CircuitBreaker, CircuitState
from switch.ratelimit import Quota, TokenBucket
from switch.shedding import LoadShedder


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


SETTINGS = BreakerSettings(
    min_calls=10, window_calls=20, window_s=10, open_ms=5000, probes=3, slow_call_ms=1000, consecutive_failures=3
)
RATE_RULE_ALONE = msgspec.structs.replace(SETTINGS, consecutive_failures=1000)


def breaker(settings: BreakerSettings = SETTINGS) -> tuple[CircuitBreaker, Clock, list[CircuitState]]:
    clock, changes = Clock(), []
    return CircuitBreaker(settings, clock, on_change=changes.append), clock, changes


def test_opens_at_the_failure_rate_once_the_window_has_enough_calls():
    b, _, changes = breaker(RATE_RULE_ALONE)
    for _ in range(4):
        b.record(True, 0.1)  # 4 failures of 4: too few calls to judge
    assert b.state is CircuitState.CLOSED
    for _ in range(5):
        b.record(False, 0.1)
    assert b.state is CircuitState.CLOSED  # 4 of 9
    b.record(True, 0.1)  # 5 of 10: 50 %
    assert b.state is CircuitState.OPEN
    assert not b.allows() and not b.acquire()
    assert changes == [CircuitState.OPEN]


def test_stays_closed_below_the_rate():
    b, _, _ = breaker()
    for i in range(100):
        b.record(i % 3 == 0, 0.1)  # a third fail
    assert b.state is CircuitState.CLOSED


def test_slow_calls_and_overdue_calls_open_it():
    b, _, _ = breaker()
    for _ in range(10):
        b.record(False, 1.5)
    assert b.state is CircuitState.OPEN
    b2, _, _ = breaker(RATE_RULE_ALONE)
    for call in range(10):
        b2.record_overdue(call)
    assert b2.state is CircuitState.OPEN


def test_old_outcomes_leave_the_window():
    b, clock, _ = breaker(RATE_RULE_ALONE)
    for _ in range(9):
        b.record(True, 0.1)
    clock.now += 11  # older than window_s
    b.record(True, 0.1)
    assert b.snapshot()["calls_in_window"] == 1
    assert b.state is CircuitState.CLOSED


def test_only_the_last_window_calls_count():
    b, _, _ = breaker()
    for _ in range(15):
        b.record(False, 0.1)
    for _ in range(9):
        b.record(True, 0.1)
    # 9 of the last 20, in a row: with this many calls the rate judges, not a streak (a flaky
    # channel has one now and then)
    assert b.state is CircuitState.CLOSED
    b.record(True, 0.1)  # 10 of the last 20, though 10 of 25 overall
    assert b.state is CircuitState.OPEN


def test_a_quiet_channel_opens_on_a_few_failures_in_a_row():
    b, clock, changes = breaker()
    b.record(True, 1.5)
    clock.now += 120  # a quiet till: minutes between customers do not break the streak
    b.record(True, 1.5)
    assert b.state is CircuitState.CLOSED and b.snapshot()["failing_in_a_row"] == 2
    b.record(True, 1.5)
    assert b.state is CircuitState.OPEN and not b.acquire()
    assert changes == [CircuitState.OPEN]


def test_a_success_starts_the_streak_again():
    b, _, _ = breaker()
    for failed in (True, True, False, True, True):
        b.record(failed, 0.1)
    assert b.state is CircuitState.CLOSED
    b.record(False, 2.0)  # a slow answer is still an answer
    b.record(True, 0.1)
    b.record(True, 0.1)
    assert b.state is CircuitState.CLOSED
    b.record(True, 0.1)
    assert b.state is CircuitState.OPEN


def test_calls_outstanding_past_the_slow_threshold_open_it_before_they_time_out():
    b, _, _ = breaker()
    b.record_overdue(1)
    b.record_overdue(2)
    assert b.state is CircuitState.CLOSED
    b.record_overdue(3)  # three hanging at once: no need to wait for the first timeout
    assert b.state is CircuitState.OPEN

    b2, _, _ = breaker()
    b2.record(True, 1.5)
    b2.record_overdue(1)
    assert b2.state is CircuitState.CLOSED
    b2.record_overdue(2)  # one failed, two failing now
    assert b2.state is CircuitState.OPEN


def test_an_overdue_call_counts_once_and_its_answer_settles_it():
    b, _, _ = breaker()
    b.record_overdue(1)
    b.record_overdue(2)
    b.record(False, 1.2, call=1)  # answered late after all: the streak starts again from call 2
    assert b.snapshot()["failing_in_a_row"] == 1
    b.record_overdue(3)
    assert b.state is CircuitState.CLOSED
    b.record(True, 10.0, call=2)  # timed out: it failed all along, counted once
    b.record(True, 10.0, call=3)
    assert b.snapshot()["calls_in_window"] == 3  # each overdue call is one slow outcome, no more
    assert b.state is CircuitState.CLOSED and b.snapshot()["failing_in_a_row"] == 2
    b.release(4)  # refused inside the switch: says nothing of the channel
    b.record(True, 1.5)
    assert b.state is CircuitState.OPEN


def test_the_streak_starts_again_once_the_circuit_is_closed():
    b, clock, _ = breaker()
    b.record(True, 1.5)
    b.record_overdue(1)
    b.reset()  # close-circuit: the operator knows the channel is back
    b.record(True, 10.0, call=1)  # ended after the reset: neither in the new streak nor in the window
    b.record(True, 1.5)
    b.record(True, 1.5)
    assert b.state is CircuitState.CLOSED and b.snapshot()["calls_in_window"] == 2
    b.record(True, 1.5)
    assert b.state is CircuitState.OPEN
    clock.now += 5  # half-open: the probes pass and close it, with a fresh streak
    for _ in range(3):
        assert b.acquire()
        b.record(False, 0.1)
    assert b.state is CircuitState.CLOSED and b.snapshot()["failing_in_a_row"] == 0
    b.record(True, 1.5)
    b.record(True, 1.5)
    assert b.state is CircuitState.CLOSED


def open_breaker() -> tuple[CircuitBreaker, Clock, list[CircuitState]]:
    b, clock, changes = breaker()
    for _ in range(10):
        b.record(True, 0.1)
    assert b.state is CircuitState.OPEN
    return b, clock, changes


def test_half_opens_after_the_open_time_and_lets_only_the_probes_through():
    b, clock, _ = open_breaker()
    clock.now += 4.9
    assert b.state is CircuitState.OPEN
    clock.now += 0.2
    assert b.state is CircuitState.HALF_OPEN
    assert [b.acquire() for _ in range(4)] == [True, True, True, False]


def half_open_with(started: int, passed: int) -> CircuitBreaker:
    """A breaker half-open, ``started`` probes let through and ``passed`` of them passed."""
    b, clock, _ = open_breaker()
    clock.now += 5
    assert all(b.acquire() for _ in range(started))
    for _ in range(passed):
        b.record(False, 0.1)
    return b


def test_fewer_probes_set_while_half_open_close_it_once_enough_have_passed():
    fewer = msgspec.structs.replace(SETTINGS, probes=2)  # a reload
    b = half_open_with(3, 2)  # two of three passed, one out
    b.configure(fewer)
    assert b.state is CircuitState.CLOSED and b.allows()
    b = half_open_with(2, 1)  # one passed, one out: its outcome decides
    b.configure(fewer)
    assert b.state is CircuitState.HALF_OPEN
    b.record(False, 0.1)
    assert b.state is CircuitState.CLOSED


def test_probes_that_pass_close_it_and_one_failure_reopens_it():
    b, clock, changes = open_breaker()
    clock.now += 5
    for _ in range(3):
        assert b.acquire()
    b.record(False, 0.1)
    b.record(False, 0.1)
    assert b.state is CircuitState.HALF_OPEN
    b.record(False, 0.1)
    assert b.state is CircuitState.CLOSED
    assert changes == [CircuitState.OPEN, CircuitState.HALF_OPEN, CircuitState.CLOSED]

    b2, clock2, _ = open_breaker()
    clock2.now += 5
    assert b2.acquire()
    b2.record(False, 2.0)  # a slow probe counts as a failure
    assert b2.state is CircuitState.OPEN


def test_a_probe_refused_inside_the_switch_gives_its_slot_back():
    b, clock, _ = open_breaker()
    clock.now += 5
    for _ in range(3):
        assert b.acquire()
    assert not b.acquire()
    b.release()
    assert b.acquire()


def test_an_operator_hold_keeps_it_open_until_reset():
    b, clock, _ = breaker()
    b.force_open()
    clock.now += 3600
    assert b.state is CircuitState.OPEN
    b.reset()
    assert b.state is CircuitState.CLOSED and b.acquire()


def test_token_bucket_allows_the_burst_then_the_rate():
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=5, clock=clock)
    assert [bucket.try_take() for _ in range(6)] == [True] * 5 + [False]
    clock.now += 0.35  # 3.5 tokens
    assert [bucket.try_take() for _ in range(4)] == [True] * 3 + [False]
    clock.now += 100  # never more than the burst
    assert sum(bucket.try_take() for _ in range(10)) == 5


def test_a_zero_quota_is_no_limit():
    quota = Quota(0)
    assert all(quota.try_take() for _ in range(10_000))


def test_the_shedder_refuses_past_its_in_flight_limit_and_when_the_loop_lags():
    async def scenario():
        shedder = LoadShedder(max_in_flight=2, max_loop_lag_ms=100)
        shedder.start()
        assert shedder.overloaded() is None
        shedder.in_flight = 2
        assert shedder.overloaded() == "in_flight"
        shedder.in_flight = 0
        for _ in range(6):  # block the loop: it runs its callbacks late
            await asyncio.sleep(0.06)
            time.sleep(0.3)
        assert shedder.overloaded() == "loop_lag"
        await asyncio.sleep(1.5)  # and recovers by itself once the loop keeps up
        assert shedder.overloaded() is None
        await shedder.stop()

    asyncio.run(scenario())


@pytest.mark.parametrize("settings", [BreakerSettings(), SETTINGS])
def test_a_healthy_channel_never_opens(settings):
    b, clock, changes = breaker(settings)
    for _ in range(1000):
        clock.now += 0.01
        b.record(False, 0.05)
    assert changes == []
