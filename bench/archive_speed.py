"""``paysw bench archive``: retention of a day of N purchases (``switch.journal.archive``) beside a
switch's writes, against the same writes alone in the same run.

On a fresh embedded PostgreSQL (or ``SWITCH_DATABASE_URL``, empty), a day older than the journal
keeps is written as it ended (approved, its moves and settlement beside it, in bulk: the
journal's triggers off meanwhile, as ``bench.recon_bench`` writes its day). Writers then write
today's purchases ahead and record them (``Journal``, paced), first alone, then while that day is
archived, then dropped, then restored. Reported: each step's time and the folder's size, and the
writers' write-ahead latency in each window (p50, p99, max) as ratios to the window alone. The
switch's writes never wait on a lock of the retention's (its detach waits for them, not they for
it): what is left is the CPU the commands (each a process of its own, as an operator runs them:
``paysw journal archive``, then with ``--drop``, then ``restore``) take beside them on this machine.

    flock /tmp/paysw-bench.lock python -m bench.archive_speed --rows 200000 --out bench/results/archive.json
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

import asyncpg

from bench.provenance import provenance
from bench.recon_bench import TXN_COLUMNS
from bench.scratch import scratch_database
from switch.journal import Event, Journal, NewTxn, Report
from switch.journal import archive as retention
from switch.journal.roles import OWNER_URL_ENV
from switch.journal.schema import migrate

RATE, WRITERS = 200, 8  # today's purchases a second, and at once


async def _old_day(conn: asyncpg.Connection, day: dt.date, rows: int) -> None:
    """``rows`` purchases of ``day``, approved and settled, with their two moves each."""
    at = dt.datetime.combine(day, dt.time(12), dt.UTC)
    txns = [
        (day, f"T{n // 1_000_000:07d}", f"{n % 1_000_000:06d}", f"{day:%m%d}120000", f"A{n:011d}", "purchase", "0200",
         "000000", "898310048990001", 100 + n % 50_000, "156", "120000", f"{day:%m%d}", "031", "622202******1234",
         b"p" * 32, ("wechat", "alipay", "unionpay", "ecny", "inbank")[n % 5], f"{day:%Y%m%d}A{n:011d}", b"r" * 32,
         "APPROVED", at)
        for n in range(rows)
    ]  # fmt: skip
    moves = [
        (day, f"A{n:011d}", frm, to, at)
        for n in range(rows)
        for frm, to in ((None, "RECEIVED"), ("RECEIVED", "APPROVED"))
    ]
    async with conn.transaction():
        for table in ("txn", "txn_move"):
            await conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        await conn.copy_records_to_table("txn", records=txns, columns=TXN_COLUMNS)
        await conn.copy_records_to_table(
            "txn_move", records=moves, columns=("tx_date", "rrn", "from_state", "to_state", "moved_at")
        )
        for table in ("txn", "txn_move"):
            await conn.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")
        await conn.execute(
            "INSERT INTO settlement_item (entry, out_trade_no, settled_on, merchant_id, channel, amount_fen, fee_fen) "
            "SELECT 'PAY', out_trade_no, tx_date + 1, merchant_id, channel, amount_fen, 0 FROM txn WHERE tx_date = $1",
            day,
        )
    await conn.execute("ANALYZE txn, txn_move, settlement_item")


class Writers:
    """Today's purchases written ahead and recorded at ``RATE`` a second, ``WRITERS`` at once; the
    write-ahead's latency of each, by the window it began in."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.window = "alone"
        self.latencies: dict[str, list[float]] = {}
        self._keys = itertools.count(1)
        self._stop = asyncio.Event()

    def _purchase(self) -> NewTxn:
        n, now = next(self._keys), dt.datetime.now(dt.UTC)
        today, rrn = now.date(), f"B{next(self._keys):011d}"
        return NewTxn(
            today, f"W{n // 100_000:07d}", f"{n % 100_000:06d}", f"{today:%m%d}120000", rrn, "purchase", "0200",
            "000000", "898310048990001", 100, "156", "120000", f"{today:%m%d}", "031", "622202******1234",
            b"p" * 32, "wechat", f"{today:%Y%m%d}{rrn}", b"r" * 32, now, now + dt.timedelta(seconds=60),
        )  # fmt: skip

    async def _one(self, slots: asyncio.Semaphore) -> None:
        async with slots:
            txn, window = self._purchase(), self.window
            started = time.perf_counter()
            await self.journal.write_ahead(txn)
            self.latencies.setdefault(window, []).append(time.perf_counter() - started)
            await self.journal.record(Report(*txn.key, Event.ACCEPTED, "00", "123456", "SUCCESS", "OK", "", None))

    async def run(self) -> None:
        slots, tasks = asyncio.Semaphore(WRITERS), set()
        while not self._stop.is_set():
            task = asyncio.ensure_future(self._one(slots))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            await asyncio.sleep(1 / RATE)
        await asyncio.gather(*tasks)

    def stop(self) -> None:
        self._stop.set()


