"""Voids and refunds at the channel, shared by the lifecycle (in the request) and the resolver
(when the first answer was not final).

A void cancels its purchase at the channel (WeChat Pay reverse, Alipay cancel, UnionPay
consumption undo, the banks' cancel); a refund returns part or all of it under the refund's own
number. Both calls are idempotent at the channel, so an unknown outcome is settled by sending the
same call again until the channel confirms or refuses.
"""

from __future__ import annotations

import datetime as dt

from protocols import response_codes as rc
from protocols.messages import CANCEL, REFUND, ChannelResult, Outcome
from switch.answers import auth_id_for
from switch.gateway import ChannelGateway, PaymentRef
from switch.journal import FinalUpdate, Journal, Original, TxnKey

VOID, REFUND_KIND = "void", "refund"
RETRY_S = 2.0


def reserved_fen(kind: str, amount_fen: int, original: Original) -> int:
    """What a void or refund holds of its purchase while under way: a void all of it."""
    return original.amount_fen if kind == VOID else amount_fen


async def call(
    gateway: ChannelGateway,
    kind: str,
    undo_out_trade_no: str,
    amount_fen: int,
    original: Original,
    merchant_channel_id: str,
    deadline: float,
) -> ChannelResult:
    ref = PaymentRef(
        original.out_trade_no,
        amount_fen if kind == REFUND_KIND else original.amount_fen,
        merchant_channel_id,
        original.terminal_id,
        original.received_at.timestamp(),
        original.channel_txn_id or "",
        refund_no=undo_out_trade_no if kind == REFUND_KIND else "",
        total_fen=original.amount_fen,
    )
    return await gateway.call(REFUND if kind == REFUND_KIND else CANCEL, ref, deadline)


async def record(
    journal: Journal, key: TxnKey, rrn: str, kind: str, amount_fen: int, original: Original, result: ChannelResult
) -> tuple[str, str]:
    """Commit a void's or refund's outcome; returns the response code and authorisation id.
    Not final yet: ``09`` (in progress), and the resolver sends the call again."""
    if result.outcome is Outcome.APPROVED:
        state, code, auth_id, release = "APPROVED", rc.APPROVED, auth_id_for(rrn), 0
    elif result.outcome is Outcome.DECLINED:
        state, code, auth_id = "DECLINED", result.response_code, ""
        release = reserved_fen(kind, amount_fen, original)
    else:
        state, code, auth_id, release = "UNKNOWN", rc.IN_PROGRESS, "", 0
    still_open = state == "UNKNOWN"
    update = FinalUpdate(
        *key,
        state,
        code,
        auth_id,
        result.channel_code,
        result.channel_message[:200],
        result.channel_txn_id,
        dt.datetime.now(dt.UTC) + dt.timedelta(seconds=RETRY_S) if still_open else None,
    )
    await journal.settle_undo(update, original.key, release, voided=kind == VOID and state == "APPROVED")
    return code, auth_id
