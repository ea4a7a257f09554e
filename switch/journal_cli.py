"""``paysw journal migrate``: bring the journal's schema and state machine to this release's as
their owner, and grant the switch's role its part and nothing more (``switch.journal.roles``).
For an external PostgreSQL, run by the DBA before each release's first start, where the
switch's secrets are not: it reads no configuration. The embedded PostgreSQL is done this way
at every start of the switch."""

from __future__ import annotations

import argparse
import asyncio
import os

import asyncpg

from switch.journal.roles import OWNER_URL_ENV, RUNTIME_ROLE, prepare
from switch.journal.schema import MIGRATIONS
from switch.refused import JournalRefused


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "journal",
        help="migrate the journal as its owner and grant the switch's role its part (an external PostgreSQL)",
        description="migrate: apply this release's migrations and state machine to the journal as its owner, "
        "and grant the switch's role (--role) what the switch does and nothing more: it may not alter, truncate "
        "or drop a table, switch a trigger off, or make temporary objects (the database's TEMPORARY is revoked "
        f"from PUBLIC). The owner's URL is read from {OWNER_URL_ENV} only, never the command line (which other "
        "users can read): its password in ~/.pgpass or PGPASSFILE, readable by the DBA alone. No configuration "
        "is read. Run it with each release before that release's first start; a switch whose role finds the "
        "journal not this release's stops and names this command. The embedded PostgreSQL needs none of this: "
        "each start does it. Exit status: 0 done, 2 refused (why, on stderr).",
    )
    parser.add_argument("action", choices=["migrate"], help="what to do")
    parser.add_argument(
        "--role",
        default=RUNTIME_ROLE,
        help=f"the switch's role: a login that owns nothing, made by the DBA (default {RUNTIME_ROLE})",
    )


def main(args: argparse.Namespace) -> int:
    owner = os.environ.get(OWNER_URL_ENV, "")
    if not owner:
        raise JournalRefused(f"set {OWNER_URL_ENV} to the URL of the journal's owner")
    try:
        version = asyncio.run(prepare(owner, args.role))
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, ValueError) as exc:
        raise JournalRefused(f"the owner's database: {type(exc).__name__}: {exc}") from exc
    if version > len(MIGRATIONS):
        print(f"journal at schema version {version}, a later release's: left as it is, with that release's grants")
    else:
        print(f"journal at schema version {version}; role {args.role} granted the switch's part")
    return 0
