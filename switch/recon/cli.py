"""``paysw recon``: run the reconciliation batches of a day (or an hour) for the channels, in
parallel, showing each batch's step as it goes and a summary table at the end; ``paysw recon
errors`` lists the differences still open and lets an operator resolve one with a reason.

Statements are fetched, and channels asked, through the same channel code the actors run
(``ChannelWorker``), with the switch's keys from the key store, straight from this process.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import json
import sys
from pathlib import Path

import asyncpg

from actors.channel_actor import ChannelWorker
from hsm import HsmError
from switch.cli_support import add_database_arguments, who, with_database
from switch.config import Config, reconciled
from switch.console.audit import Entry, record
from switch.journal.schema import migrate
from switch.keystore import KeyStore, actor_setup, configured_keys
from switch.recon.batch import CLASSES, WHOLE_DAY, ReconBatch, StepFailed
from switch.recon.handling import Handler, Threshold, resolve_by_hand


def add_parser(commands: argparse._SubParsersAction) -> None:
    recon = commands.add_parser(
        "recon",
        help="reconcile the journal against the channels' statements",
        description="Run the batches of a day (Beijing time) or one hour of it: fetch each channel's "
        "statement through its download call, compare it with the journal, fix what the automatic rules "
        "may within the threshold ([recon] in the configuration), and report. A batch that failed or was "
        "stopped resumes at its step. 'errors' lists the open differences; --resolve closes one.",
    )
    recon.add_argument("action", nargs="?", choices=["run", "errors"], default="run", help="run (default) or errors")
    add_database_arguments(recon)
    recon.add_argument("--date", type=dt.date.fromisoformat, help="run: the day, YYYY-MM-DD (default: yesterday)")
    recon.add_argument("--hour", type=int, choices=range(24), metavar="0-23", help="run: one hour of the day")
    recon.add_argument("--channel", action="append", help="run: this channel only (repeatable; default: all)")
    recon.add_argument("--export", type=Path, help="run: write each batch's summary (JSON) and differences (CSV) here")
    recon.add_argument("--resolve", type=int, metavar="ITEM", help="errors: close this open difference")
    recon.add_argument("--reason", help="errors: why (required with --resolve)")


def main(args: argparse.Namespace, config: Config) -> int:
    try:
        if args.action == "errors":
            return with_database(config, args.data_dir, lambda url: _errors(url, args))
        return with_database(config, args.data_dir, lambda url: _run(url, config, args))
    except HsmError as exc:
        print(f"paysw recon: {exc}", file=sys.stderr)
        return 2


async def _run(url: str, config: Config, args: argparse.Namespace) -> int:
    channels = args.channel or reconciled(config)
    unknown = [c for c in channels if c not in reconciled(config)]
    if unknown:
        print(f"paysw recon: no channel reconciled here: {', '.join(unknown)}", file=sys.stderr)
        return 2
    day = args.date or (dt.datetime.now(dt.UTC) + dt.timedelta(hours=8)).date() - dt.timedelta(days=1)
    hour = WHOLE_DAY if args.hour is None else args.hour
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2 + 2 * len(channels))
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        keys = await configured_keys(KeyStore(pool), config)
        workers = {name: ChannelWorker(name, actor_setup(config, name, keys), 0) for name in channels}
        threshold = Threshold(config.recon.auto_max_count, config.recon.auto_max_fen)
        period = f"{day}" + ("" if hour == WHOLE_DAY else f" {hour:02d}:00")
        print(f"reconciling {period} (Beijing time): {', '.join(channels)}", flush=True)

        async def fetch(channel: str, statement_day: dt.date) -> bytes:
            return await workers[channel].statement(statement_day)

        batches = [
            ReconBatch(
                pool,
                name,
                config.channels[name].kind,
                day,
                hour,
                fetch,
                Handler(pool, workers[name].call, threshold),
                progress=_progress,
            )
            for name in channels
        ]
        outcomes = await asyncio.gather(*(b.run() for b in batches), return_exceptions=True)
        failed = 0
        print()
        print(f"{'channel':10s} {'class':8s} {'count':>8s} {'channel yuan':>14s} {'journal yuan':>14s} {'open':>6s}")
        for batch, outcome in zip(batches, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                failed += 1
                cause = outcome if isinstance(outcome, StepFailed) else f"{type(outcome).__name__}: {outcome}"
                print(f"{batch.channel:10s} FAILED   {cause} (run again to resume)")
                continue
            summary = await batch.summary()
            for cls in CLASSES:
                row = summary.get(cls)
                if row:
                    print(
                        f"{batch.channel:10s} {cls:8s} {row['count']:8d} {row['channel_fen'] / 100:14,.2f}"
                        f" {row['journal_fen'] / 100:14,.2f} {row['open']:6d}"
                    )
            handling = await batch.handling()
            if handling.get("stopped"):
                print(f"{batch.channel:10s} automation stopped at its threshold; {handling['left']} left for a person")
            if args.export:
                await _export(pool, batch, summary, handling, args.export)
        for worker in workers.values():
            await worker.close()
        return 1 if failed else 0
    finally:
        await pool.close()


def _progress(channel: str, step: str) -> None:
    print(f"  {channel}: {step}", flush=True)


async def _export(pool: asyncpg.Pool, batch: ReconBatch, summary: dict, handling: dict, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"recon-{batch.channel}-{batch.day}" + ("" if batch.hour == WHOLE_DAY else f"-{batch.hour:02d}")
    (folder / f"{stem}.json").write_text(json.dumps({"summary": summary, "handling": handling}, indent=2) + "\n")
    rows = await pool.fetch(
        "SELECT id, class, entry, out_trade_no, rrn, journal_state, journal_fen, channel_status, channel_fen, "
        "status, note FROM recon_item WHERE batch_id = $1 AND class <> 'MATCHED' ORDER BY id",
        batch.id,
    )
    with open(folder / f"{stem}-differences.csv", "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(rows[0].keys() if rows else ["id"])
        writer.writerows(tuple(inert(v) for v in r.values()) for r in rows)


def inert(value: object) -> object:
    """A cell a spreadsheet shows as text: order numbers and notes come from the channel's file,
    and one starting ``=``, ``+``, ``-`` or ``@`` would be run as a formula where it is opened."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


