"""Merchant settlement (``paysw settle --date D``): what the bank pays each merchant for each
channel, from reconciled transactions only, each settled once.

- What is settled on day D: the transactions of T+1 merchants from batches of D-1 and before,
  and of D0 merchants from batches of D and before, that reconciliation matched, or whose
  difference was fixed or resolved with the journal now showing the money kept (a refund: done),
  and that no earlier settlement took. Differences still open carry to a later day.
- Fees: the merchant's rate for the channel (``fee_per_10000``), on each payment, rounded half up
  to the fen; a refund gives back the fee on the refunded amount, rounded the same way.
- Clawbacks: a payment settled whose money went back since (the journal has it voided, reversed
  or cancelled at the channel) is taken back on the next settlement, once, with the fee it was
  charged; it has no entry of its own on a channel's statement (the order is shown revoked).
- Net = gross - refunds - clawbacks - fees. The totals check: for each channel, the merchants' nets plus
  fees equal what the channel's statements settle for the same transactions, to the fen.
- The day's file: ``settlement-D.csv`` (one line per merchant, channel and cycle, then one TOTAL
  line per channel with the check).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from switch.config import Config
from switch.journal.machine import FINAL, KEPT, PURCHASE, sql_set

CLAWBACK = "CLAWBACK"  # settlement_item.entry of a payment taken back
GONE_BACK = FINAL - KEPT  # a purchase's money went back to the payer (or never came)

_SETTLE = f"""
WITH rates (merchant_id, channel, fee_per_10000) AS (SELECT * FROM unnest($3::text[], $4::text[], $5::int[])),
candidates AS (  -- one item an order or refund: the statement's side first (its amount), if two were fixed
    SELECT DISTINCT ON (i.entry, i.out_trade_no) i.entry, i.out_trade_no, b.channel, t.merchant_id, t.amount_fen,
           i.channel_fen
    FROM recon_item i
    JOIN recon_batch b ON b.id = i.batch_id AND b.step = 'done'
    JOIN txn t ON t.rrn = i.rrn AND t.out_trade_no = i.out_trade_no
    WHERE b.day <= CASE WHEN t.merchant_id = ANY($2::text[]) THEN $1::date ELSE $1::date - 1 END
      AND (i.class = 'MATCHED' OR i.status IN ('FIXED', 'RESOLVED'))
      AND t.state IN {sql_set(KEPT)} AND t.reversal_requested_at IS NULL  -- money kept (no reversal owed)
      AND NOT EXISTS (SELECT 1 FROM settlement_item s WHERE s.entry = i.entry AND s.out_trade_no = i.out_trade_no)
    ORDER BY i.entry, i.out_trade_no, i.channel_fen IS NULL, i.id
)
INSERT INTO settlement_item (entry, out_trade_no, settled_on, merchant_id, channel, amount_fen, channel_fen, fee_fen)
SELECT c.entry, c.out_trade_no, $1, c.merchant_id, c.channel, c.amount_fen, c.channel_fen,
       (CASE WHEN c.entry = 'PAY' THEN 1 ELSE -1 END) * ((c.amount_fen * coalesce(r.fee_per_10000, 0) + 5000) / 10000)
FROM candidates c LEFT JOIN rates r ON r.merchant_id = c.merchant_id AND r.channel = c.channel
ON CONFLICT DO NOTHING
"""

# A payment settled whose money went back since (a void, a reversal, a cancel after the statement
# the settlement read listed it paid; a D0 merchant's is settled within the hour): taken back
# whole, with the fee it was charged, by the settlement that finds it so, and only once.
_CLAW_BACK = f"""
INSERT INTO settlement_item (entry, out_trade_no, settled_on, merchant_id, channel, amount_fen, channel_fen, fee_fen)
SELECT '{CLAWBACK}', s.out_trade_no, $1, s.merchant_id, s.channel, s.amount_fen, s.channel_fen, -s.fee_fen
FROM settlement_item s
JOIN txn t ON t.out_trade_no = s.out_trade_no AND t.txn_type = '{PURCHASE}'
WHERE s.entry = 'PAY' AND s.settled_on <= $1 AND t.state IN {sql_set(GONE_BACK)}
ON CONFLICT DO NOTHING
"""

# What a merchant's line sums (the file's, and the console's by day).
LINE_SUMS = f"""
       count(*) FILTER (WHERE entry = 'PAY') AS payments,
       coalesce(sum(amount_fen) FILTER (WHERE entry = 'PAY'), 0)::bigint AS gross,
       coalesce(sum(amount_fen) FILTER (WHERE entry = 'REFUND'), 0)::bigint AS refunds,
       coalesce(sum(amount_fen) FILTER (WHERE entry = '{CLAWBACK}'), 0)::bigint AS clawbacks,
       coalesce(sum(fee_fen), 0)::bigint AS fees"""

_LINES = f"""
SELECT merchant_id, channel, {LINE_SUMS},
       coalesce(sum(CASE WHEN entry = 'PAY' THEN coalesce(channel_fen, amount_fen)
                         ELSE -coalesce(channel_fen, amount_fen) END), 0)::bigint AS channel_settles
