"""Voids and refunds at the channel, shared by the lifecycle (in the request) and the resolver
(when the first answer was not final).

A void cancels its purchase at the channel (WeChat Pay reverse, Alipay cancel, UnionPay
consumption undo, the banks' cancel); a refund returns part or all of it under the refund's own
number. Both calls are idempotent at the channel, so an unknown outcome is resolved by sending the
same call again until the channel confirms or refuses.
"""

from __future__ import annotations

import datetime as dt

from protocols import response_codes as rc
from protocols.messages import CANCEL, REFUND, ChannelResult, Outcome
from switch.answers import auth_id_for
from switch.gateway import ChannelGateway, PaymentRef
from switch.journal import Event, Journal, Original, Report, TxnKey
from switch.journal.machine import REFUND as REFUND_TXN

RETRY_S = 2.0


async def call(
    gateway: ChannelGateway,
    txn_type: str,
    undo_out_trade_no: str,
    amount_fen: int,
    original: Original,
    merchant_channel_id: str,
    deadline: float,
) -> ChannelResult:
    ref = PaymentRef(
        original.out_trade_no,
        amount_fen if txn_type == REFUND_TXN else original.amount_fen,
        merchant_channel_id,
        original.terminal_id,
        original.received_at.timestamp(),
        original.channel_txn_id or "",
        refund_no=undo_out_trade_no if txn_type == REFUND_TXN else "",
        total_fen=original.amount_fen,
    )
    return await gateway.call(REFUND if txn_type == REFUND_TXN else CANCEL, ref, deadline)


def report(key: TxnKey, rrn: str, result: ChannelResult) -> Report:
    """What a void's or refund's ``result`` tells the journal. Neither approved nor declined: not
    final yet, ``09`` (in progress), and the resolver sends the call again."""
    if result.outcome is Outcome.APPROVED:
        event, code, auth_id = Event.ACCEPTED, rc.APPROVED, auth_id_for(rrn)
    elif result.outcome is Outcome.DECLINED:
        event, code, auth_id = Event.REFUSED, result.response_code, ""
    else:  # a void or refund has no "customer paying": anything else is asked again
        event, code, auth_id = Event.UNSURE, rc.IN_PROGRESS, ""
    return Report(
        *key,
        event,
        code,
        auth_id,
        result.channel_code,
        result.channel_message[:200],
        result.channel_txn_id,
        dt.datetime.now(dt.UTC) + dt.timedelta(seconds=RETRY_S),
    )


async def record(
    journal: Journal, key: TxnKey, rrn: str, txn_type: str, amount_fen: int, original: Original, result: ChannelResult
) -> tuple[str, str]:
    """Commit a void's or refund's outcome (and, once it is final, its purchase's); returns the
    response code and authorisation id (``report``)."""
    told = report(key, rrn, result)
    if await journal.record_undo(told, txn_type, amount_fen, original) is None:
        stored = await journal.find(key)  # finished first by a resolver: what it recorded stands
        if stored is not None and stored.response_code:
            return stored.response_code, stored.auth_id or ""
    assert told.answer is not None
    return told.answer, told.auth_id or ""
