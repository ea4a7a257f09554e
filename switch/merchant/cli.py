"""``paysw notify``: the notifications to merchants (the outbox): list them, and send the dead
ones (their whole schedule failed) again, once the merchant's endpoint is back."""

from __future__ import annotations

import argparse
import logging

import asyncpg

from switch.cli_support import add_database_arguments, who, with_database
from switch.config import Config
from switch.journal.schema import migrate
from switch.merchant.outbox import listing, resend

log = logging.getLogger("paysw.notify")


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "notify",
        help="notifications to merchants: list them, send the dead ones again",
        description="The outbox of notifications to merchants. `list` shows the newest (--dead: those whose "
        "whole retry schedule failed); `resend` gives dead ones a new schedule from now: the one of --rrn, or "
        "every dead one of --merchant, or with --all every dead one.",
    )
    add_database_arguments(parser)
    parser.add_argument("action", choices=["list", "resend"])
    parser.add_argument("--dead", action="store_true", help="list: only the dead ones")
    parser.add_argument("--merchant", default="", help="only this merchant's")
    parser.add_argument("--rrn", default="", help="resend: this transaction's")
    parser.add_argument("--all", action="store_true", help="resend: every dead one (of --merchant, if given)")
    parser.add_argument("--limit", type=int, default=50, help="list: how many (default 50)")


def main(args: argparse.Namespace, config: Config) -> int:
    if args.action == "resend" and not (args.rrn or args.merchant or args.all):
        print("paysw notify resend: name what to send again: --rrn, --merchant or --all")
        return 2
    return with_database(config, args.data_dir, lambda url: _run(url, args))


async def _run(url: str, args: argparse.Namespace) -> int:
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        if args.action == "resend":
            count = await resend(pool, args.rrn, args.merchant)
            done = {"count": count, "rrn": args.rrn, "merchant": args.merchant, "by": who()}
            log.warning("dead notifications sent again", extra=done)
            print(f"{count} dead notification(s) given a new schedule from now")
            return 0 if count else 1
        rows = await listing(pool, args.dead, args.merchant, args.limit)
    finally:
        await pool.close()
    print(f"{'rrn':12s} {'state':9s} {'merchant':15s} {'tries':>5s} {'status':10s} {'last error'}")
    for r in rows:
        status = "delivered" if r.delivered_at else "dead" if r.dead_at else f"next {r.next_at:%H:%M:%S}"
        print(f"{r.rrn:12s} {r.state:9s} {r.merchant_id:15s} {r.attempts:5d} {status:10s} {r.last_error or ''}")
    print(f"{len(rows)} notification(s)")
    return 0
