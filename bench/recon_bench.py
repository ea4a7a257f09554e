"""``paysw bench recon``: one day of N transactions over the five channels (journal rows written in
bulk, statements from the channels' own format writers, with a few discrepancies of every class),
reconciled (the five batches at once) and settled, against a baseline measured in the same run:
simply reading the same journal rows out of PostgreSQL and parsing the same statement files.

The download and the automatic handling's channel calls are left out: they cost network round
trips, not reconciliation work. The database is a fresh embedded PostgreSQL unless
SWITCH_DATABASE_URL names one (it must be empty of this day's rows).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import time
from pathlib import Path

import asyncpg

from bench.demo_config import DEMO_SWITCH_CONFIG
from bench.provenance import provenance
from bench.scratch import scratch_database
from bench.simulators.side import StatementAsk, side_of
from protocols.channels import channel_of
from protocols.statements import CST, PAID, PAY, REFUND, StatementRow, fee_fen
from switch.config import load_config
from switch.journal.schema import ensure_partitions, migrate
from switch.recon.batch import WHOLE_DAY, ReconBatch
from switch.settlement import settle

DAY = dt.date(2026, 1, 15)  # a day of its own, far from any real traffic
CHANNELS = ("wechat", "alipay", "unionpay", "ecny", "inbank")
MERCHANT = "898310048990001"
TXN_COLUMNS = (
    "tx_date", "terminal_id", "stan", "transmitted", "rrn", "txn_type", "mti", "processing_code", "merchant_id",
    "amount_fen", "currency", "local_time", "local_date", "entry_mode", "pan_masked", "pan_hash", "channel",
    "out_trade_no", "request_hash", "state", "received_at",
)  # fmt: skip


def generate(rows: int, seed: int = 8583) -> tuple[list[tuple], dict[str, list[StatementRow]], dict[str, int]]:
    """Journal records and each channel's statement rows for ``rows`` purchases (1 % refunded in
    part), and what reconciliation must find: per class, how many (MATCHED and the discrepancies put in)."""
    rng = random.Random(seed)
    start = dt.datetime.combine(DAY, dt.time(), CST)
    journal: list[tuple] = []
    statements: dict[str, list[StatementRow]] = {c: [] for c in CHANNELS}
    expected = {"MATCHED": 0, "SHORT": 0, "LONG": 0, "AMOUNT": 0, "STATUS": 0, "REFUND": 0}
    for n in range(rows):
        channel = CHANNELS[n % len(CHANNELS)]
        rrn = f"{n:012d}"
        order = f"{DAY:%Y%m%d}{rrn}"
        amount = rng.randrange(100, 500_000)
        at = start + dt.timedelta(seconds=n * 86_399 // rows)
        journal.append(_txn(rrn, order, channel, "purchase", amount, "APPROVED", at))
        row = StatementRow(entry=PAY, out_trade_no=order, channel_txn_id=f"C{rrn}", amount_fen=amount, status=PAID,
                           at=at, fee_fen=fee_fen(amount, 38))  # fmt: skip
        case = n % 1000
        if case == 1:
            expected["SHORT"] += 1
            continue
        if case == 2:
            row = StatementRow(**{**_fields(row), "amount_fen": amount + 1})
            expected["AMOUNT"] += 1
        elif case == 3:
            row = StatementRow(**{**_fields(row), "status": "REVOKED"})
            expected["STATUS"] += 1
        else:
            expected["MATCHED"] += 1
        statements[channel].append(row)
        if case == 4:
            statements[channel].append(StatementRow(**{**_fields(row), "out_trade_no": "LONG" + order}))
            expected["LONG"] += 1
        if n % 100 == 5:  # a partial refund, on both sides unless case 6
            refund_no = f"{DAY:%Y%m%d}R{rrn}"
            journal.append(_txn("R" + rrn[1:], refund_no, channel, "refund", amount // 3, "APPROVED", at))
            if n % 1000 == 105:
                expected["REFUND"] += 1
            else:
                expected["MATCHED"] += 1
                statements[channel].append(StatementRow(entry=REFUND, out_trade_no=order, channel_txn_id=f"C{rrn}",
                                                        amount_fen=amount // 3, status=PAID, at=at, refund_no=refund_no,
                                                        fee_fen=-fee_fen(amount // 3, 38)))  # fmt: skip
    return journal, statements, {cls: n for cls, n in expected.items() if n}  # a summary names only classes found


def _fields(row: StatementRow) -> dict:
    return {f: getattr(row, f) for f in row.__struct_fields__}


def _txn(rrn: str, order: str, channel: str, txn_type: str, amount: int, state: str, at: dt.datetime) -> tuple:
    local = at.astimezone(dt.UTC)
    purchase = txn_type == "purchase"
    return (
        local.date(), "T0000001" if purchase else "R0000001", rrn[-6:], local.strftime("%m%d%H%M%S"), rrn, txn_type,
        "0200", "000000" if purchase else "200000", MERCHANT, amount, "156", local.strftime("%H%M%S"),
        local.strftime("%m%d"), "031", "134567********0000", b"h", channel, order, b"r", state, local,
    )  # fmt: skip


def statement_bytes(channel: str, rows: list[StatementRow]) -> bytes:
    """The day's file as the channel's simulator writes it."""
    return side_of(channel).statement(rows, StatementAsk(DAY, "10000100"))


async def measure(url: str, rows: int) -> dict[str, object]:
    config = load_config(DEMO_SWITCH_CONFIG)
    pool = await asyncpg.create_pool(url, min_size=2, max_size=12, command_timeout=600)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
            await ensure_partitions(conn, DAY - dt.timedelta(days=1), DAY + dt.timedelta(days=1))
        started = time.perf_counter()
        journal, statements, expected = generate(rows)
        files = {c: statement_bytes(c, statements[c]) for c in CHANNELS}
        generated_s = time.perf_counter() - started
        async with pool.acquire() as conn:
            # A day already settled, written as it ended (APPROVED and the rest), not as its moves came:
            # the journal's triggers, which have a row written RECEIVED and then moved, are off meanwhile.
            await conn.execute("ALTER TABLE txn DISABLE TRIGGER USER")
            await conn.copy_records_to_table("txn", records=journal, columns=TXN_COLUMNS)
            await conn.execute("ALTER TABLE txn ENABLE TRIGGER USER")
            await conn.execute("ANALYZE txn")
        print(f"{len(journal):,} journal rows and {sum(len(s) for s in statements.values()):,} statement rows "
              f"written in {time.perf_counter() - started:.1f}s", flush=True)  # fmt: skip

        started = time.perf_counter()
        async with pool.acquire() as conn:
            for channel in CHANNELS:
                await conn.fetch(
                    "SELECT out_trade_no, rrn, txn_type, state, amount_fen FROM txn WHERE channel = $1 AND tx_date "
                    "BETWEEN $2 AND $3", channel, DAY - dt.timedelta(days=1), DAY,
                )  # fmt: skip
        for channel in CHANNELS:
            channel_of(channel).statement.read(files[channel])
        baseline_s = time.perf_counter() - started
        print(f"baseline (read the journal rows, parse the files): {baseline_s:.1f}s", flush=True)

        async def fetch(channel: str, day: dt.date) -> bytes:
            return files[channel]

        started = began = time.perf_counter()

        def progress(channel: str, step: str) -> None:  # each step as it begins
            print(f"  {time.perf_counter() - began:6.1f}s {channel}: {step}", flush=True)

        batches = [ReconBatch(pool, c, c, DAY, WHOLE_DAY, fetch, progress=progress) for c in CHANNELS]
        await asyncio.gather(*(b.run() for b in batches))
        recon_s = time.perf_counter() - started
        found: dict[str, int] = {}
        for batch in batches:
            for cls, figures in (await batch.summary()).items():
                found[cls] = found.get(cls, 0) + figures["count"]
        print(f"reconciled in {recon_s:.1f}s: {found}", flush=True)

        started = time.perf_counter()
        settlement = await settle(pool, config, DAY + dt.timedelta(days=1))
        settle_s = time.perf_counter() - started
        payments = sum(line.payments for line in settlement.lines)
        check = "OK" if not settlement.mismatches() else settlement.mismatches()
        print(f"settled in {settle_s:.1f}s: {payments:,} payments, totals check {check}", flush=True)
        # The next day's, with nothing new to settle: what a run pays for the days settled before it.
        started = time.perf_counter()
        idle = await settle(pool, config, DAY + dt.timedelta(days=2))
        idle_s = time.perf_counter() - started
        if idle.lines:
            raise RuntimeError("the next day settled again what was settled")
        print(f"the next day, nothing new, settled in {idle_s:.2f}s", flush=True)
    finally:
        await pool.close()
    return {
        **provenance(),
        "transactions": rows,
        "generate_s": round(generated_s, 2),
        "baseline_s": round(baseline_s, 2),
        "recon_s": round(recon_s, 2),
        "settle_s": round(settle_s, 2),
        "recon_vs_baseline": round(recon_s / baseline_s, 2),
        "settle_vs_baseline": round(settle_s / baseline_s, 2),
        "settle_nothing_new_s": round(idle_s, 2),
        "settled_payments": payments,
        "injected": {cls: n for cls, n in expected.items() if cls != "MATCHED"},
        "found": found,
        # Exactly: a difference missed, one reported twice or a class made up all fail the run.
        "every_difference_found": found == expected,
        "targets_met": recon_s <= 60 and settle_s <= 30,
    }


def main(rows: int, out: Path | None) -> int:
    with scratch_database("paysw-recon-bench-") as (url, _):
        result = asyncio.run(measure(url, rows))
    print(json.dumps(result, indent=2))
    if out is not None:
        out.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["every_difference_found"] else 1
