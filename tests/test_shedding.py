"""Admission by queueing delay (``switch.shedding``): the limit on requests waiting for their channel
call, on an injected clock; the intake that starts frames read while shedding after the work under
way (``switch.intake``); and a switch of its own, configured with a target any real purchase
overshoots, driven past it: new purchases are answered 91 without a journal row while reversals
are still taken."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from bench.traffic import reversal
from switch.frontend import ConnectionLimits
from switch.intake import Intake
from switch.shedding import GROWTH, MIN_LIMIT, START_LIMIT, LoadShedder, WaitingLimit, peer_of
from tests.conftest import run, switch_with
from tests.support import STANS, TERMINAL, connected, journal_row, new_purchase

TARGET_S, INTERVAL_S = 0.020, 0.100
PEER = "127.0.0.1"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def waiting_limit() -> tuple[WaitingLimit, Clock]:
    clock = Clock()
    return WaitingLimit(TARGET_S, INTERVAL_S, clock=clock), clock


def interval(limit: WaitingLimit, clock: Clock, waiting: int, waits: list[float], peer: str = "") -> None:
    """One interval: ``waiting`` requests of ``peer`` enter, the ``waits`` leave at their channel
    calls (the others stay), then the interval ends."""
    for _ in range(waiting):
        limit.enter(peer)
    for waited in waits:
        limit.leave(waited, peer)
    clock.now += INTERVAL_S
    limit.full()  # the interval's end is read


def test_a_standing_queue_cuts_the_limit_to_those_that_would_wait_the_target():
    limit, clock = waiting_limit()
    interval(limit, clock, 900, [TARGET_S * 1.5] * 450)  # every wait above target: most 900, mean 1.5x
    assert limit.limit == int(900 / 1.5)
    assert [limit.full() for _ in range(2)] == [False, False]  # 450 wait: room for 150 more
    for _ in range(150):
        limit.enter()
    assert limit.full()


def test_a_cut_keeps_half_of_those_that_waited_and_never_goes_below_the_floor():
    limit, clock = waiting_limit()
    interval(limit, clock, 900, [TARGET_S * 10] * 900)
    assert limit.limit == 450  # not 90
    for _ in range(5):  # as many as the limit lets in each time
        interval(limit, clock, limit.limit, [TARGET_S * 10] * limit.limit)
    assert limit.limit == MIN_LIMIT


def test_a_standing_queue_of_a_few_against_the_limit_is_a_stall_not_overload():
    """A cold start or a checkpoint: every wait above target with far fewer waiting than the
    limit lets. Fewer requests would not have waited less: the limit stays."""
    limit, clock = waiting_limit()
    interval(limit, clock, 700, [TARGET_S * 10] * 700)  # under 3/4 of 1,024
    assert limit.limit == START_LIMIT
    interval(limit, clock, 800, [TARGET_S * 10] * 800)  # over: the limit is what lets it stand
    assert limit.limit == 400  # half the 800 that waited (a cut keeps half of them at least)


def test_a_limit_starts_and_grows_no_higher_than_those_that_may_be_under_way():
    """With ``max_in_flight`` 200, 3/4 of a limit of 1,024 could never wait: the limit is 200."""
    clock = Clock()
    limit = WaitingLimit(TARGET_S, INTERVAL_S, ceiling=200, clock=clock)
    interval(limit, clock, 200, [TARGET_S / 2] * 200)  # reached, no standing queue: would grow
    assert limit.limit == 200
    interval(limit, clock, 160, [TARGET_S * 10] * 160)
    assert limit.limit == 80  # cut: half the 160


def test_one_wait_below_the_target_is_no_standing_queue():
    """A burst (CoDel): waits above target, but the queue emptied once in the interval."""
    limit, clock = waiting_limit()
    interval(limit, clock, 900, [TARGET_S * 10] * 99 + [TARGET_S / 2])
    assert limit.limit == START_LIMIT


def test_a_limit_reached_without_a_standing_queue_grows_and_one_not_reached_stays():
    limit, clock = waiting_limit()
    interval(limit, clock, START_LIMIT - 1, [TARGET_S / 2] * (START_LIMIT - 1))
    assert limit.limit == START_LIMIT
    interval(limit, clock, START_LIMIT, [TARGET_S / 2] * START_LIMIT)
    assert limit.limit == int(START_LIMIT * GROWTH)


def test_requests_that_end_before_any_channel_call_say_nothing_of_the_queue():
    limit, clock = waiting_limit()
    for _ in range(START_LIMIT + 1):
        limit.enter()
    assert limit.full()  # past the limit
    for _ in range(START_LIMIT + 1):
        limit.leave(None)  # declined by risk, duplicates, refused by a channel's limits
    clock.now += INTERVAL_S
    assert not limit.full() and limit.limit == START_LIMIT and limit.waiting == 0


def test_the_shedder_names_the_queue_delay_and_is_off_at_zero():
    on = LoadShedder(max_in_flight=10_000, max_loop_lag_ms=0, queue_delay_ms=20)
    off = LoadShedder(max_in_flight=10_000, max_loop_lag_ms=0, queue_delay_ms=0)
    assert off.waiting is None
    for _ in range(START_LIMIT):
        for shedder in (on, off):
            shedder.admit(PEER)
    assert (on.overloaded(PEER), off.overloaded(PEER)) == ("queue_delay", None)
    for shedder in (on, off):
        shedder.finish(True, PEER)  # ended before its channel call (declined by risk, say)
    assert (on.overloaded(PEER), off.overloaded(PEER)) == (None, None)
    for shedder in (on, off):
        shedder.admit(PEER)
    assert on.overloaded(PEER) == "queue_delay"
    for shedder in (on, off):
        shedder.calling_channel(time.monotonic() - 1.0, PEER)  # one waited a second, and is at its channel
    assert (on.overloaded(PEER), off.overloaded(PEER)) == (None, None)
    for shedder in (on, off):
        shedder.finish(False, PEER)  # (its place was given back at the channel call)
    assert (on.overloaded(PEER), on.waiting.waiting, on.in_flight) == (None, START_LIMIT - 1, START_LIMIT - 1)


def test_past_the_limit_a_peer_under_its_share_is_let_in_and_one_at_its_share_is_not():
    """One peer's flood fills the limit: it is shed, and another peer is let in up to its share,
    the limit over the peers waiting (itself included), and no one past that share in all."""
    limit, _ = waiting_limit()
    for _ in range(START_LIMIT):
        limit.enter("flood")
    assert limit.full("flood") and not limit.full("quiet") and not limit.full("third")
    for _ in range(START_LIMIT // 2 - 1):
        limit.enter("quiet")
    assert not limit.full("quiet")  # one short of its half
    limit.enter("quiet")
    assert limit.full("quiet") and limit.full("flood")
    assert limit.full("third")  # a share past the limit waits already: the quiet peer's
    assert limit.peers == 2
    for _ in range(START_LIMIT // 2):
        limit.leave(None, "quiet")
    assert limit.peers == 1 and limit.full("flood") and not limit.full("quiet")  # none kept at 0


def test_past_the_limit_no_more_than_one_share_more_waits_however_many_peers_come():
    """Peers under their share are let in past the limit up to one share in all (a limit and a
    half at most): a flood from many addresses, each under its share, cannot make the limit's wait
    many limits long."""
    limit, _ = waiting_limit()
    for _ in range(START_LIMIT):
        limit.enter("flood")
    let_in = 0
    for n in range(100):  # address after address, each filled to its share
        while not limit.full(f"address {n}"):
            limit.enter(f"address {n}")
            let_in += 1
    assert let_in == START_LIMIT // 2 and limit.waiting == START_LIMIT + START_LIMIT // 2
    assert limit.full("quiet") and limit.full("flood")


def test_after_a_cut_a_peer_with_none_waiting_is_let_in_while_the_backlog_drains():
    """A cut leaves more waiting than the new limit, let in under the old one: the flood's peer is
    shed until they leave, and another peer is let in meanwhile, up to its share and no further."""
    limit, clock = waiting_limit()
    interval(limit, clock, 900, [TARGET_S * 10] * 10, "flood")  # 890 still wait; 900 at most: cut to 450
    assert (limit.limit, limit.waiting) == (450, 890)
    assert limit.full("flood") and not limit.full("quiet")
    for _ in range(450 // 3):
        limit.enter("quiet")
    assert limit.full("third")  # a third peer's share, 450 / 3, was let in past the limit
    let_in = 450 // 3
    while not limit.full("quiet"):
        limit.enter("quiet")
        let_in += 1
    assert let_in == 450 // 2
    assert limit.full("third")  # a share was let in past the limit
    limit.leave(None, "quiet")
    assert not limit.full("quiet") and limit.full("flood")


def test_those_let_in_past_the_limit_are_cut_with_it():
    """A standing queue cuts the limit as if those let in past it had not come: it is cut to what
    the limit's own number would wait, so what the shares add is cut too."""
    limit, clock = waiting_limit()
    for _ in range(START_LIMIT):
        limit.enter("flood")
    for _ in range(START_LIMIT // 2):
        limit.enter("quiet")
    interval(limit, clock, 0, [TARGET_S * 1.25] * 10, "flood")  # 1,536 waited at most, 1.25 times the target
    assert limit.limit == int(START_LIMIT / 1.25)


def test_peers_of_one_request_each_are_shed_once_they_fill_the_limit():
    """A terminal on a peer of its own has a share under one once such peers fill the limit: the
    share never lets a crowd of them past it."""
    limit, _ = waiting_limit()
    for n in range(START_LIMIT):
        assert not limit.full(f"terminal {n}")
        limit.enter(f"terminal {n}")
    assert limit.full("one more terminal") and limit.full("terminal 0")


def test_a_peer_is_an_address_and_an_ipv6_one_its_64():
    assert peer_of("10.1.2.3") == "10.1.2.3"
    assert peer_of("2001:db8:1:2::17") == peer_of("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert peer_of("2001:db8:1:3::17") != peer_of("2001:db8:1:2::17")
    assert peer_of("::ffff:10.1.2.3") == "10.1.2.3"  # an IPv4 client on a dual-stack socket
    assert peer_of("64:ff9b::10.1.2.3") == "10.1.2.3" != peer_of("64:ff9b::10.1.2.4")  # through NAT64


def test_the_cap_on_connections_per_peer_counts_an_ipv6_64_as_one_peer():
    """Addresses of one /64 share the cap; another /64, an IPv4 address and the total cap are apart."""
    limits = ConnectionLimits(total=4, per_peer=2)
    assert limits.admit("2001:db8:1:2::17") is None and limits.admit("2001:db8:1:2:ffff::1") is None
    assert limits.admit("2001:db8:1:2::99") == "max_connections_per_peer"
    assert limits.admit("2001:db8:1:3::17") is None and limits.admit("10.1.2.3") is None
    limits.release("2001:db8:1:2::17")  # any address of the /64 frees its share
    assert limits.admit("2001:db8:1:2::99") is None
    assert limits.admit("10.1.2.4") == "max_connections"


def test_the_intake_starts_a_few_frames_a_turn_after_the_work_under_way():
    """Frames read while shedding are started ``per_turn`` a loop turn, and the callbacks of the
    transactions under way run in every turn between them, in order."""

    async def scenario() -> list[str]:
        order: list[str] = []
        loop = asyncio.get_running_loop()
        intake = Intake(per_turn=4)

        def under_way(step: int) -> None:  # a transaction under way: one step a turn
            order.append("work")
            if step < 5:
                loop.call_soon(under_way, step + 1)

        loop.call_soon(under_way, 0)
        for n in range(10):
            intake.later(lambda n=n: order.append(f"frame {n}"))
        for _ in range(8):
            await asyncio.sleep(0)
        assert len(intake) == 0
        return order

    order = run(scenario())
    turns = " ".join(order).split("work")
    assert [t.split() for t in turns if t.strip()] == [
        ["frame", "0", "frame", "1", "frame", "2", "frame", "3"],
        ["frame", "4", "frame", "5", "frame", "6", "frame", "7"],
        ["frame", "8", "frame", "9"],
    ]
    assert order.count("work") == 6


# -- a real switch -------------------------------------------------------------------------------

# The flood: purchases kept under way from one address, enough that NEAR the starting limit wait for
# their channel call even while WeChat's actor holds its most (256) at the channel, as a slow machine
# does: a standing queue then cuts the limit. Over three connections, each under its cap (512).
FLOOD_CONNECTIONS, SENDERS = 3, 420
QUIET_PEER = "127.0.0.2"  # another address on loopback: another peer of the switch's


@contextlib.asynccontextmanager
async def flooding(switch) -> AsyncIterator[Counter[str]]:
    """WeChat purchases from 127.0.0.1, ``SENDERS`` under way on each connection, each sent again as
    soon as it is answered, until the block ends; yields the count of their answers' codes."""
    async with contextlib.AsyncExitStack() as stack:
        connections = [await stack.enter_async_context(connected(switch)) for _ in range(FLOOD_CONNECTIONS)]
        stop = asyncio.Event()
        answers: Counter[str] = Counter()

        async def keep_busy(connection) -> None:
            while not stop.is_set():
                answers[(await connection.request(new_purchase("wechat")))["39"]] += 1

        senders = [asyncio.ensure_future(keep_busy(c)) for c in connections for _ in range(SENDERS)]
        try:
            yield answers
        finally:
            stop.set()
            await asyncio.gather(*senders)


async def admission_settled(switch, timeout: float = 30.0) -> None:
    """Until the admission's limit has been cut and no more than a limit and a half wait: most of
    the backlog let in under the old limit has gone (on a slow machine that takes seconds, and a
    purchase let in meanwhile waits behind it, past its deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        text = (await asyncio.to_thread(switch.get, "/metrics"))[1]
        limit, waiting = (re.search(rf"(?m)^paysw_admission_{name} (\S+)$", text) for name in ("limit", "waiting"))
        if limit and waiting and float(limit[1]) < START_LIMIT and float(waiting[1]) <= float(limit[1]) * 1.5:
            return
        assert time.monotonic() < deadline, f"the limit not cut and its backlog not gone after {timeout} s"
        await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
def impatient_switch(config_dir, database_url, simulators, tmp_path_factory):
    """A switch whose target, 1 ms from arrival to channel call, no purchase meets (the write-ahead
    alone is a commit), over an interval long enough for the test's requests to see it shed."""
    edits = [
        (r"(?m)^shed_queue_delay_ms = \d+$", "shed_queue_delay_ms = 1"),
        (r"(?m)^shed_queue_interval_ms = \d+$", "shed_queue_interval_ms = 300"),
        # The backstop on the event loop's lag sheds every peer alike; off, what is shed is the
        # admission's doing (two cores under the flood may lag past 300 ms).
        (r"(?m)^shed_loop_lag_ms = \d+$", "shed_loop_lag_ms = 0"),
    ]
    yield from switch_with(config_dir, database_url, tmp_path_factory.mktemp("shedding"), "shedding", edits)


def test_past_its_target_the_switch_sheds_newcomers_without_journal_work_but_takes_reversals(
    impatient_switch, database_url
):
    async def scenario():
        async with flooding(impatient_switch) as flood, connected(impatient_switch) as terminal:
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
        assert len(shed) == 3, f"no newcomer was shed; the flood's answers: {dict(flood)}"
        for answer in shed:  # answered before any journal work
            assert await journal_row(database_url, answer["37"]) is None
        # Never shed: a reversal of an original the switch never saw is taken and answered 25.
        assert {r["39"] for r in reversals} == {"25"}
        url = f"http://127.0.0.1:{impatient_switch.admin}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            assert re.search(r'(?m)^paysw_shed_total\{reason="queue_delay"\} [1-9]', response.read().decode())

    run(scenario())


def test_one_peers_flood_is_shed_while_another_peers_purchases_go_through(impatient_switch, database_url):
    """The admission's limit is shared among peers (``switch.shedding``): while one address's
    flood keeps it full and is shed, a terminal on another address is let in, under its share."""

    async def scenario() -> tuple[Counter[str], Counter[str]]:
        async with flooding(impatient_switch) as flood, connected(impatient_switch, QUIET_PEER) as quiet:
            await admission_settled(impatient_switch)
            flood.clear()
            served: Counter[str] = Counter()
            for _ in range(20):
                answer = await quiet.request(new_purchase("alipay"))
                row = await journal_row(database_url, answer["37"]) if answer["39"] != "00" else None
                served[answer["39"] + (f" {row['channel_code']}" if row else "")] += 1
            return Counter(flood), served

    flood, served = run(scenario())
    assert flood["91"] > flood.total() / 4, f"the flood was hardly shed: {dict(flood)}"
    assert served == {"00": 20}, f"the other peer's purchases were shed too: {dict(served)}"