async def _errors(url: str, args: argparse.Namespace) -> int:
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
        if args.resolve is not None:
            if not args.reason:
                print("paysw recon errors: --resolve needs --reason", file=sys.stderr)
                return 2
            async with conn.transaction():  # the break-glass path, outside the console's four eyes: audited
                if not await resolve_by_hand(conn, args.resolve, args.reason):
                    print(f"paysw recon errors: no open difference {args.resolve}", file=sys.stderr)
                    return 2
                await record(conn, Entry(f"cli:{who()}", "recon.resolve", str(args.resolve), after=args.reason))
            print(f"difference {args.resolve} resolved: {args.reason}")
            return 0
        rows = await conn.fetch(
            "SELECT i.id, b.channel, b.day, b.hour, i.class, i.entry, i.out_trade_no, i.journal_state, i.journal_fen, "
            "i.channel_status, i.channel_fen FROM recon_item i JOIN recon_batch b ON b.id = i.batch_id "
            "WHERE i.status = 'OPEN' ORDER BY b.day, b.channel, i.id"
        )
        header = ("item", "channel", "day", "hr", "class", "order", "journal", "channel")
        print("{:>8s} {:9s} {:10s} {:>2s} {:7s} {:24s} {:>18s} {:>18s}".format(*header))
        for r in rows:
            journal = f"{r['journal_state'] or '-'} {_yuan(r['journal_fen'])}"
            channel = f"{r['channel_status'] or '-'} {_yuan(r['channel_fen'])}"
            hour = "" if r["hour"] == WHOLE_DAY else f"{r['hour']:02d}"
            print(
                f"{r['id']:8d} {r['channel']:9s} {r['day']!s:10s} {hour:>2s} {r['class']:7s} "
                f"{r['out_trade_no']:24s} {journal:>18s} {channel:>18s}"
            )
        print(f"{len(rows)} open differences")
        return 0
    finally:
        await conn.close()


def _yuan(fen: int | None) -> str:
    return "" if fen is None else f"{fen / 100:,.2f}"