FROM settlement_item WHERE settled_on = $1 GROUP BY merchant_id, channel ORDER BY merchant_id, channel
"""


@dataclass(frozen=True, slots=True)
class Line:
    merchant_id: str
    channel: str
    cycle: str
    payments: int
    gross: int
    refunds: int
    clawbacks: int
    fees: int

    @property
    def net(self) -> int:
        return self.gross - self.refunds - self.clawbacks - self.fees


@dataclass(frozen=True, slots=True)
class Settlement:
    day: dt.date
    lines: list[Line]
    channel_settles: dict[str, int]  # per channel, from the statements' amounts

    def mismatches(self) -> dict[str, tuple[int, int]]:
        """Channels whose merchants' nets plus fees differ from what the channel settles."""
        out = {}
        for channel, settles in self.channel_settles.items():
            ours = sum(line.net + line.fees for line in self.lines if line.channel == channel)
            if ours != settles:
                out[channel] = (ours, settles)
        return out


async def settle(pool: asyncpg.Pool, config: Config, day: dt.date) -> Settlement:
    """Settle ``day`` (again: a day already settled gets what became settleable since, and its
    report covers everything settled on it)."""
    d0 = [m.id for m in config.merchants if m.settlement == "D0"]
    rates = [(m.id, channel, fee) for m in config.merchants for channel, fee in m.fee_per_10000.items()]
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_SETTLE, day, d0, [r[0] for r in rates], [r[1] for r in rates], [r[2] for r in rates])
        await conn.execute(_CLAW_BACK, day)
        return await settled(conn, config, day)


async def settled(conn: asyncpg.Connection | asyncpg.Pool, config: Config, day: dt.date) -> Settlement:
    """What was settled on ``day``, as its file has it (reads only: the console's download)."""
    rows = await conn.fetch(_LINES, day)
    cycles = {m.id: m.settlement for m in config.merchants}
    lines = [
        Line(
            r["merchant_id"],
            r["channel"],
            cycles.get(r["merchant_id"], "T1"),
            r["payments"],
            r["gross"],
            r["refunds"],
            r["clawbacks"],
            r["fees"],
        )
        for r in rows
    ]
    settles: dict[str, int] = {}
    for r in rows:
        settles[r["channel"]] = settles.get(r["channel"], 0) + r["channel_settles"]
    return Settlement(day, lines, settles)


def file_name(day: dt.date) -> str:
    return f"settlement-{day}.csv"


def write_file(settlement: Settlement, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / file_name(settlement.day)
    with open(path, "w", newline="") as out:
        out.write(csv_text(settlement))
    return path


def csv_text(settlement: Settlement) -> str:
    """The day's file: one line per merchant, channel and cycle, then one TOTAL line per channel."""
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(
        ["merchant", "channel", "cycle", "payments", "gross_fen", "refunds_fen", "clawbacks_fen", "fees_fen", "net_fen"]
    )
    for line in settlement.lines:
        writer.writerow([
            line.merchant_id, line.channel, line.cycle, line.payments, line.gross, line.refunds, line.clawbacks,
            line.fees, line.net,
        ])  # fmt: skip
    mismatches = settlement.mismatches()
    for channel, settles in sorted(settlement.channel_settles.items()):
        ours = sum(line.net + line.fees for line in settlement.lines if line.channel == channel)
        verdict = "MISMATCH" if channel in mismatches else "OK"
        writer.writerow(["TOTAL", channel, "", "", "", "", "nets+fees", ours, "channel", settles, verdict])
    return out.getvalue()
