"""``paysw risk``: check a rules file, reload the running switches' rules and lists, and keep the
black and grey lists. Changes go through the journal's database (its credentials are what
authorise them), are audited in ``risk_audit``, and reach every front end by ``NOTIFY``."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import asyncpg

from hsm import HsmError, open_hsm
from protocols.statements import CST
from risk.lists import COLOURS, KINDS, NOTIFY_CHANNEL, change_list
from risk.report import day_report, printed, write_csv
from risk.rules import RulesError, load_rules
from switch.cli_support import add_database_arguments, who, with_database
from switch.config import Config, known_names
from switch.journal.schema import migrate
from switch.keystore import KeyStore, configured_keys


def add_parser(commands: argparse._SubParsersAction) -> None:
    risk = commands.add_parser(
        "risk",
        help="risk rules and lists",
        description="check: validate the rules file ([risk] rules) against the configuration. reload: every "
        "running front end re-reads its rules file and the lists (an invalid file leaves its rules as they "
        "were). report: a day's rules fired (enforced and shadow), the merchants, terminals and codes "
        "declined most, and refunds over sales by merchant. list add|remove|show: the black and grey lists "
        "of payment codes or cards (kept by keyed "
        "fingerprint only), terminals and merchants; every front end applies a change within a second or two.",
    )
    risk.add_argument("action", choices=["check", "reload", "list", "report"])
    risk.add_argument("change", nargs="?", choices=["add", "remove", "show"], help="list: what to do (default show)")
    add_database_arguments(risk)
    risk.add_argument("--colour", choices=COLOURS, default="black", help="list: black (default) or grey")
    risk.add_argument("--of", choices=KINDS, help="list add|remove: what the entry is")
    risk.add_argument("--value", help="list add|remove: the terminal or merchant id, or the code's fingerprint (hex)")
    risk.add_argument(
        "--code-stdin", action="store_true", help="list add|remove --of code: read the code or card number from stdin "
        "(never from the command line, where ps and the shell's history would see it), fingerprinted here",
    )  # fmt: skip
    risk.add_argument("--reason", help="list add|remove: why (required, audited)")
    risk.add_argument("--date", type=dt.date.fromisoformat, help="report: the day, YYYY-MM-DD (default: yesterday)")
    risk.add_argument("--csv", type=Path, metavar="DIR", help="report: also write each section as CSV here")


def main(args: argparse.Namespace, config: Config) -> int:
    if args.action == "check":
        return _check(config)
    try:
        return with_database(config, args.data_dir, lambda url: _work(url, config, args))
    except HsmError as exc:
        print(f"paysw risk: {exc}", file=sys.stderr)
        return 2


def _check(config: Config) -> int:
    if not config.risk.rules:
        print("paysw risk check: the configuration names no rules file ([risk] rules)")
        return 0
    try:
        rules = load_rules(Path(config.base_dir) / config.risk.rules, *known_names(config))
    except RulesError as exc:
        print(f"paysw risk check: {exc}", file=sys.stderr)
        return 2
    for rule in rules.rules:
        print(f"  {rule.id:24s} {type(rule).__name__:14s} {rule.action:8s} {rule.mode}")
    print(f"{len(rules.rules)} rules, valid")
    return 0


async def _work(url: str, config: Config, args: argparse.Namespace) -> int:
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
        if args.action == "reload":
            await conn.execute(f"NOTIFY {NOTIFY_CHANNEL}, 'rules'")
            await conn.execute(
                "INSERT INTO risk_audit (action, detail, by_whom) VALUES ('reload', '', $1)", who()
            )
            print("reload asked of every running front end (see their logs and paysw_risk_reloads_total)")
            return 0
        if args.action == "report":
            day = args.date or dt.datetime.now(CST).date() - dt.timedelta(days=1)
            report = await day_report(conn, day)
            print(printed(report, day))
            if args.csv is not None:
                for path in write_csv(report, args.csv, day):
                    print(f"wrote {path}")
            return 0
        if args.change in (None, "show"):
            rows = await conn.fetch("SELECT colour, list_of, value, reason, added_at FROM risk_list ORDER BY 1, 2, 5")
            for r in rows:
                added = f"{r['added_at']:%Y-%m-%d %H:%M}"
                print(f"{r['colour']:6s} {r['list_of']:9s} {r['value']:64s} {added} {r['reason']}")
            print(f"{len(rows)} entries")
            return 0
        value = await _value(url, config, args)
        if value is None:
            return 2
        if not args.reason:
            print("paysw risk list: --reason is required (it is audited)", file=sys.stderr)
            return 2
        changed = await change_list(conn, args.change == "add", args.colour, args.of, value, args.reason,
                                    who())  # fmt: skip
        shown = value if args.of != "code" else value[:16] + "..."
        print(f"{args.change} {args.colour} {args.of} {shown}: {'done' if changed else 'nothing to change'}")
        return 0
    finally:
        await conn.close()


async def _value(url: str, config: Config, args: argparse.Namespace) -> str | None:
    """The entry's value: a code read from stdin becomes its fingerprint, as the switch computes it."""
    if args.of is None:
        print("paysw risk list: --of code|terminal|merchant is required", file=sys.stderr)
        return None
    if args.code_stdin:
        if args.of != "code":
            print("paysw risk list: --code-stdin goes with --of code", file=sys.stderr)
            return None
        code = sys.stdin.readline().strip()
        if not code.isdigit():
            print("paysw risk list: stdin holds no code (digits only)", file=sys.stderr)
            return None
        hsm = open_hsm(config.security.hsm, config.base_dir, demo=config.switch.demo)
        async with asyncpg.create_pool(url, min_size=1, max_size=1) as pool:
            keys = await configured_keys(KeyStore(pool), config)
        return hsm.fingerprinter(keys[config.security.pan_hash_key])(code).hex()
    if not args.value:
        print("paysw risk list: --value (or --of code --code-stdin) is required", file=sys.stderr)
        return None
    if args.of == "code" and not _is_fingerprint(args.value):
        print("paysw risk list: a code's --value is its fingerprint (64 hex digits); give the code on stdin with "
              "--code-stdin", file=sys.stderr)  # fmt: skip
        return None
    return args.value.lower() if args.of == "code" else args.value


def _is_fingerprint(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdefABCDEF" for c in value)
