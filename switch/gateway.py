"""The front end's door to one channel, and the front end's half of the channel's bulkhead.

Transactions are gathered into batches, one frame per batch on the link to a shard's actor
(``actors.link``), and each transaction's result is handed back as soon as it comes in. Before a
new transaction may go, ``admit`` checks the channel's limits in this front end: switched on,
calls under way below the bulkhead, the channel's and the merchant's rate quotas, and a shard
whose circuit breaker lets calls through; a refusal is answered ``91`` at once and nothing is
sent. Every call goes to a shard whose breaker lets it through, and its outcome (or its being
overdue) is fed back to that breaker.

A watcher asks each shard's actor for its figures every second: it notices an actor that Ray
restarted (counted) and one that is gone for good (its circuit held open until an operator
restarts it). Each shard's link is held open: when it breaks (the actor crashed), whatever was
sent on it without a result is UNKNOWN, and a new link is opened to the actor Ray restarts.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import itertools
import logging
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import ray
from ray.actor import ActorHandle

from actors.link import ActorLink
from protocols import response_codes as rc
from protocols.channels.base import Notice
from protocols.messages import ChannelRequest, ChannelResult, Outcome
from switch.breaker import CircuitBreaker, CircuitState
from switch.config import ChannelSection
from switch.ratelimit import Quota

log = logging.getLogger("paysw.gateway")

WATCH_INTERVAL_S = 1.0
DEAD_AFTER_CHECKS = 5
RESPAWN_ATTEMPTS = 10
OVERDUE_CHECK_S = 0.2
CLOSE_WAIT_S = 5.0  # at stop, for the gateway's own tasks to end once cancelled
LINK_OPEN_TIMEOUT_S = 60.0  # Ray may be starting (or restarting) the actor
LINK_RETRY_S = (0.1, 2.0)  # first and longest wait between attempts to open a link
# Reasons a call or a new transaction is refused before anything is sent (the journal's channel code).
DISABLED, BUSY, RATE_LIMIT, MERCHANT_RATE_LIMIT, CIRCUIT_OPEN, NO_LINK = (
    "DISABLED",
    "BUSY",
    "RATE_LIMIT",
    "MERCHANT_RATE_LIMIT",
    "CIRCUIT_OPEN",
    "NO_LINK",
)
NOTICE_READ_S = 5.0  # for an actor to check a notification; past it 503, and the channel sends it again
SHED, UNANSWERED = "shed", "unanswered"  # why a notification was not read (the metric's result)
LATENCIES_KEPT = 256  # the last calls' latencies a gateway's status reads its percentiles from
SUSPENDED = "SUSPENDED"  # the merchant or terminal (switch.lifecycle's admit step: answered 57)


class NoticeUnread(Exception):
    """A channel's notification not read now (``reason``: ``SHED`` or ``UNANSWERED``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PaymentRef(NamedTuple):
    """What a channel call needs to know of the payment it is about."""

    out_trade_no: str
    amount_fen: int
    merchant_channel_id: str
    terminal_id: str
    created: float  # epoch seconds of the write-ahead
    channel_txn_id: str = ""
    refund_no: str = ""  # a refund: its own order number at the channel
    total_fen: int = 0  # a refund: the payment's whole amount
    subject: str = "POS purchase"  # what the customer sees the payment is for
    notify_url: str = ""  # a QR order: where the channel posts its notification
    expires: float = 0.0  # a QR order: epoch seconds after which it can no longer be paid


def is_channel_failure(result: ChannelResult) -> bool:
    """Whether a call's result counts against the channel's circuit: no answer, a broken
    connection, an error answer, a refused connection, a crashed or unreachable actor. The switch's own
    refusals (limits, deadlines) and the channel's business answers do not."""
    return result.outcome is Outcome.UNKNOWN or (not result.sent and result.channel_code in ("CONNECT", NO_LINK))


def refused(key: int, reason: str, message: str) -> ChannelResult:
    return ChannelResult(key, Outcome.DECLINED, rc.CHANNEL_UNAVAILABLE, reason, message, sent=False)


