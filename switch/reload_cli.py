"""``paysw reload``: every running front end on the journal reads its configuration file again and
applies its live part (``switch.live``), and its risk rules and lists; an invalid file leaves a
front end's running configuration as it was. The file given here is checked first, whole, so
that a mistake is reported at once with its path and reason (each front end checks its own copy
again). Told through PostgreSQL (``NOTIFY``), whose credentials are what authorise it."""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time

import asyncpg

from switch.cli_support import add_database_arguments, who, with_database
from switch.config import Config, ConfigError
from switch.journal.schema import migrate
from switch.live import LIVE, NOTIFY_CHANNEL, in_force, kept_sections, provenance


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "reload",
        help="every running front end re-reads its configuration file (merchants, terminals, routing, limits, rules)",
        description="Check the configuration file whole (and the risk rules against it), then tell every front "
        f"end on the journal to read its own file again and apply its live part ({', '.join(sorted(LIVE))}) "
        "and its risk rules and lists, within a second or two, with no restart, and print each front end's "
        "outcome. A front end whose file is invalid keeps its running configuration and says why; a change to "
        "anything else (listeners, database, the rest of a channel, security, a merchant's API key) is named as "
        "needing a restart. SIGHUP to one front end does the same for it. Exit status: 0 when every front end "
        "applied it, 1 when one did not or did not answer within --wait, 2 when this file is invalid.",
    )
    parser.add_argument(
        "--wait", type=float, default=10.0, metavar="S", help="seconds to wait for every front end's outcome (10)"
    )
    add_database_arguments(parser)


def main(args: argparse.Namespace, config: Config) -> int:
    return with_database(config, args.data_dir, lambda url: _tell(url, config, args.wait))


async def _tell(url: str, config: Config, wait_s: float) -> int:
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
        try:
            in_force(config, await kept_sections(conn))  # the journal's live sections over the file
        except ConfigError as exc:
            print(f"paysw reload: not reloaded: {exc}", file=sys.stderr)
            return 2
        asked = f"cli:{who()}#{secrets.token_hex(4)}"  # each front end's outcome is kept under it
        listening = await conn.fetchval(_LISTENING, f'LISTEN "{NOTIFY_CHANNEL}"')
        await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, asked)
        print(f"paysw reload: the configuration is valid; {listening} front end(s) on the journal read their own again")
        sources = await provenance(conn)
        for section, source in sources.items():
            print(f"  {section}: {source}")
        if any(source != "the file's" for source in sources.values()):
            print("  (paysw config import puts the file's sections in the journal; paysw config forget goes back)")
        outcomes = await _outcomes(conn, asked, listening, wait_s)
    finally:
        await conn.close()
    for r in outcomes:
        print(f"  {r['front_end']}: {r['result']}: {r['detail']}")
    missing = listening - len(outcomes)
    if missing > 0:
        print(f"paysw reload: {missing} front end(s) silent after {wait_s:g} s: see their logs", file=sys.stderr)
    failed = [r for r in outcomes if r["result"] != "ok"]
    if failed:
        print(f"paysw reload: {len(failed)} front end(s) kept their running configuration", file=sys.stderr)
    return 1 if failed or missing > 0 else 0


# Front ends listening for reloads: their listener connection's last statement.
_LISTENING = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query = $1"


async def _outcomes(conn: asyncpg.Connection, asked: str, listening: int, wait_s: float) -> list[asyncpg.Record]:
    deadline = time.monotonic() + wait_s
    while True:
        rows = await conn.fetch(
            "SELECT front_end, result, detail FROM config_reload WHERE asked = $1 ORDER BY front_end", asked
        )
        if len(rows) >= listening or time.monotonic() >= deadline:
            return rows
        await asyncio.sleep(0.2)
