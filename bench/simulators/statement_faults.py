"""Discrepancies a simulator writes into its statements on demand (``POST /_sim/statement-faults``),
so that reconciliation meets every class of difference in tests: rows left out, orders only the
channel has, amounts and statuses that differ from its own ledger."""

from __future__ import annotations

import datetime as dt

import msgspec

from protocols.statements import CST, PAID, PAY, StatementRow


class StatementFaults(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    drop: list[str] = []  # order numbers (or refund numbers) whose rows are left out
    extra: dict[str, int] = {}  # order number -> fen: paid orders only the channel has
    amounts: dict[str, int] = {}  # order number -> the fen its PAY row shows instead
    statuses: dict[str, str] = {}  # order number (refund number) -> the status its PAY (REFUND) row shows instead


NO_STATEMENT_FAULTS = StatementFaults()
STATEMENT_FAULTS_DECODER = msgspec.json.Decoder(StatementFaults)


def spoil(rows: list[StatementRow], faults: StatementFaults, day: dt.date) -> list[StatementRow]:
    out = []
    for row in rows:
        if row.out_trade_no in faults.drop or (row.refund_no and row.refund_no in faults.drop):
            continue
        if row.entry == PAY:
            row = msgspec.structs.replace(
                row,
                amount_fen=faults.amounts.get(row.out_trade_no, row.amount_fen),
                status=faults.statuses.get(row.out_trade_no, row.status),
            )
        else:
            row = msgspec.structs.replace(row, status=faults.statuses.get(row.refund_no, row.status))
        out.append(row)
    noon = dt.datetime.combine(day, dt.time(12), CST)
    for number, (out_trade_no, amount) in enumerate(sorted(faults.extra.items())):
        out.append(
            StatementRow(
                entry=PAY,
                out_trade_no=out_trade_no,
                channel_txn_id=f"EXTRA{number:010d}",
                amount_fen=amount,
                status=PAID,
                at=noon,
            )
        )
    return out
