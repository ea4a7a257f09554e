"""The bank-operated channels' statement (e-CNY, in-bank code): UTF-8 CSV with a header, one row
per payment and per refund (amounts in fen), and a trailer ``TOTAL,<rows>,<paid fen>,<refunded
fen>`` that must agree with the rows."""

from __future__ import annotations

import csv
import io

from protocols.statements import (
    PAID,
    PAY,
    REFUND,
    REVOKED,
    StatementError,
    StatementRow,
    cst_time,
    time_text,
)

HEADER = ["trade_time", "out_trade_no", "trade_no", "type", "status", "amount_fen", "fee_fen", "refund_no"]


def write(rows: list[StatementRow]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    for r in rows:
        writer.writerow(
            [time_text(r.at), r.out_trade_no, r.channel_txn_id, r.entry, r.status, r.amount_fen, r.fee_fen, r.refund_no]
        )
    paid = sum(r.amount_fen for r in rows if r.entry == PAY)
    refunded = sum(r.amount_fen for r in rows if r.entry == REFUND)
    writer.writerow(["TOTAL", len(rows), paid, refunded])
    return out.getvalue().encode("utf-8")


def parse(data: bytes) -> list[StatementRow]:
    try:
        lines = list(csv.reader(io.StringIO(data.decode("utf-8"))))
    except UnicodeDecodeError:
        raise StatementError(1, "not UTF-8") from None
    if not lines or lines[0] != HEADER:
        raise StatementError(1, "not the bank statement header")
    if len(lines) < 2 or lines[-1][:1] != ["TOTAL"] or len(lines[-1]) != 4:
        raise StatementError(len(lines), "no TOTAL trailer")
    rows = [_row(values, n) for n, values in enumerate(lines[1:-1], start=2)]
    try:
        count, paid, refunded = (int(v) for v in lines[-1][1:])
    except ValueError:
        raise StatementError(len(lines), "TOTAL trailer is not numbers") from None
    if (count, paid, refunded) != (
        len(rows),
        sum(r.amount_fen for r in rows if r.entry == PAY),
        sum(r.amount_fen for r in rows if r.entry == REFUND),
    ):
        raise StatementError(len(lines), "TOTAL trailer differs from the rows")
    return rows


def _row(values: list[str], line: int) -> StatementRow:
    if len(values) != len(HEADER):
        raise StatementError(line, f"{len(values)} columns, not {len(HEADER)}")
    when, order, trade_no, entry, status, amount, fee, refund_no = values
    if entry not in (PAY, REFUND) or status not in (PAID, REVOKED) or not amount.isdigit():
        raise StatementError(line, "bad type, status or amount")
    try:
        fee_fen = int(fee)
    except ValueError:
        raise StatementError(line, f"bad fee {fee!r}") from None
    return StatementRow(
        entry=entry,
        out_trade_no=order,
        channel_txn_id=trade_no,
        amount_fen=int(amount),
        status=status,
        at=cst_time(when, line),
        refund_no=refund_no,
        fee_fen=fee_fen,
    )
