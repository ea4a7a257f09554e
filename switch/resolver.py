"""The resolver: every transaction that is not final ends in exactly one known outcome.

It takes (leases) the open transactions whose time has come: PENDING (the customer was still
confirming when the terminal got ``09``), UNKNOWN (the channel may or may not have it), and
RECEIVED rows past their deadline (orphaned by a crash: this is also the recovery at start-up).
A claim's lease is its own (``leased_until``): a reversal, a notification or a move that makes a
leased transaction due lets no other resolver in (the lane that holds it lets it go as it ends;
one whose work failed, once the lease runs out),
and a lane renews its lease as it starts and before each cancel, close, void or refund, so one
stuck past its lease, once another resolver has taken the transaction, makes none of them.
For each it asks the channel, then:

| the channel says  | the terminal was told    | so                                          |
| ----------------- | ------------------------ | ------------------------------------------- |
| paid              | 00 or 09 (promise keep)  | APPROVED (an inquiry or resend now gets 00) |
| paid              | anything else, or nothing| cancel: the terminal believes it failed     |
|                   | (promise return, reverse)| (``switch.journal.machine.promise``)        |
| still paying      | -                        | wait, until the payment window closes; then cancel |
| closed or failed  | -                        | DECLINED                                    |
| no such order     | -                        | cancel, which also bars a late pay          |
| cannot tell       | -                        | ask again later (backing off)               |
| (call not sent)   | -                        | ask again later: the circuit is open, or the channel switched off |

A QR order (the customer scans the merchant's code; ``expires_at`` set) is asked about with a
backoff until it expires, and a query finding it not paid, or not at all (Alipay has no trade until
the customer scans), is not its end: once expired it is closed (``close``), which also bars a late
payment, and ends CANCELLED. A close the channel refuses (paid meanwhile) is followed by a query.
The channel's notification usually ends it sooner (``switch.merchant.notices``).

A void or refund whose first answer was not final is sent again (the channel calls are idempotent)
until the channel confirms or refuses.

A reversal (0400) the terminal asked for counts as "told a failure": the payment is cancelled (if
the channel has it) and ends REVERSED. This is the store-and-forward queue of reversals: kept in
the journal, retried with backoff until the channel confirms, surviving restarts.

A cancel the channel confirms makes the transaction CANCELLED (REVERSED for a reversal); one it
asks to repeat is repeated. One it refuses, and any transaction past ``MAX_CHECKS`` tries or
``MAX_AGE_S``, moves to the dead-letter table for a person (with an alert metric); its journal row
stays as it is, never dropped. A person may hand it back (``journal.retry_dead_letter``): its tries
and days then count afresh.
"""

from __future__ import annotations

import asyncio
import logging
import time

from protocols import response_codes as rc
from protocols.messages import CANCEL, CLOSE, NOT_FOUND, QUERY, ChannelResult, Outcome
from switch import undo
from switch.answers import auth_id_for
from switch.config import ChannelSection
from switch.gateway import ChannelGateway, PaymentRef, risk_declined
from switch.journal import Event, Journal, OpenTxn, Original, Report, TxnKey
from switch.journal.machine import PURCHASE, Promise, State, promise
from switch.metrics import Metrics

log = logging.getLogger("paysw.resolver")

CALL_TIMEOUT_S = 15.0
LEASE_S = 60.0  # well past one channel call and the statements around it: renewed before each (_held)
MAX_BACKOFF_S = 300.0
MAX_CHECKS = 200  # with the backoff, about 16 hours of trying
MAX_AGE_S = 3 * 24 * 3600.0
OVERTAKEN_WITHIN_S = 3600.0  # how far back: a switch down for a while still finds them on its return
OVERTAKEN_EVERY_S = 2.0  # how often 0400s that raced their original's write-ahead are looked for (an index scan)
LET_GO_S = 5.0  # at stop: the least time given to letting go of leases, and to cancelled lanes to end
LANE_WIDTH = 16  # transactions of one channel resolved at once: a hung channel fills only its own lane


