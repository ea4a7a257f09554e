"""``paysw reload``: every running front end on the journal reads its configuration file again and
applies its live part (``switch.live``), and its risk rules and lists; an invalid file leaves a
front end's running configuration as it was. The file given here is checked first, whole, so
that a mistake is reported at once with its path and reason (each front end checks its own copy
again). Told through PostgreSQL (``NOTIFY``), whose credentials are what authorise it."""

from __future__ import annotations

import argparse
import sys

import asyncpg

from switch.cli_support import add_database_arguments, who, with_database
from switch.config import Config, ConfigError
from switch.live import LIVE, NOTIFY_CHANNEL, in_force, kept_sections, provenance


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "reload",
        help="every running front end re-reads its configuration file (merchants, terminals, routing, limits, rules)",
        description="Check the configuration file whole (and the risk rules against it), then tell every front "
        f"end on the journal to read its own file again and apply its live part ({', '.join(sorted(LIVE))}) "
        "and its risk rules and lists, within a second or two, with no restart. A front end whose file is "
        "invalid keeps its running configuration and logs why; a change to anything else (listeners, database, "
        "channels, security, a merchant's API key) is logged as needing a restart. SIGHUP to one front end "
        "does the same for it.",
    )
    add_database_arguments(parser)


def main(args: argparse.Namespace, config: Config) -> int:
    return with_database(config, args.data_dir, lambda url: _tell(url, config))


async def _tell(url: str, config: Config) -> int:
    conn = await asyncpg.connect(url)
    try:
        try:
            in_force(config, await kept_sections(conn))  # the journal's live sections over the file
        except ConfigError as exc:
            print(f"paysw reload: not reloaded: {exc}", file=sys.stderr)
            return 2
        await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, who())
        sources = await provenance(conn)
    finally:
        await conn.close()
    print("paysw reload: the configuration is valid; every running front end reads its own again")
    for section, source in sources.items():
        print(f"  {section}: {source}")
    if any(source != "the file's" for source in sources.values()):
        print(
            "  (paysw config import puts the file's sections in the journal; paysw config forget goes back to the file)"
        )
    return 0
