"""Admission by queueing delay (``switch.shedding``): CoDel's detection on an injected clock, and a
switch of its own, configured with a target any real purchase overshoots, driven past it: new
purchases are answered 91 without a journal row while reversals are still taken."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request

import pytest

from bench.traffic import reversal
from switch.shedding import LoadShedder, QueueDelay
from tests.conftest import run, switch_with
from tests.support import STANS, TERMINAL, connected, journal_row, new_purchase

TARGET_S, INTERVAL_S = 0.020, 0.100


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def queue_delay() -> tuple[QueueDelay, Clock]:
    clock = Clock()
    return QueueDelay(TARGET_S, INTERVAL_S, clock), clock


def wait_above_target_for(delay: QueueDelay, clock: Clock, seconds: float, step: float = 0.01) -> None:
    end = clock.now + seconds
    while clock.now < end:
        delay.record(TARGET_S * 3)
        clock.now += step


def test_a_burst_shorter_than_the_interval_is_not_shed():
    delay, clock = queue_delay()
    wait_above_target_for(delay, clock, INTERVAL_S * 0.8)
    assert not delay.shedding()
    delay.record(TARGET_S / 2)  # the queue emptied: the clock starts again
    wait_above_target_for(delay, clock, INTERVAL_S * 0.8)
    assert not delay.shedding()


def test_a_standing_queue_sheds_until_one_request_waits_less_than_the_target():
    delay, clock = queue_delay()
    wait_above_target_for(delay, clock, INTERVAL_S * 1.1)
    assert delay.shedding()
    delay.record(TARGET_S * 10)  # still long
    assert delay.shedding()
    delay.record(TARGET_S / 2)
    assert not delay.shedding()


def test_after_shedding_a_whole_interval_of_long_waits_is_needed_again():
    """As CoDel's dropping state: one long wait after shedding stopped (a busy box's tail) sheds
    nothing; a standing queue again does."""
    delay, clock = queue_delay()
    wait_above_target_for(delay, clock, INTERVAL_S * 1.1)
    delay.record(0.0)
    assert not delay.shedding()
    clock.now += INTERVAL_S * 0.1
    delay.record(TARGET_S * 2)
    assert not delay.shedding()
    wait_above_target_for(delay, clock, INTERVAL_S * 1.1)
    assert delay.shedding()


def test_shedding_stops_when_nothing_reached_a_channel_for_an_interval():
    delay, clock = queue_delay()
    wait_above_target_for(delay, clock, INTERVAL_S * 1.1)
    clock.now += INTERVAL_S * 0.5  # (the last wait was recorded one step before)
    assert delay.shedding()
    clock.now += INTERVAL_S * 0.5
    assert not delay.shedding()


def test_the_shedder_names_the_queue_delay_and_is_off_at_zero():
    on = LoadShedder(max_in_flight=100, max_loop_lag_ms=0, queue_delay_ms=20)
    off = LoadShedder(max_in_flight=100, max_loop_lag_ms=0, queue_delay_ms=0)
    assert off.queue_delay is None
    clock = Clock()
    on.queue_delay = QueueDelay(TARGET_S, INTERVAL_S, clock)
    for _ in range(3):
        for shedder in (on, off):
            shedder.calling_channel(time.monotonic() - 1.0)  # arrived a second ago
        clock.now += INTERVAL_S * 0.6
    assert (on.overloaded(), off.overloaded()) == ("queue_delay", None)


# -- a real switch -------------------------------------------------------------------------------

SENDERS = 32  # purchases kept under way to build the queue


@pytest.fixture(scope="module")
def impatient_switch(config_dir, database_url, simulators, tmp_path_factory):
    """A switch whose target, 1 ms from arrival to channel call, no purchase meets (the write-ahead
    alone is a commit), over an interval long enough for the test's requests to see it shed."""
    edits = [
        (r"(?m)^shed_queue_delay_ms = \d+$", "shed_queue_delay_ms = 1"),
        (r"(?m)^shed_queue_interval_ms = \d+$", "shed_queue_interval_ms = 300"),
    ]
    yield from switch_with(config_dir, database_url, tmp_path_factory.mktemp("shedding"), "shedding", edits)


def test_past_its_target_the_switch_sheds_newcomers_without_journal_work_but_takes_reversals(
    impatient_switch, database_url
):
    async def scenario():
        async with connected(impatient_switch) as load, connected(impatient_switch) as terminal:
            stop = asyncio.Event()

            async def keep_busy() -> None:
                while not stop.is_set():
                    await load.request(new_purchase("wechat"))

            senders = [asyncio.ensure_future(keep_busy()) for _ in range(SENDERS)]
            await asyncio.sleep(1.0)
            shed, reversals = [], []
            deadline = time.monotonic() + 20
            while len(shed) < 3 and time.monotonic() < deadline:
                newcomer, never_sent = new_purchase("alipay"), new_purchase("alipay")
                answers = await asyncio.gather(
                    terminal.request(newcomer), terminal.request(reversal(never_sent, STANS.next(TERMINAL)))
                )
                reversals.append(answers[1])
                if answers[0]["39"] == "91":
                    shed.append(answers[0])
            stop.set()
            await asyncio.gather(*senders)
        assert len(shed) == 3, "no newcomer was shed"
        for answer in shed:  # answered before any journal work
            assert await journal_row(database_url, answer["37"]) is None
        # Never shed: a reversal of an original the switch never saw is taken and answered 25.
        assert {r["39"] for r in reversals} == {"25"}
        url = f"http://127.0.0.1:{impatient_switch.admin}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            assert re.search(r'(?m)^paysw_shed_total\{reason="queue_delay"\} [1-9]', response.read().decode())

    run(scenario())
