"""Load shedding for the switch as a whole: when it is over capacity, new financial requests are
answered ``91`` at once, before any journal or channel work, so that memory stays flat and the
requests already under way finish in time. It recovers by itself as the load falls.

The main signal is how long financial requests wait before their channel call (``WaitingLimit``,
CoDel's detection): a queue that stays long for an interval is more load than the switch can
serve, wherever in the front end, the journal or the event loop it builds up. It sets how many
may wait at once, which keeps the accepted requests fast instead of making every customer wait
toward the deadline.

The limit is shared among the peers whose requests wait (``peer_of``: a connection's source
address, an IPv6 one by its /64; or a merchant on the HTTP API): when it is reached, a peer with
fewer waiting than its share (the limit over the peers waiting, itself included) is still let in,
one share past the limit it is let in under at most, in all; the others are answered ``91``. So one acquirer's flood (a
concentrator that resends at once, say) is shed while another's purchases go on: peers are kept
apart as channels are. The shares are equal, whatever a peer carries: under a general overload a
concentrator of many terminals is shed more than a terminal on an address of its own, and behind a
proxy or load balancer that hides the source addresses every terminal is one peer. Terminals each
on an address of their own, one request each, have a share under one once they fill the limit,
and are shed as before. The backstops below know no shares: past them every peer is shed.

Two backstops: requests under way in this front end (all connections together), and how late the
event loop runs its callbacks (a loop that lags is a CPU that cannot keep up; every request
waiting in it gets later still).
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import time
from collections import Counter
from collections.abc import Callable

LAG_SAMPLE_S = 0.05
LAG_SMOOTHING = 0.3  # weight of the newest sample: a single hiccup does not shed, a trend does
# Admitted requests let wait at once however long they wait: fewer would starve the journal's
# group commit and the channels' batches of the very purchases that keep the box busy.
MIN_LIMIT = 32
# A cut keeps at least this share of those that waited at once, or of the limit if more waited (so,
# with NEAR, 3/8 of the limit): one slow interval does not empty the switch.
SHRINK_AT_MOST = 0.5
GROWTH = 1.25  # of the limit, for an interval that reached it without a standing queue
# A standing queue cuts the limit only while as many as this share of it wait: then the limit is
# what lets the queue stand. With fewer, the waits come from a stall (a cold start, a checkpoint)
# that fewer requests would not have shortened. Cutting on those, a fresh switch's first slow
# interval cut the limit from 1,024 to 97 under 64 outstanding, and it shed 131 purchases of a
# load (then 128 outstanding) it went on to serve without a queue.
NEAR = 0.75
# The limit before any queue was seen. A burst is let in whole up to it (on two cores, 1,024
# purchases are about 0.6 s of work, well within a terminal's wait), and partly shed past it; a load
# that keeps reaching it without a standing queue raises it.
START_LIMIT = 1024


class WaitingLimit:
    """Admission by queueing delay: how many admitted requests may wait for their channel call at
    once. A request waits from its arrival until its channel call, or until it ends without one.

    At the end of each ``interval_s``, the interval's shortest wait is its standing queue (CoDel's
    reading: a queue that never emptied). Above ``target_s``, with at least ``NEAR`` the limit
    waiting at once, the limit becomes the number that would wait the target at the rate they
    leave (Little's law: the most that waited at once, times the target over the mean wait), cut
    by half at most and never below ``MIN_LIMIT``. Without a standing queue, an interval that
    reached the limit raises it by ``GROWTH``.

    So under overload a steady number is let in, waiting about the target, and the excess is
    answered ``91`` at once. The on/off switch this replaced (shed every newcomer while the queue
    stood, take every one from the first short wait) let the whole backlog in at each opening:
    purchases taken on had a p99 of 2 s (``paysw bench overload``). Time at the channel is not
    counted, so a slow channel never makes the switch shed another's purchases (its own limits,
    ``frontend_in_flight``, bound it)."""

    def __init__(
        self,
        target_s: float,
        interval_s: float,
        ceiling: float = math.inf,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``ceiling``: no more can wait (those under way at most, ``max_in_flight``)."""
        self.target_s = target_s
        self.interval_s = interval_s
        self.ceiling = ceiling
        self.limit: int = min(START_LIMIT, ceiling)
        self.waiting = 0
        self._clock = clock
        self._ends_at = clock() + interval_s
        self._most = 0  # the most that waited at once this interval
        self._shortest = math.inf  # of the waits that ended at a channel call this interval
        self._waited_s, self._waits = 0.0, 0  # their sum and count
        self._by_peer: Counter[str] = Counter()  # those waiting, by peer (none kept at 0)
        # Of them, those let in past the limit (under their share), by peer and in all. A peer's
        # first to leave counts as its last let in: its requests are alike, and the count never
        # exceeds what it has waiting.
        self._past_by_peer: Counter[str] = Counter()
        self._past = 0

    @property
    def peers(self) -> int:
        """Peers with requests waiting: the limit's shares."""
        return len(self._by_peer)

    def full(self, peer: str = "") -> bool:
        """Whether a newcomer from ``peer`` is to be answered ``91`` now: the limit is reached, and
        ``peer`` has its share of it waiting (the limit over the peers waiting, ``peer`` included),
        or a share was let in past the limit and waits still. (So no more than a share waits past
        the limit it was let in under. After a cut, those let in under the old limit may be more
        than the new one until they leave; a peer with none waiting is still let in meanwhile, while
        less than a share was let in past the limit.)"""
        self._turn()
        if self.waiting < self.limit:
            return False
        by_peer = self._by_peer
        share = self.limit // (len(by_peer) + (peer not in by_peer))
        return by_peer[peer] + 1 > share or self._past >= share

    def enter(self, peer: str = "") -> None:
        if self.waiting >= self.limit:
            self._past += 1
            self._past_by_peer[peer] += 1
        self.waiting += 1
        self._by_peer[peer] += 1
        self._most = max(self._most, self.waiting)

    def leave(self, waited_s: float | None, peer: str = "") -> None:
        """One of ``peer``'s stops waiting: at its channel call after ``waited_s``, or ended
        without one (None: it says nothing of the queue)."""
        self.waiting -= 1
        left = self._by_peer[peer] - 1
        if left > 0:
            self._by_peer[peer] = left
        else:
            del self._by_peer[peer]
        past = self._past_by_peer[peer]
        if past:
            self._past -= 1
            if past > 1:
                self._past_by_peer[peer] = past - 1
            else:
                del self._past_by_peer[peer]
        if waited_s is not None:
            self._shortest = min(self._shortest, waited_s)
            self._waited_s += waited_s
            self._waits += 1
        self._turn()

    def _turn(self) -> None:
        now = self._clock()
        if now < self._ends_at:
            return
        standing = self._waits and self._shortest > self.target_s
        if standing and self._most >= self.limit * NEAR:
            mean_s = self._waited_s / self._waits
            # (those let in past the limit, under their share, count as the limit: it is cut as
            # if they had not come, so that what they add is cut too)
            fits = min(self._most, self.limit) * max(SHRINK_AT_MOST, self.target_s / mean_s)
            self.limit = max(MIN_LIMIT, math.floor(min(fits, self.limit)))
        elif self._waits and self._most >= self.limit:  # the queue empties at this limit: try more
            self.limit = min(self.ceiling, math.floor(self.limit * GROWTH))
        self._ends_at = now + self.interval_s
        self._most, self._shortest = self.waiting, math.inf
        self._waited_s, self._waits = 0.0, 0


NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052's prefix: an IPv4 host behind a translator


def peer_of(host: str) -> str:
    """Whose share of the admission (and of the connection caps) a connection from ``host`` takes:
    the address, an IPv6 one by its /64 (a network hands one site a /64, and taken apart its
    addresses would be a share each), but an IPv4 address carried in IPv6 (mapped on a dual-stack
    socket, or translated by NAT64) as that IPv4 address: behind a translator every IPv4 terminal
    would otherwise be one /64."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        if address in NAT64:
            return str(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return host


class LoadShedder:
    def __init__(
        self, max_in_flight: int, max_loop_lag_ms: int, queue_delay_ms: int = 0, queue_interval_ms: int = 100
    ) -> None:
        self.max_in_flight = max_in_flight
        self._max_lag_s = max_loop_lag_ms / 1000
        self.waiting = (
            WaitingLimit(queue_delay_ms / 1000, queue_interval_ms / 1000, max_in_flight) if queue_delay_ms else None
        )
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

    def admit(self, peer: str) -> None:
        """A request of ``peer`` taken on: under way, and waiting for its channel call."""
        self.in_flight += 1
        if self.waiting is not None:
            self.waiting.enter(peer)

    def calling_channel(self, arrived: float, peer: str) -> None:
        """An admitted request of ``peer`` whose bytes were read at ``arrived``
        (``time.monotonic()``: a step of the wall clock neither sheds nor hides a queue) is about
        to be sent to its channel: its wait so far is the queue's length."""
        if self.waiting is not None:
            self.waiting.leave(time.monotonic() - arrived, peer)

    def stopped_waiting(self, peer: str) -> None:
        """An admitted request no longer waits for a channel call of its own, though still under
        way (a retransmission, waiting for its original's answer)."""
        if self.waiting is not None:
            self.waiting.leave(None, peer)

    def finish(self, waiting: bool, peer: str) -> None:
        """An admitted request of ``peer`` ended (``waiting``: before any channel call)."""
        self.in_flight -= 1
        if waiting and self.waiting is not None:
            self.waiting.leave(None, peer)

    def overloaded(self, peer: str = "") -> str | None:
        """None when a new request from ``peer`` may be taken on, else the reason it may not."""
        if self.waiting is not None and self.waiting.full(peer):
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
