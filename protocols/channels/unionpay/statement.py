"""A UnionPay-style acp settlement file (the simulator's documented stand-in for the ZM file):
fixed-width lines, CRLF, GBK-safe ASCII. Columns, in order:

| columns | width | content |
| --- | --- | --- |
| transaction code | 3 | ``S22`` consumption, ``S31`` consumption undone (money back whole), ``S04`` refund |
| order id | 32 | ``orderId``, left-justified (a refund's own order id, its refund number) |
| query id | 24 | UnionPay's ``queryId`` of the consumption |
| time | 14 | ``txnTime`` YYYYMMDDhhmmss, Beijing time |
| amount | 12 | fen, zero-padded |
| fee | 13 | fen, a sign (``+`` kept, ``-`` returned) then 12 digits |
| original order id | 32 | a refund's consumption ``orderId``; blank otherwise |

The last line is ``TOTAL`` + the row count (10 digits) + the consumption total in fen (15 digits).
"""

from __future__ import annotations

from protocols.statements import CST, PAID, PAY, REFUND, REVOKED, StatementError, StatementRow, digits_time

_WIDTHS = (3, 32, 24, 14, 12, 13, 32)
_LINE = sum(_WIDTHS)
_CODES = {"S22": (PAY, PAID), "S31": (PAY, REVOKED), "S04": (REFUND, PAID)}
_CODE_OF = {value: code for code, value in _CODES.items()}


def write(rows: list[StatementRow]) -> bytes:
    lines = []
    for row in rows:
        is_refund = row.entry == REFUND
        fields = (
            _CODE_OF[(row.entry, row.status)],
            (row.refund_no if is_refund else row.out_trade_no).ljust(32),
            row.channel_txn_id.ljust(24),
            row.at.astimezone(CST).strftime("%Y%m%d%H%M%S"),
            f"{row.amount_fen:012d}",
            ("-" if row.fee_fen < 0 else "+") + f"{abs(row.fee_fen):012d}",
            (row.out_trade_no if is_refund else "").ljust(32),
        )
        if any(len(f) != w for f, w in zip(fields, _WIDTHS, strict=True)):
            raise ValueError(f"a value of order {row.out_trade_no!r} does not fit its column")
        lines.append("".join(fields))
    paid = sum(r.amount_fen for r in rows if r.entry == PAY)
    lines.append(f"TOTAL{len(rows):010d}{paid:015d}")
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def parse(data: bytes) -> list[StatementRow]:
    try:
        lines = data.decode("ascii").split("\r\n")
    except UnicodeDecodeError:
        raise StatementError(1, "not ASCII") from None
    if lines and lines[-1] == "":
        lines.pop()
    if not lines or not lines[-1].startswith("TOTAL") or len(lines[-1]) != 30:
        raise StatementError(len(lines), "no TOTAL line")
    rows = [_row(line, n) for n, line in enumerate(lines[:-1], start=1)]
    count, paid = int(lines[-1][5:15]), int(lines[-1][15:30])
    if count != len(rows) or paid != sum(r.amount_fen for r in rows if r.entry == PAY):
        raise StatementError(len(lines), "TOTAL line differs from the rows")
    return rows


def _row(line: str, n: int) -> StatementRow:
    if len(line) != _LINE:
        raise StatementError(n, f"{len(line)} characters, not {_LINE}")
    fields, at = [], 0
    for width in _WIDTHS:
        fields.append(line[at : at + width])
        at += width
    code, order, query_id, when, amount, fee, original = fields
    if code not in _CODES or not amount.isdigit() or fee[0] not in "+-" or not fee[1:].isdigit():
        raise StatementError(n, "bad transaction code, amount or fee")
    try:
        at_time = digits_time(when)
    except ValueError:
        raise StatementError(n, f"bad time {when!r}") from None
    entry, status = _CODES[code]
    is_refund = entry == REFUND
    return StatementRow(
        entry=entry,
        out_trade_no=(original if is_refund else order).strip(),
        channel_txn_id=query_id.strip(),
        amount_fen=int(amount),
        status=status,
        at=at_time,
        refund_no=order.strip() if is_refund else "",
        fee_fen=int(fee[1:]) * (-1 if fee[0] == "-" else 1),
    )
