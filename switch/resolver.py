"""The resolver: every transaction that is not final ends in exactly one known outcome.

It takes (leases) the open transactions whose time has come: PENDING (the customer was still
confirming when the terminal got ``09``), UNKNOWN (the channel may or may not have it), and
RECEIVED rows past their deadline (orphaned by a crash: this is also the recovery at start-up).
For each it asks the channel, then:

| the channel says  | the terminal was told    | so                                          |
| ----------------- | ------------------------ | ------------------------------------------- |
| paid              | 00 or 09                 | APPROVED (an inquiry or resend now gets 00) |
| paid              | anything else, or nothing| cancel: the terminal believes it failed     |
| still paying      | -                        | wait, until the payment window closes; then cancel |
| closed or failed  | -                        | DECLINED                                    |
| no such order     | -                        | cancel, which also bars a late pay          |
| cannot tell       | -                        | ask again later (backing off)               |

A cancel the channel confirms makes the transaction CANCELLED; one it asks to repeat is repeated;
one it refuses is logged for a person and retried slowly, never dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time

from actors.settings import ChannelSection
from protocols import response_codes as rc
from protocols.messages import CANCEL, NOT_FOUND, QUERY, ChannelResult, Outcome
from switch.answers import auth_id_for
from switch.gateway import ChannelGateway, PaymentRef
from switch.journal import FinalUpdate, Journal, OpenTxn

log = logging.getLogger("paysw.resolver")

CALL_TIMEOUT_S = 15.0
LEASE_S = 60.0  # longer than a query and a cancel together
MAX_BACKOFF_S = 300.0
REFUSED_RETRY_S = 600.0
TOLD_TO_WAIT = {rc.APPROVED, rc.IN_PROGRESS}


class Resolver:
    def __init__(
        self,
        journal: Journal,
        gateways: dict[str, ChannelGateway],
        channels: dict[str, ChannelSection],
        merchant_channel_ids: dict[tuple[str, str], str],
        poll_s: float = 1.0,
        batch: int = 100,
    ) -> None:
        self._journal = journal
        self._gateways = gateways
        self._channels = channels
        self._merchant_channel_ids = merchant_channel_ids
        self._poll_s = poll_s
        self._batch = batch
        self._task: asyncio.Task[None] | None = None
        self.resolved = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="resolver")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                due = await self._journal.claim_due(self._batch, LEASE_S)
                if due:
                    await asyncio.gather(*(self._resolve_safely(txn) for txn in due))
                    continue  # there may be more due right away
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("resolver pass failed; trying again shortly")
            await asyncio.sleep(self._poll_s)

    async def _resolve_safely(self, txn: OpenTxn) -> None:
        try:
            await self.resolve(txn)
        except Exception:
            # The lease lapses and the transaction comes round again: nothing is dropped.
            log.exception("resolving failed", extra={"rrn": txn.rrn, "channel": txn.channel})

    async def resolve(self, txn: OpenTxn) -> None:
        channel = self._channels.get(txn.channel)
        gateway = self._gateways.get(txn.channel)
        if channel is None or gateway is None:
            log.error("open transaction of an unconfigured channel", extra={"rrn": txn.rrn, "channel": txn.channel})
            await self._journal.defer(txn.key, REFUSED_RETRY_S)
            return
        ref = PaymentRef(
            txn.out_trade_no,
            txn.amount_fen,
            self._merchant_channel_ids.get((txn.merchant_id, txn.channel), ""),
            txn.terminal_id,
            txn.received_at.timestamp(),
            txn.channel_txn_id or "",
        )
        found = await gateway.call(QUERY, ref, time.time() + CALL_TIMEOUT_S)
        age = time.time() - txn.received_at.timestamp()
        if found.outcome is Outcome.APPROVED:
            if txn.response_code in TOLD_TO_WAIT:
                await self._finish(txn, "APPROVED", rc.APPROVED, found, auth_id_for(txn.rrn))
            else:
                await self._cancel(txn, channel, gateway, ref._replace(channel_txn_id=found.channel_txn_id), age)
        elif found.outcome is Outcome.PENDING:
            if age * 1000 < channel.payment_window_ms:
                await self._journal.defer(txn.key, channel.query_interval_ms / 1000)
            else:
                await self._cancel(txn, channel, gateway, ref._replace(channel_txn_id=found.channel_txn_id), age)
        elif found.outcome is Outcome.DECLINED and found.channel_code != NOT_FOUND:
            await self._finish(txn, "DECLINED", _failure_code(txn), found)
        elif found.outcome is Outcome.DECLINED:
            await self._cancel(txn, channel, gateway, ref, age)
        else:
            await self._journal.defer(txn.key, _backoff(channel, txn.checks))

    async def _cancel(
        self, txn: OpenTxn, channel: ChannelSection, gateway: ChannelGateway, ref: PaymentRef, age: float
    ) -> None:
        wait = channel.cancel_after_ms / 1000 - age
        if wait > 0:  # the channel wants time between the pay call and a cancel
            await self._journal.defer(txn.key, wait)
            return
        cancelled = await gateway.call(CANCEL, ref, time.time() + CALL_TIMEOUT_S)
        if cancelled.outcome is Outcome.APPROVED:
            await self._finish(txn, "CANCELLED", _failure_code(txn), cancelled)
        elif cancelled.outcome is Outcome.DECLINED:
            log.error(
                "channel refused to cancel: needs a person",
                extra={"rrn": txn.rrn, "channel": txn.channel, "channel_code": cancelled.channel_code},
            )
            await self._journal.defer(txn.key, REFUSED_RETRY_S)
        else:  # asked to repeat (recall / retry_flag) or no answer
            await self._journal.defer(txn.key, min(2.0, channel.query_interval_ms / 1000))

    async def _finish(self, txn: OpenTxn, state: str, code: str, result: ChannelResult, auth_id: str = "") -> None:
        update = FinalUpdate(
            txn.tx_date,
            txn.terminal_id,
            txn.stan,
            txn.transmitted,
            state,
            code,
            auth_id,
            result.channel_code,
            result.channel_message[:200],
            result.channel_txn_id or txn.channel_txn_id or "",
            None,
        )
        await self._journal.record_outcome(update)
        self.resolved += 1
        log.info(
            "transaction resolved",
            extra={"rrn": txn.rrn, "channel": txn.channel, "from": txn.state, "to": state, "code": code},
        )


def _failure_code(txn: OpenTxn) -> str:
    """What a resend or an inquiry gets for a transaction that did not go through: what the
    terminal was told, unless that was "wait" (then: declined)."""
    told = txn.response_code
    return rc.DO_NOT_HONOUR if told in (None, "", rc.IN_PROGRESS, rc.APPROVED) else told


def _backoff(channel: ChannelSection, checks: int) -> float:
    return min(MAX_BACKOFF_S, channel.query_interval_ms / 1000 * 2 ** min(checks, 10))