async def _paysw_journal(url: str, command: list[str]) -> None:
    """``paysw journal COMMAND`` as the journal's owner; its output shown, a failure raised."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "switch.cli", "journal", *command, env={**os.environ, OWNER_URL_ENV: url},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    said, _ = await process.communicate()
    print("  " + said.decode().strip().replace("\n", "\n  "), flush=True)
    if process.returncode:
        raise RuntimeError(f"paysw journal {' '.join(command)}: exit status {process.returncode}")


def _figures(latencies: list[float]) -> dict[str, float]:
    ms = sorted(x * 1000 for x in latencies)
    return {
        "writes": len(ms),
        "p50_ms": round(statistics.median(ms), 2),
        "p99_ms": round(ms[int(len(ms) * 0.99) - 1], 2),
        "max_ms": round(ms[-1], 2),
    }


async def measure(url: str, rows: int, folder: Path, alone_s: float) -> dict:
    conn = await asyncpg.connect(url, command_timeout=3600)
    try:
        await migrate(conn)
        if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM txn)"):  # its drop would take a real journal's days
            raise SystemExit(
                "paysw bench archive: SWITCH_DATABASE_URL names a journal with transactions: give it an empty one"
            )
        day = await conn.fetchval("SELECT current_date") - dt.timedelta(days=retention.KEEP_DAYS + 100)
        await conn.fetch("SELECT journal_make_days($1, $1)", day)
        started = time.perf_counter()
        await _old_day(conn, day, rows)
        print(f"{rows:,} purchases of {day} written in {time.perf_counter() - started:.1f}s", flush=True)
        journal = await Journal.open(url, pool_size=4, max_batch=64)
        writers = Writers(journal)
        running = asyncio.ensure_future(writers.run())
        steps: dict[str, float] = {}
        try:
            await asyncio.sleep(alone_s)
            # The commands as the owner runs them, each a process of its own beside the writers' (in
            # theirs, its copy's gzip and hashes would hold up their event loop).
            folder_of_day = retention.folder_of(folder, day)
            for step, command in (
                ("archive", ["archive", "--to", str(folder), "--before", str(day + dt.timedelta(days=1))]),
                ("drop", ["archive", "--to", str(folder), "--before", str(day + dt.timedelta(days=1)), "--drop"]),
                ("restore", ["restore", str(folder_of_day)]),
            ):
                writers.window = step
                started = time.perf_counter()
                await _paysw_journal(url, command)
                steps[f"{step}_s"] = round(time.perf_counter() - started, 2)
                print(f"{step}: {steps[f'{step}_s']}s", flush=True)
            writers.window = "after"
            await asyncio.sleep(1)
        finally:
            writers.stop()
            await running
            await journal.close()
        size = sum(f.stat().st_size for f in folder_of_day.iterdir())
        back = await conn.fetchval("SELECT count(*) FROM txn WHERE tx_date = $1", day)
    finally:
        await conn.close()
    alone = _figures(writers.latencies["alone"])
    windows = {
        w: _figures(writers.latencies[w]) for w in ("alone", "archive", "drop", "restore") if w in writers.latencies
    }
    return {
        **provenance(),
        "rows": rows,
        "every_row_back": back == rows,  # after the restore
        "folder_bytes": size,
        **steps,
        "write_ahead": windows,
        "ratio_to_alone": {
            w: {k: round(v[k] / alone[k], 2) for k in ("p50_ms", "p99_ms", "max_ms")} for w, v in windows.items()
        },
        "writers": {"rate": RATE, "at_once": WRITERS},
    }


def main(rows: int, out: Path | None, alone_s: float = 10.0) -> int:
    with scratch_database("paysw-archive-bench-") as (url, scratch):
        folder = scratch / "archive"
        folder.mkdir()
        result = asyncio.run(measure(url, rows, folder, alone_s))
    print(json.dumps(result, indent=2))
    if out is not None:
        out.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["every_row_back"] else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="purchases in the day (default 200,000)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parsed = parser.parse_args()
    raise SystemExit(main(parsed.rows, parsed.out))