class Resolver:
    def __init__(
        self,
        journal: Journal,
        gateways: dict[str, ChannelGateway],
        channels: dict[str, ChannelSection],
        merchant_channel_ids: dict[tuple[str, str], str],
        metrics: Metrics,
        poll_s: float = 1.0,
        batch: int = 100,
        lease_s: float = LEASE_S,
        call_timeout_s: float = CALL_TIMEOUT_S,
    ) -> None:
        self._journal = journal
        self._lease_s = lease_s
        self._call_timeout_s = call_timeout_s
        self._gateways = gateways
        self._channels = channels
        self._merchant_channel_ids = merchant_channel_ids
        self._metrics = metrics
        self._poll_s = poll_s
        self._batch = batch
        self._task: asyncio.Task[None] | None = None
        self._lanes: dict[str, asyncio.Semaphore] = {}
        # The claim (its checks) of each transaction a lane here has or waits for: a lease may lapse
        # meanwhile and this resolver claim it again, never twice at once.
        self._in_progress: dict[TxnKey, int] = {}
        self._claiming = asyncio.Lock()  # a claim and what it hands out, against a lane's end and a lost lease
        self._workers: dict[asyncio.Task[None], TxnKey] = {}  # each transaction's, waiting for a lane or in one
        self._in_lane: set[TxnKey] = set()  # those whose lane has started: it may have called the channel
        self._until: float | None = None  # stopping: by when (the loop's clock) the lanes are to end

    def set_merchant_channel_ids(self, ids: dict[tuple[str, str], str]) -> None:
        """The merchants' ids at the channels, of a reloaded configuration."""
        self._merchant_channel_ids = ids

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="resolver")

    async def stop(self, until: float | None = None) -> None:
        """Claim no more. What waits for a lane here made no call: cancelled, and its lease let go
        at once for any resolver. What is in a lane has until ``until`` (the loop's clock; by default
        no time) to end and let its own go, and starts no channel call it could not see through by
        then (``_held``); the rest is cancelled, and its lease lapses, since its channel call may
        still be under way."""
        loop = asyncio.get_running_loop()
        self._until = end = loop.time() if until is None else until
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._let_go_of_waiting(max(end - loop.time(), LET_GO_S))
        if in_lane := list(self._workers):
            await asyncio.wait(in_lane, timeout=max(0.0, end - loop.time()))
            for task in in_lane:
                task.cancel()
            _, stuck = await asyncio.wait(in_lane, timeout=LET_GO_S)
            if stuck:  # a database that does not answer: the process ends with them
                log.warning("resolver lanes did not end when cancelled", extra={"count": len(stuck)})

    async def _let_go_of_waiting(self, within_s: float) -> None:
        """Cancel the transactions waiting for a lane here and make each due again, unleased."""
        async with self._claiming:
            waiting = {
                task: (key, self._in_progress[key])
                for task, key in self._workers.items()
                if key not in self._in_lane and key in self._in_progress  # (not one that has just ended)
            }
            for task in waiting:
                task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        try:
            async with asyncio.timeout(within_s):
                for key, checks in waiting.values():
                    await self._journal.defer(key, checks, 0)
        except Exception:  # (a timeout too)
            log.exception("letting go of what waited for a lane failed: the rest of their leases lapse")

    @property
    def in_progress(self) -> int:
        return len(self._in_progress)

    async def _run(self) -> None:
        """Claim what is due and hand each to its channel's lane, without waiting for them: one
        channel's slow calls never hold back another channel's transactions."""
        swept_at = 0.0
        while True:
            if time.monotonic() >= swept_at + OVERTAKEN_EVERY_S:
                swept_at = time.monotonic()
                await self._reverse_overtaken()
            try:
                async with self._claiming:
                    claimed = await self._journal.claim_due(self._batch, self._lease_s, list(self._gateways))
                    for txn in claimed:
                        if txn.key in self._in_progress:  # its lease lapsed while waiting for a lane here, or in one
                            self._in_progress[txn.key] = txn.checks  # that lane's, from now on
                            continue
                        self._in_progress[txn.key] = txn.checks
                        worker = asyncio.get_running_loop().create_task(self._resolve_in_lane(txn))
                        self._workers[worker] = txn.key
                        worker.add_done_callback(self._ended)
                if len(claimed) == self._batch:
                    continue  # there may be more due right away
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("resolver pass failed; trying again shortly")
            await asyncio.sleep(self._poll_s)

    async def _reverse_overtaken(self) -> None:
        """Flag the purchases whose 0400 raced their write-ahead (``Journal.flag_overtaken_originals``);
        a failure here never holds back claiming what is due."""
        try:
            if flagged := await self._journal.flag_overtaken_originals(OVERTAKEN_WITHIN_S):
                log.warning("purchases sent while their reversal was arriving: reversing", extra={"count": flagged})
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("looking for reversals that raced their original failed; trying again shortly")

    async def _resolve_in_lane(self, txn: OpenTxn) -> None:
        lane = self._lanes.setdefault(txn.channel, asyncio.Semaphore(LANE_WIDTH))
        try:
            async with lane:  # the wait for a lane may have outlasted the claim's lease
                self._in_lane.add(txn.key)
                if now := await self._held(txn, "resolve", seen=True):  # as it is now, not as it was claimed
                    await self.resolve(now)
            async with self._claiming:  # no claim of it in flight to be adopted by a lane that has ended
                await self._journal.release(txn.key, self._claim(txn))  # its move may have left it due
                del self._in_progress[txn.key]
        except Exception:
            # The lease lapses and the transaction comes round again: nothing is dropped.
            log.exception("resolving failed", extra={"rrn": txn.rrn, "channel": txn.channel})
        finally:
            self._in_progress.pop(txn.key, None)
            self._in_lane.discard(txn.key)

    def _ended(self, worker: asyncio.Task[None]) -> None:
        self._workers.pop(worker, None)

    async def resolve(self, txn: OpenTxn) -> None:
        channel = self._channels.get(txn.channel)
        gateway = self._gateways.get(txn.channel)
        age = time.time() - txn.received_at.timestamp()
        if channel is None or gateway is None:
            await self._give_up(txn, f"channel {txn.channel!r} is not configured")
            return
        trying = time.time() - txn.trying_since.timestamp()
        if txn.tries > MAX_CHECKS or trying > MAX_AGE_S:
            await self._give_up(txn, f"unresolved after {txn.tries} tries over {trying / 3600:.1f} h")
            return
        if txn.state == State.RECEIVED and (decline := await self._journal.risk_decline(txn.tx_date, txn.rrn)):
            await self._refuse_declined(txn, risk_declined(*decline))  # its front end stopped short of recording it
            return
        if txn.txn_type != PURCHASE:
            await self._resolve_undo(txn, channel, gateway)
            return
        ref = PaymentRef(
            txn.out_trade_no,
            txn.amount_fen,
            self._merchant_channel_ids.get((txn.merchant_id, txn.channel), ""),
            txn.terminal_id,
            txn.received_at.timestamp(),
            txn.channel_txn_id or "",
        )
        found = await gateway.call(QUERY, ref, time.time() + self._call_timeout_s)
        if not found.sent:  # never reached the channel (circuit open, switched off): ask later
            await self._defer(txn, _backoff(channel, txn.tries))
            return
        promised = promise(txn.txn_type, txn.response_code, txn.reversal_requested, txn.expires_at is not None)
        not_found = found.outcome is Outcome.DECLINED and found.channel_code == NOT_FOUND
        unpaid = found.outcome is Outcome.PENDING or not_found
        if txn.expires_at is not None and unpaid and promised is not Promise.REVERSE:
            await self._close_when_expired(txn, channel, gateway, ref, age)
        elif found.outcome is Outcome.APPROVED:
            if promised is Promise.KEEP:
                await self._finish(txn, Event.ACCEPTED, rc.APPROVED, found, auth_id_for(txn.rrn))
            else:
                await self._cancel(txn, channel, gateway, ref._replace(channel_txn_id=found.channel_txn_id), age)
        elif found.outcome is Outcome.PENDING:
            if age * 1000 < channel.payment_window_ms and promised is not Promise.REVERSE:
                await self._defer(txn, channel.query_interval_ms / 1000)
            else:
                await self._cancel(txn, channel, gateway, ref._replace(channel_txn_id=found.channel_txn_id), age)
        elif found.outcome is Outcome.DECLINED and found.channel_code != NOT_FOUND:
            # Closed or failed at the channel: no money kept, whatever was asked.
            await self._finish(txn, Event.REFUSED, _failure_code(txn), found)
        elif found.outcome is Outcome.DECLINED:
            await self._cancel(txn, channel, gateway, ref, age)
        else:
            await self._defer(txn, _backoff(channel, txn.tries))

    async def _refuse_declined(self, txn: OpenTxn, result: ChannelResult) -> None:
        """A payment or refund that risk declined, recorded so without a channel call (a refund
        releases what it reserved)."""
        if txn.txn_type == PURCHASE:
            await self._finish(txn, Event.REFUSED, result.response_code, result)
        elif original := await self._original(txn):
            await undo.record(self._journal, txn.key, txn.rrn, txn.txn_type, txn.amount_fen, original, result)
            self._metrics.resolved.labels(txn.channel, "DECLINED").inc()

    async def _original(self, txn: OpenTxn) -> Original | None:
        """The purchase a void or refund undoes; dead-lettered when it is not in the journal."""
        original = await self._journal.original(txn.original_rrn or "", txn.merchant_id)
        if original is None:
            await self._give_up(txn, f"{txn.txn_type} whose purchase {txn.original_rrn} is not in the journal")
        return original

    async def _resolve_undo(self, txn: OpenTxn, channel: ChannelSection, gateway: ChannelGateway) -> None:
        """A void or refund whose outcome is not known: the same idempotent call again."""
        original = await self._original(txn)
        if original is None or not await self._held(txn, txn.txn_type):
            return
        merchant_channel_id = self._merchant_channel_ids.get((txn.merchant_id, txn.channel), "")
        result = await undo.call(
            gateway,
            txn.txn_type,
            txn.out_trade_no,
            txn.amount_fen,
            original,
            merchant_channel_id,
            time.time() + self._call_timeout_s,
        )
        if result.sent and result.outcome in (Outcome.APPROVED, Outcome.DECLINED):
            code, _ = await undo.record(self._journal, txn.key, txn.rrn, txn.txn_type, txn.amount_fen, original, result)
            self._metrics.resolved.labels(txn.channel, "APPROVED" if code == rc.APPROVED else "DECLINED").inc()
        else:
            await self._defer(txn, _backoff(channel, txn.tries))

    async def _cancel(
        self, txn: OpenTxn, channel: ChannelSection, gateway: ChannelGateway, ref: PaymentRef, age: float
    ) -> None:
        wait = channel.cancel_after_ms / 1000 - age
        if wait > 0:  # the channel wants time between the pay call and a cancel
            await self._defer(txn, wait)
            return
        if not await self._held(txn, CANCEL):
            return
        cancelled = await gateway.call(CANCEL, ref, time.time() + self._call_timeout_s)
        if not cancelled.sent:
            await self._defer(txn, _backoff(channel, txn.tries))
        elif cancelled.outcome is Outcome.APPROVED:
            await self._finish(txn, Event.CANCELLED, _failure_code(txn), cancelled)
        elif cancelled.outcome is Outcome.DECLINED:
            await self._give_up(txn, f"channel refused to cancel: {cancelled.channel_code} {cancelled.channel_message}")
        else:  # asked to repeat (recall / retry_flag) or no answer
            await self._defer(txn, min(2.0, channel.query_interval_ms / 1000))

    async def _close_when_expired(
        self, txn: OpenTxn, channel: ChannelSection, gateway: ChannelGateway, ref: PaymentRef, age: float
    ) -> None:
        """A QR order nobody has paid: asked about again until it expires, then closed."""
        assert txn.expires_at is not None
        left = txn.expires_at.timestamp() - time.time()
        wait = max(left, channel.close_after_ms / 1000 - age)  # WeChat: no close within 5 min of the order
        if wait > 0:
            await self._defer(txn, min(wait, _backoff(channel, txn.tries)))
            return
        if not await self._held(txn, CLOSE):
            return
        closed = await gateway.call(
            CLOSE, ref._replace(expires=txn.expires_at.timestamp()), time.time() + self._call_timeout_s
        )
        if closed.sent and closed.outcome is Outcome.APPROVED:
            await self._finish(txn, Event.CANCELLED, _failure_code(txn), closed)
        elif closed.sent and closed.outcome is Outcome.DECLINED:  # paid meanwhile: the next query says so
            await self._defer(txn, channel.query_interval_ms / 1000)
        else:
            await self._defer(txn, _backoff(channel, txn.tries))

    async def _held(self, txn: OpenTxn, before: str, seen: bool = False) -> OpenTxn | None:
        """Renew this resolver's lease on ``txn`` before ``before`` (its work, a cancel, a close, a
        void or refund), and the transaction as it is now (``seen``: which the lane works from).
        A lane stuck past its lease, whose transaction another resolver took meanwhile and may be
        acting on, makes no call: what it would do is the other's to decide. Nor does a lane of a
        stopping resolver whose call could outlast the stop: it lets the transaction go at once,
        for any resolver, rather than leave a call under way and its lease to lapse."""
        if self._until is not None and asyncio.get_running_loop().time() + self._call_timeout_s > self._until:
            await self._defer(txn, 0)
            return None
        tried = self._claim(txn)
        if now := await self._journal.renew(txn.key, tried, self._lease_s, seen):
            return now
        async with self._claiming:  # this resolver's own claim of it may be in flight: adopted once done
            claim = self._claim(txn)
        if claim != tried and (now := await self._journal.renew(txn.key, claim, self._lease_s, seen)):
            return now
        if await self._journal.taken_since(txn.key, claim):
            self._metrics.leases_lost.labels(txn.channel).inc()
            log.warning(
                "lease lapsed and the transaction taken by another claim: left to it",
                extra={"rrn": txn.rrn, "channel": txn.channel, "before": before},
            )
        return None

    def _claim(self, txn: OpenTxn) -> int:
        """The checks of this resolver's latest claim of ``txn``."""
        return self._in_progress.get(txn.key, txn.checks)

    async def _defer(self, txn: OpenTxn, seconds: float) -> None:
        await self._journal.defer(txn.key, self._claim(txn), seconds)

    async def _give_up(self, txn: OpenTxn, reason: str) -> None:
        if not await self._journal.dead_letter(txn.key, self._claim(txn), reason):
            log.warning(
                "not handed to a person: the claim giving it up is no longer the transaction's",
                extra={"rrn": txn.rrn, "channel": txn.channel, "reason": reason},
            )
            return
        self._metrics.dead_letters.labels(txn.channel).inc()
        log.error(
            "moved to the dead letters: needs a person",
            extra={"rrn": txn.rrn, "channel": txn.channel, "state": txn.state, "reason": reason},
        )

    async def _finish(self, txn: OpenTxn, event: Event, code: str, result: ChannelResult, auth_id: str = "") -> None:
        message = result.channel_message[:200]
        report = Report(*txn.key, event, code, auth_id, result.channel_code, message, result.channel_txn_id, None)
        state = await self._journal.record(report)
        if state is None:  # finished meanwhile (another resolver, reconciliation): nothing to count
            return
        self._metrics.resolved.labels(txn.channel, state).inc()
        log.debug(
            "transaction resolved",
            extra={"rrn": txn.rrn, "channel": txn.channel, "from": txn.state, "to": state, "code": code},
        )


def _failure_code(txn: OpenTxn) -> str:
    """What a resend or an inquiry gets for a transaction that did not go through: what the
    terminal was told, unless that was "wait" (then: declined)."""
    told = txn.response_code
    if txn.reversal_requested and told == rc.APPROVED:
        return told  # kept as what it was told: a resend is answered by its state (lifecycle._replay)
    return rc.DO_NOT_HONOUR if told in (None, "", rc.IN_PROGRESS, rc.APPROVED) else told


def _backoff(channel: ChannelSection, tries: int) -> float:
    return min(MAX_BACKOFF_S, channel.query_interval_ms / 1000 * 2 ** min(tries, 10))
