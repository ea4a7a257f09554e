"""Lake Pay's statement: one JSON object a line, amounts in fen, times in UTC ISO 8601."""

from __future__ import annotations

import datetime as dt

import msgspec

from protocols.statements import PAID, PAY, REFUND, REVOKED, StatementError, StatementRow

_ENTRIES = {"charge": PAY, "refund": REFUND}
_STATUSES = {"succeeded": PAID, "reversed": REVOKED}


class Line(msgspec.Struct, forbid_unknown_fields=True):
    type: str  # charge or refund
    reference: str
    lake_id: str
    amount: int
    status: str  # succeeded or reversed
    at: dt.datetime
    fee: int = 0
    refund_reference: str = ""


def write(rows: list[StatementRow]) -> bytes:
    entry_name = {v: k for k, v in _ENTRIES.items()}
    status_name = {v: k for k, v in _STATUSES.items()}
    return b"".join(
        msgspec.json.encode(
            Line(
                entry_name[r.entry],
                r.out_trade_no,
                r.channel_txn_id,
                r.amount_fen,
                status_name[r.status],
                r.at.astimezone(dt.UTC),
                r.fee_fen,
                r.refund_no,
            )
        )
        + b"\n"
        for r in rows
    )


def parse(data: bytes) -> list[StatementRow]:
    rows = []
    for n, text in enumerate(data.splitlines(), start=1):
        try:
            line = msgspec.json.decode(text, type=Line)
        except msgspec.DecodeError as exc:
            raise StatementError(n, str(exc)) from None
        if line.type not in _ENTRIES or line.status not in _STATUSES:
            raise StatementError(n, f"unknown type or status: {line.type!r} {line.status!r}")
        rows.append(
            StatementRow(
                entry=_ENTRIES[line.type],
                out_trade_no=line.reference,
                channel_txn_id=line.lake_id,
                amount_fen=line.amount,
                status=_STATUSES[line.status],
                at=line.at,
                refund_no=line.refund_reference,
                fee_fen=line.fee,
            )
        )
    return rows
