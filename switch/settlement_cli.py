"""``paysw settle``: settle a day for every merchant and channel, print the table, write the file."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import asyncpg

from protocols.statements import CST
from switch.cli_support import add_database_arguments, with_database
from switch.config import Config
from switch.journal.schema import migrate
from switch.live import current
from switch.settlement import settle, write_file


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "settle",
        help="settle a day: per merchant and channel, gross, refunds, clawbacks, fees and net",
        description="Settle the reconciled transactions due on DATE (T+1 merchants: batches up to the day "
        "before; D0 merchants: up to DATE), each once; differences still open carry to a later day; a payment "
        "settled whose money went back since (voided, reversed) is clawed back, once. A day before the newest "
        "settled is only read (its file made again); a day after tomorrow is refused. Writes "
        "settlement-DATE.csv and checks, per channel, that the merchants' nets plus fees equal what the "
        "channel settles (exit status 1 when not).",
    )
    add_database_arguments(parser)
    parser.add_argument("--date", required=True, type=dt.date.fromisoformat, help="the settlement day, YYYY-MM-DD")
    parser.add_argument("--out-dir", type=Path, default=Path("settlement"), help="where the file goes (./settlement)")


def main(args: argparse.Namespace, config: Config) -> int:
    latest = dt.datetime.now(CST).date() + dt.timedelta(days=1)  # T+1's file may be made the evening before
    if args.date > latest:
        # A day ahead settled would make every day until it one "before the newest": only read.
        print(f"paysw settle: --date {args.date} is in the future: {latest} at the latest", file=sys.stderr)
        return 2
    return with_database(config, args.data_dir, lambda url: _settle(url, config, args))


async def _settle(url: str, config: Config, args: argparse.Namespace) -> int:
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        settlement = await settle(pool, await current(pool, config), args.date)
    finally:
        await pool.close()
    header = ("merchant", "channel", "cycle", "payments", "gross", "refunds", "clawbacks", "fees", "net")
    print("{:16s} {:9s} {:5s} {:>8s} {:>12s} {:>10s} {:>10s} {:>9s} {:>12s}".format(*header))
    for line in settlement.lines:
        print(
            f"{line.merchant_id:16s} {line.channel:9s} {line.cycle:5s} {line.payments:8d} {line.gross / 100:12,.2f}"
            f" {line.refunds / 100:10,.2f} {line.clawbacks / 100:10,.2f} {line.fees / 100:9,.2f}"
            f" {line.net / 100:12,.2f}"
        )
    path = write_file(settlement, args.out_dir)
    mismatches = settlement.mismatches()
    for channel, (ours, theirs) in mismatches.items():
        print(
            f"MISMATCH {channel}: nets + fees {ours / 100:,.2f}, the channel settles {theirs / 100:,.2f}",
            file=sys.stderr,
        )
    print(f"{len(settlement.lines)} lines; totals check {'FAILED' if mismatches else 'OK'}; written to {path}")
    return 1 if mismatches else 0
