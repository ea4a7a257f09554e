"""Merchant settlement (``paysw settle --date D``): what the bank pays each merchant for each
channel, from reconciled transactions only, each settled once.

- What is settled on day D: the transactions of T+1 merchants from batches of D-1 and before,
  and of D0 merchants from batches of D and before, that reconciliation matched, or whose
  difference was fixed or resolved with the journal now showing the money kept (a refund: done),
  and that no earlier settlement took. Differences still open carry to a later day.
- Fees: the merchant's rate for the channel (``fee_per_10000``), on each payment, rounded half up
  to the fen; a refund gives back the fee on the refunded amount, rounded the same way.
- Clawbacks: a payment settled whose money went back since (the journal has it voided, or
  reversed at the channel) is taken back by the next settlement, once, with the fee it was
  charged; it has no entry of its own on a channel's statement (the order is shown revoked).
- Each run reads what came since the last (the batches it has not settled whole, the differences
  decided, the moves after its snapshot), so its time follows the day's traffic, not the days
  settled before it. A day before the newest settled was paid: it is only read again.
- Net = gross - refunds - clawbacks - fees. The totals check: for each channel, the merchants'
  nets plus fees equal what the channel's statements settle for the same transactions, to the fen.
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
from switch.journal.machine import GONE_BACK, KEPT, PURCHASE, sql_set

CLAWBACK = "CLAWBACK"  # settlement_item.entry of a payment taken back

# What a settlement looks at: the batches it has not settled whole (``recon_batch.settled_at``),
# the items a rule or a person decided (the differences, few), and the moves after the snapshot
# its last run took (``settlement_mark``). Its time follows what came since, not the history.
_SNAPSHOT = "SELECT pg_snapshot_xmax(s), array(SELECT pg_snapshot_xip(s)) FROM pg_current_snapshot() s"
_DUE = "CASE WHEN i.merchant_id = ANY($2::text[]) THEN $1::date ELSE $1::date - 1 END"  # D0, T+1
# A batch's journal rows are of its window's days and one either side (``ReconBatch._extract``);
# these many more either side bound the days a settlement reads for them.
_DAYS_AROUND = dt.timedelta(days=3)

_SETTLE = f"""
WITH rates (merchant_id, channel, fee_per_10000) AS (SELECT * FROM unnest($3::text[], $4::text[], $5::int[])),
candidates AS (  -- one item an order or refund: the statement's side first (its amount), if two were fixed
    SELECT DISTINCT ON (i.entry, i.out_trade_no) i.entry, i.out_trade_no, i.channel, i.merchant_id, i.amount_fen,
           i.channel_fen
    FROM (
        SELECT i.id, i.entry, i.out_trade_no, i.class, i.status, i.channel_fen, b.channel, b.day, t.merchant_id,
               t.amount_fen, t.state, t.reversal_requested_at
        FROM recon_batch b JOIN recon_item i ON i.batch_id = b.id
        -- The days its batches read ($7, $8: theirs and a few either side), not every day kept.
        JOIN txn t ON t.rrn = i.rrn AND t.out_trade_no = i.out_trade_no AND t.tx_date BETWEEN $7 AND $8
        WHERE b.id = ANY($6::bigint[])
        UNION ALL  -- decided by a rule or a person (after its batch was settled whole, or adopting the
        -- journal's row of another day, outside its batch's days): few, so any day's
        SELECT i.id, i.entry, i.out_trade_no, i.class, i.status, i.channel_fen, b.channel, b.day, t.merchant_id,
               t.amount_fen, t.state, t.reversal_requested_at
        FROM recon_item i JOIN recon_batch b ON b.id = i.batch_id
        JOIN txn t ON t.rrn = i.rrn AND t.out_trade_no = i.out_trade_no
        WHERE i.status IN ('FIXED', 'RESOLVED') AND b.step = 'done'  -- (an item in both is one: DISTINCT ON)
    ) i
    WHERE i.day <= {_DUE}
      AND (i.class = 'MATCHED' OR i.status IN ('FIXED', 'RESOLVED'))
      AND i.state IN {sql_set(KEPT)} AND i.reversal_requested_at IS NULL  -- money kept (no reversal owed)
      AND NOT EXISTS (SELECT 1 FROM settlement_item s WHERE s.entry = i.entry AND s.out_trade_no = i.out_trade_no)
    ORDER BY i.entry, i.out_trade_no, i.channel_fen IS NULL, i.id
)
INSERT INTO settlement_item (entry, out_trade_no, settled_on, merchant_id, channel, amount_fen, channel_fen, fee_fen)
SELECT c.entry, c.out_trade_no, $1, c.merchant_id, c.channel, c.amount_fen, c.channel_fen,
       (CASE WHEN c.entry = 'PAY' THEN 1 ELSE -1 END) * ((c.amount_fen * coalesce(r.fee_per_10000, 0) + 5000) / 10000)
