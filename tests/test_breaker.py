"""The circuit breaker, the quotas and the load shedder on a clock the test moves by hand."""

from __future__ import annotations

import asyncio
import time

import pytest

from actors.settings import BreakerSettings
from switch.breaker import CircuitBreaker, CircuitState
from switch.ratelimit import Quota, TokenBucket
from switch.shedding import LoadShedder


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


SETTINGS = BreakerSettings(min_calls=10, window_calls=20, window_s=10, open_ms=5000, probes=3, slow_call_ms=1000)


def breaker(settings: BreakerSettings = SETTINGS) -> tuple[CircuitBreaker, Clock, list[CircuitState]]:
    clock, changes = Clock(), []
    return CircuitBreaker(settings, clock, on_change=changes.append), clock, changes


def test_opens_at_the_failure_rate_once_the_window_has_enough_calls():
    b, _, changes = breaker()
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
    b2, _, _ = breaker()
    for _ in range(10):
        b2.record_overdue()
    assert b2.state is CircuitState.OPEN


def test_old_outcomes_leave_the_window():
    b, clock, _ = breaker()
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
    assert b.state is CircuitState.CLOSED  # 9 of the last 20
    b.record(True, 0.1)  # 10 of the last 20, though 10 of 25 overall
    assert b.state is CircuitState.OPEN


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