def _percentile(ordered: list[float], q: float) -> float | None:
    """The ``q`` quantile of ``ordered`` seconds, in milliseconds (None of none)."""
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1) if ordered else None


def risk_declined(rule_id: str, code: str) -> ChannelResult:
    """The result of a payment or refund an enforced risk rule declined: never sent."""
    return ChannelResult(0, Outcome.DECLINED, code, "RISK", f"declined by risk rule {rule_id}", sent=False)


PIN_REFUSED = "PIN"  # the channel code recorded for a purchase whose PIN block was not translated


def pin_refused(code: str, reason: str) -> ChannelResult:
    """The result of a purchase whose PIN block was not translated (``Processor._step_pin``): never sent."""
    return ChannelResult(0, Outcome.DECLINED, code, PIN_REFUSED, f"PIN block not translated ({reason})", sent=False)


@dataclass(eq=False)
class Shard:
    index: int
    actor: ActorHandle
    breaker: CircuitBreaker
    queue: list[ChannelRequest] = field(default_factory=list)
    link: ActorLink | None = None
    on_link: set[int] = field(default_factory=set)  # keys sent on the link, result not yet back
    linked: asyncio.Event = field(default_factory=asyncio.Event)  # a link to this actor has been open
    relink: asyncio.Event = field(default_factory=asyncio.Event)  # a dead actor was replaced
    dead: bool = False  # gone for good: Ray gave up restarting it
    died_checks: int = 0  # watcher checks in a row that found it dead
    pid: int = 0
    restarts: int = 0
    figures: dict[str, int | str] = field(default_factory=dict)  # the actor's own, from the watcher