FROM candidates c LEFT JOIN rates r ON r.merchant_id = c.merchant_id AND r.channel = c.channel
ON CONFLICT DO NOTHING
"""
_RUN_LOCK = 0x736C6D74  # "slmt"
# The last run's mark, and whether it is this database's: a snapshot never ahead of the present.
_LAST_RUN = (
    "SELECT day, seen_below, unseen, seen_below <= pg_snapshot_xmax(pg_current_snapshot()) AS ours FROM settlement_mark"
)
_MARK = (
    "INSERT INTO settlement_mark (day, seen_below, unseen) VALUES ($1, $2, $3) ON CONFLICT (one) DO UPDATE "
    "SET day = excluded.day, seen_below = excluded.seen_below, unseen = excluded.unseen, at = now()"
)
# The batches a run looks at whole: finished, due for a merchant, not settled whole yet (locked: a
# batch run afresh meanwhile is deleted and made again, and looked at by the next run).
_UNSETTLED = "SELECT id, day FROM recon_batch WHERE settled_at IS NULL AND step = 'done' AND day <= $1 FOR UPDATE"
# One due for every merchant (T+1's day passed) is settled whole once looked at: what of it was not
# settled then never will be from it (money not kept; a difference, which comes back decided).
_SETTLED_WHOLE = "UPDATE recon_batch SET settled_at = now() WHERE id = ANY($1::bigint[])"

# A payment settled whose money went back since (a void, a reversal, a cancel after the statement
# the settlement read listed it paid; a D0 merchant's is settled within the hour): taken back
# whole, with the fee it was charged, by the settlement that finds it so, and only once. Found by
# the moves since the last run's snapshot ($2, $3: the transactions it did not see), or, with no
# run before, by every payment settled.
_CLAWBACK_ROWS = f"""
INSERT INTO settlement_item (entry, out_trade_no, settled_on, merchant_id, channel, amount_fen, channel_fen, fee_fen)
SELECT '{CLAWBACK}', s.out_trade_no, $1, s.merchant_id, s.channel, s.amount_fen, s.channel_fen, -s.fee_fen
"""
_CLAW_BACK_SINCE = f"""{_CLAWBACK_ROWS}
FROM txn_move m
JOIN txn t ON t.tx_date = m.tx_date AND t.rrn = m.rrn AND t.txn_type = '{PURCHASE}'
JOIN settlement_item s ON s.entry = 'PAY' AND s.out_trade_no = t.out_trade_no
WHERE (m.xid >= $2::xid8 OR m.xid = ANY($3::xid8[])) AND m.to_state IN {sql_set(GONE_BACK)}
  AND t.refunded_fen = 0  -- (a void or reversal takes a purchase untouched: never its refunds twice)
ON CONFLICT DO NOTHING
"""
_CLAW_BACK_ALL = f"""{_CLAWBACK_ROWS}
FROM settlement_item s
JOIN txn t ON t.out_trade_no = s.out_trade_no AND t.txn_type = '{PURCHASE}'
WHERE s.entry = 'PAY' AND t.state IN {sql_set(GONE_BACK)} AND t.refunded_fen = 0
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
    """Settle ``day`` (again: the newest day settled gets what became settleable since, and its
    report covers everything settled on it). A day before the newest settled was paid: it is only
    read, as its file had it."""
    d0 = [m.id for m in config.merchants if m.settlement == "D0"]
    rates = [(m.id, channel, fee) for m in config.merchants for channel, fee in m.fee_per_10000.items()]
    async with pool.acquire() as conn, conn.transaction():
        # Each run's statements planned for its own arguments: a generic plan cannot see that the
        # moves since the mark are a day's, not the history's (as risk.actor.follow_connection).
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _RUN_LOCK)  # one run at a time
        last = await conn.fetchrow(_LAST_RUN)
        if last and day < last["day"]:
            return await settled(conn, config, day)
        mark = await conn.fetchrow(_SNAPSHOT)  # before anything is read: what came after is the next run's
        batches = await conn.fetch(_UNSETTLED, day)
        ids, days = [b["id"] for b in batches], [b["day"] for b in batches] or [day]
        read = (min(days) - _DAYS_AROUND, max(days) + _DAYS_AROUND)
        fees = [r[0] for r in rates], [r[1] for r in rates], [r[2] for r in rates]
        await conn.execute(_SETTLE, day, d0, *fees, ids, *read)
        await conn.execute(_SETTLED_WHOLE, [b["id"] for b in batches if b["day"] < day])
        if last and last["ours"]:
            await conn.execute(_CLAW_BACK_SINCE, day, last["seen_below"], last["unseen"])
        else:  # the first run, or a mark another database's (a journal moved to a new cluster counts afresh)
            await conn.execute(_CLAW_BACK_ALL, day)
        await conn.execute(_MARK, day, *mark)
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
    # (clawbacks_fen came later: last, so that a reader by position reads the others where they were)
    writer.writerow(
        ["merchant", "channel", "cycle", "payments", "gross_fen", "refunds_fen", "fees_fen", "net_fen", "clawbacks_fen"]
    )
    for line in settlement.lines:
        writer.writerow([
            line.merchant_id, line.channel, line.cycle, line.payments, line.gross, line.refunds, line.fees, line.net,
            line.clawbacks,
        ])  # fmt: skip
    mismatches = settlement.mismatches()
    for channel, settles in sorted(settlement.channel_settles.items()):
        ours = sum(line.net + line.fees for line in settlement.lines if line.channel == channel)
        verdict = "MISMATCH" if channel in mismatches else "OK"
        writer.writerow(["TOTAL", channel, "", "", "", "", "nets+fees", ours, "channel", settles, verdict])
    return out.getvalue()