class ChannelGateway:
    def __init__(
        self,
        name: str,
        config: ChannelSection,
        spawn: Callable[[int], ActorHandle],
        max_batch: int,
        on_circuit: Callable[[str, int, CircuitState], None] | None = None,
        on_restart: Callable[[str], None] | None = None,
        merchant_rates: dict[str, float] | None = None,
        link_tls: ssl.SSLContext | None = None,  # actors.link.client_tls, for links across nodes
    ) -> None:
        self.name = name
        self.config = config
        self.enabled = config.enabled
        self.max_in_flight = config.frontend_in_flight
        self.in_flight = 0
        self._spawn = spawn
        self._link_tls = link_tls
        self._max_batch = max_batch
        self._on_circuit = on_circuit
        self._on_restart = on_restart
        self.shards = [self._new_shard(i, spawn(i)) for i in range(config.shards)]
        self._turn = itertools.count()
        self._quota = Quota(config.rate_per_s)
        self._notice_quota = Quota(config.notices_per_s)
        self._notice_turn = itertools.count()
        self._merchant_rates = merchant_rates or {}  # a merchant's own quota, over merchant_rate_per_s
        self._merchant_quotas: dict[str, Quota] = {}
        self._keys = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[ChannelResult]] = {}
        self._outstanding: deque[tuple[float, int, Shard]] = deque()  # calls by start time
        self._latencies: deque[float] = deque(maxlen=LATENCIES_KEPT)  # of the last calls, for status()
        self._wakeup = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._dispatch(), name=f"gateway-{name}"),
            loop.create_task(self._watch_overdue(), name=f"gateway-{name}-overdue"),
            loop.create_task(self._watch_actors(), name=f"gateway-{name}-actors"),
            *(loop.create_task(self._keep_linked(s), name=f"gateway-{name}-link{s.index}") for s in self.shards),
        ]

    def set_limits(self, config: ChannelSection) -> None:
        """The live limits of a reloaded configuration (``switch.live.LIMITS``): the bulkhead at
        once; a quota whose rate changed starts a fresh bucket; the breakers keep their window
        and state and judge by the new settings from the next call."""
        if config.rate_per_s != self.config.rate_per_s:
            self._quota = Quota(config.rate_per_s)
        if config.merchant_rate_per_s != self.config.merchant_rate_per_s:
            self._merchant_quotas.clear()
        if config.notices_per_s != self.config.notices_per_s:
            self._notice_quota = Quota(config.notices_per_s)
        for shard in self.shards:
            shard.breaker.configure(config.breaker)
        self.config, self.max_in_flight = config, config.frontend_in_flight

    def set_merchant_rates(self, rates: dict[str, float]) -> None:
        """The merchants' own quotas of a reloaded configuration: a merchant whose rate changed
        starts a fresh bucket at its new rate; the others keep theirs."""
        for merchant_id in {*rates, *self._merchant_rates}:
            if rates.get(merchant_id) != self._merchant_rates.get(merchant_id):
                self._merchant_quotas.pop(merchant_id, None)
        self._merchant_rates = rates

    async def linked(self) -> None:
        """Return once every shard has had a link open (the switch is ready for traffic)."""
        await asyncio.gather(*(shard.linked.wait() for shard in self.shards))

    def _new_shard(self, index: int, actor: ActorHandle) -> Shard:
        notify = self._on_circuit
        on_change = None if notify is None else (lambda state: notify(self.name, index, state))
        if on_change is not None:
            on_change(CircuitState.CLOSED)  # every shard has its series from the start
        return Shard(index, actor, CircuitBreaker(self.config.breaker, on_change=on_change))

    # -- admission ---------------------------------------------------------------------------

    def admit(self, merchant_id: str) -> str | None:
        """None when a new transaction of ``merchant_id`` may go to the channel now, else why not."""
        if not self.enabled:
            return DISABLED
        if self.in_flight >= self.max_in_flight:
            return BUSY
        if not any(shard.breaker.allows() for shard in self.shards):
            return CIRCUIT_OPEN
        if not self._quota.try_take():
            return RATE_LIMIT
        quota = self._merchant_quotas.get(merchant_id)
        if quota is None:  # merchants are configured, so this stays bounded
            rate = self._merchant_rates.get(merchant_id, self.config.merchant_rate_per_s)
            quota = self._merchant_quotas[merchant_id] = Quota(rate)
        if not quota.try_take():
            return MERCHANT_RATE_LIMIT
        return None

    def _pick(self) -> Shard | None:
        """The next shard, round robin, whose breaker lets a call through."""
        first = next(self._turn)
        for i in range(len(self.shards)):
            shard = self.shards[(first + i) % len(self.shards)]
            if shard.breaker.acquire():
                return shard
        return None

    # -- calls -------------------------------------------------------------------------------

    async def call(
        self,
        op: str,
        ref: PaymentRef,
        deadline: float,
        auth_code: str = "",
        on_late: Callable[[ChannelResult], None] | None = None,
        pin_block: str = "",
    ) -> ChannelResult:
        """One channel call, answered by ``deadline`` (epoch seconds) at the latest: past it the
        result is UNKNOWN, and the call's own late answer goes to ``on_late`` (to be kept; the
        resolver finishes the transaction from the channel's side, never from a late answer alone).
        With every shard's circuit open the call is refused at once, not sent."""
        key = next(self._keys)
        shard = self._pick()
        if shard is None:
            return refused(key, CIRCUIT_OPEN, "circuit open")
        req = ChannelRequest(
            key,
            op,
            ref.out_trade_no,
            ref.amount_fen,
            auth_code,
            ref.merchant_channel_id,
            ref.terminal_id,
            deadline,
            ref.created,
            ref.channel_txn_id,
            subject=ref.subject,
            refund_no=ref.refund_no,
            total_fen=ref.total_fen,
            pin_block=pin_block,
            notify_url=ref.notify_url,
            expires=ref.expires,
        )
        loop = asyncio.get_running_loop()
        call: asyncio.Future[ChannelResult] = loop.create_future()
        self._waiting[key] = call
        shard.queue.append(req)
        self._wakeup.set()
        # Counted until the call itself ends, not until we stop waiting: a stuck call holds its place.
        self.in_flight += 1
        started = time.monotonic()
        self._outstanding.append((started, key, shard))
        call.add_done_callback(lambda done: self._call_ended(done, key, shard, started))
        return await self._answer(call, key, deadline, op, on_late)

    def _answer(
        self,
        call: asyncio.Future[ChannelResult],
        key: int,
        deadline: float,
        op: str,
        on_late: Callable[[ChannelResult], None] | None,
    ) -> asyncio.Future[ChannelResult]:
        """The call's result, or UNKNOWN once ``deadline`` passes; then the call's own result, when
        it comes, goes to ``_late``. (What ``wait_for`` and ``shield`` would do, for a fraction of
        their objects: this runs for every call.)"""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[ChannelResult] = loop.create_future()

        def relay(done: asyncio.Future[ChannelResult]) -> None:
            timer.cancel()
            if not answer.done():  # (cancelled: its awaiter has gone)
                answer.set_result(done.result())

        def expire() -> None:
            if not answer.done() and not call.done():
                answer.set_result(
                    ChannelResult(key, Outcome.UNKNOWN, rc.CHANNEL_UNAVAILABLE, "DEADLINE", "no answer in time")
                )
                call.remove_done_callback(relay)
                call.add_done_callback(lambda done: self._late(op, done, on_late))

        timer = loop.call_later(max(0.0, deadline - time.time()), expire)
        call.add_done_callback(relay)
        return answer

    def _late(
        self, op: str, done: asyncio.Future[ChannelResult], on_late: Callable[[ChannelResult], None] | None
    ) -> None:
        result = done.result()
        log.warning("late channel answer", extra={"channel": self.name, "op": op, "outcome": result.outcome.value})
        if on_late is not None:
            on_late(result)

    def _call_ended(self, done: asyncio.Future[ChannelResult], key: int, shard: Shard, started: float) -> None:
        self.in_flight -= 1
        result = done.result()
        if result.sent or is_channel_failure(result):
            seconds = time.monotonic() - started
            self._latencies.append(seconds)
            shard.breaker.record(is_channel_failure(result), seconds, key)
        else:
            shard.breaker.release(key)

    async def _watch_overdue(self) -> None:
        """Count calls outstanding past the slow-call threshold against their shard's breaker
        now: a hung channel must not take its whole timeout to open the circuit. A check every
        OVERDUE_CHECK_S rather than on each admission: it opens the circuit while no one pays too,
        and adds nothing to the hot path (the calls are kept in start order, so a check looks only
        at those just overdue)."""
        while True:
            await asyncio.sleep(OVERDUE_CHECK_S)
            now, slow_s = time.monotonic(), self.config.breaker.slow_call_ms / 1000  # set_limits may change it
            while self._outstanding:
                started, key, shard = self._outstanding[0]
                if key in self._waiting and now - started < slow_s:
                    break
                self._outstanding.popleft()
                if key in self._waiting:
                    shard.breaker.record_overdue(key)

    async def _dispatch(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            now = time.time()
            for shard in self.shards:
                while shard.queue:
                    batch = shard.queue[: self._max_batch]
                    del shard.queue[: self._max_batch]
                    live = []
                    for req in batch:  # no work for a request whose deadline has passed
                        if req.deadline <= now:
                            self._resolve(refused(req.key, "DEADLINE", "deadline passed before the call"))
                        elif shard.link is None or not shard.link.is_open:
                            self._resolve(refused(req.key, NO_LINK, "no link to the channel actor"))
                        else:
                            live.append(req)
                    if live:
                        shard.on_link.update(req.key for req in live)
                        shard.link.send(live)  # type: ignore[union-attr]  (checked open above)

    async def _keep_linked(self, shard: Shard) -> None:
        """Hold a link open to the shard's actor; once it breaks, open one to the actor Ray
        restarted (or, after ``restart_dead``, to the new one)."""
        retry = LINK_RETRY_S[0]
        while True:
            if shard.dead:
                await shard.relink.wait()
                shard.relink.clear()
                continue
            lost = asyncio.Event()
            try:
                address = await asyncio.wait_for(shard.actor.open_link.remote(), LINK_OPEN_TIMEOUT_S)
                shard.link = await ActorLink.connect(
                    address,
                    functools.partial(self._results, shard),
                    functools.partial(self._link_lost, shard, lost),
                    self._link_tls,
                )
            except Exception as exc:  # the actor is restarting, or gone (the watcher judges which)
                log.warning(
                    "cannot open a link to the channel actor",
                    extra={"channel": self.name, "shard": shard.index, "error": type(exc).__name__},
                )
                await asyncio.sleep(retry)
                retry = min(retry * 2, LINK_RETRY_S[1])
                continue
            retry = LINK_RETRY_S[0]
            shard.linked.set()
            await lost.wait()

    def _results(self, shard: Shard, results: list[ChannelResult]) -> None:
        for result in results:
            shard.on_link.discard(result.key)
            self._resolve(result)

    def _link_lost(self, shard: Shard, lost: asyncio.Event) -> None:
        """Whatever was sent on a broken link without a result may have reached the channel:
        UNKNOWN (never resent, the resolver finds out)."""
        shard.link = None
        if shard.on_link:
            log.error(
                "link to channel actor lost with calls under way",
                extra={"channel": self.name, "shard": shard.index, "calls": len(shard.on_link)},
            )
        for key in shard.on_link:
            self._resolve(ChannelResult(key, Outcome.UNKNOWN, rc.CHANNEL_UNAVAILABLE, "ACTOR", "channel actor failed"))
        shard.on_link.clear()
        lost.set()

    def _resolve(self, result: ChannelResult) -> None:
        """Hand a call's result to the caller waiting for it (if it still waits)."""
        future = self._waiting.pop(result.key, None)
        if future is not None and not future.done():
            future.set_result(result)

    # -- supervision and operator controls ---------------------------------------------------

    async def _watch_actors(self) -> None:
        while True:
            await asyncio.gather(*(self._check(shard) for shard in self.shards))
            await asyncio.sleep(WATCH_INTERVAL_S)

    async def _check(self, shard: Shard) -> None:
        if shard.dead:
            return
        try:
            figures = await asyncio.wait_for(shard.actor.stats.remote(), WATCH_INTERVAL_S * 2)
        except ray.exceptions.ActorDiedError:
            # Also what a call meets while Ray restarts the actor: gone for good only when it stays so.
            shard.died_checks += 1
            if shard.died_checks < DEAD_AFTER_CHECKS:
                return
            shard.dead = True
            shard.breaker.force_open()
            log.error(
                "channel actor gone for good; restart it with 'paysw channel restart'",
                extra={"channel": self.name, "shard": shard.index},
            )
            return
        except Exception:  # restarting, or too busy to answer: the breaker judges its calls meanwhile
            return
        shard.died_checks = 0
        pid = int(figures.get("pid", 0))
        if shard.pid and pid != shard.pid:
            shard.restarts += 1
            log.warning("channel actor was restarted", extra={"channel": self.name, "shard": shard.index})
            if self._on_restart is not None:
                self._on_restart(self.name)
        shard.pid = pid
        shard.figures = figures

    @property
    def queue_depth(self) -> int:
        return sum(len(shard.queue) for shard in self.shards)

    def close_circuits(self) -> None:
        """Close every live shard's circuit now (an operator who knows the channel is back)."""
        for shard in self.shards:
            if not shard.dead:
                shard.breaker.reset()

    async def restart_dead(self) -> int:
        """Start a fresh actor for every shard whose actor is gone for good; how many."""
        restarted = 0
        for shard in self.shards:
            if shard.dead:
                # Ray keeps a dead actor's name taken until it is killed; then the name is free again.
                ray.kill(shard.actor, no_restart=True)
                for attempt in range(RESPAWN_ATTEMPTS):
                    actor = self._spawn(shard.index)
                    try:
                        await asyncio.wait_for(actor.ping.remote(), 60)
                        break
                    except ray.exceptions.ActorDiedError:  # still the old one's name: once more
                        if attempt == RESPAWN_ATTEMPTS - 1:
                            raise
                        await asyncio.sleep(0.5)
                shard.actor, shard.dead, shard.pid, shard.died_checks = actor, False, 0, 0
                shard.linked.clear()
                shard.relink.set()
                await asyncio.wait_for(shard.linked.wait(), 60)  # ready for payments on return
                shard.breaker.reset()
                restarted += 1
        return restarted

    async def statement(self, day: dt.date) -> bytes:
        """The channel's statement of ``day``, fetched by a live shard's actor (reconciliation)."""
        shard = next((s for s in self.shards if not s.dead), self.shards[0])
        return await shard.actor.statement.remote(day)

    async def read_notice(self, body: bytes, headers: dict[str, str]) -> Notice | str:
        """A notification the channel posted, verified by the live shards' actors in turn (which
        hold the account's keys): the ``Notice``, or why it is refused. ``NoticeUnread`` past the channel's
        ``notices_per_s`` (anyone may post one, and its check runs beside the channel's payments),
        or when the actor does not answer within ``NOTICE_READ_S``: the channel sends it again."""
        if not self._notice_quota.try_take():
            raise NoticeUnread(SHED)
        live = [s for s in self.shards if not s.dead] or self.shards  # in turn, as calls go
        shard = live[next(self._notice_turn) % len(live)]
        try:
            return await asyncio.wait_for(shard.actor.read_notice.remote(body, headers), NOTICE_READ_S)
        except (TimeoutError, ray.exceptions.RayError) as exc:
            raise NoticeUnread(UNANSWERED) from exc

    def call_request(self, req: ChannelRequest) -> Awaitable[ChannelResult]:
        """``call`` for a request built elsewhere (reconciliation's error handling): through the
        same breakers, limits and deadlines as every call."""
        ref = PaymentRef(req.out_trade_no, req.amount_fen, req.merchant_channel_id, req.terminal_id, req.created,
                         req.channel_txn_id, req.refund_no, req.total_fen)  # fmt: skip
        return self.call(req.op, ref, req.deadline, auth_code=req.auth_code)

    def crash(self, shard_index: int) -> None:
        """Incident drill: make one shard's actor process exit, as a crash would."""
        self.shards[shard_index].actor.crash.remote()

    def status(self) -> dict[str, object]:
        states = {shard.breaker.state for shard in self.shards}
        circuit = (
            "closed" if CircuitState.CLOSED in states else "half_open" if CircuitState.HALF_OPEN in states else "open"
        )
        latencies = sorted(self._latencies)
        latency = {"calls": len(latencies), "p50": _percentile(latencies, 0.5), "p99": _percentile(latencies, 0.99)}
        windows = [shard.breaker.snapshot() for shard in self.shards]
        calls = sum(w["calls_in_window"] for w in windows)
        failed = sum(w["failure_rate"] * w["calls_in_window"] for w in windows)
        return {
            "enabled": self.enabled,
            "circuit": circuit,
            "latency_ms": latency,  # of the last LATENCIES_KEPT calls sent
            "error_rate": round(failed / calls, 3) if calls else None,  # in the breakers' windows
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "rate_per_s": self.config.rate_per_s,
            "merchant_rate_per_s": self.config.merchant_rate_per_s,
            "notices_per_s": self.config.notices_per_s,
            "shards": [
                {
                    "shard": shard.index,
                    "actor": "dead" if shard.dead else "alive",
                    "pid": shard.pid,
                    "restarts": shard.restarts,
                    "actor_in_flight": shard.figures.get("in_flight", 0),
                    "calls": shard.figures.get("calls", 0),
                    "notices_read": shard.figures.get("notices", 0),
                    "circuit": window,
                }
                for shard, window in zip(self.shards, windows, strict=True)
            ],
        }

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        # Bounded, so that a stop never waits on one of them (one awaiting a Ray call to an actor
        # whose node is lost, say): once cancelled, what they do no longer matters.
        _, stuck = await asyncio.wait(self._tasks, timeout=CLOSE_WAIT_S)
        if stuck:
            log.warning("channel tasks still ending at stop; left", extra={"channel": self.name, "tasks": len(stuck)})
        for shard in self.shards:
            if shard.link is not None:
                shard.link.close()
