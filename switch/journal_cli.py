"""``paysw journal migrate``: bring the journal's schema and state machine to this release's as
their owner, and grant the switch's runtime role its part and nothing more
(``switch.journal.roles``). Run it before the first start of each release, wherever the switch
does not own its tables (as it should not: an owner may switch the journal's guards off). The
embedded PostgreSQL is done this way at each start."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import asyncpg

from switch.app import DATABASE_URL_ENV
from switch.cli_support import add_database_arguments, with_database
from switch.config import Config
from switch.journal.roles import OWNER_URL_ENV, RoleTooStrong, prepare, user_of
from switch.journal.schema import SchemaNotCurrent


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "journal",
        help="migrate the journal as its owner and grant the switch's role its part",
        description="migrate: apply this release's migrations and state machine as the journal's owner, whose URL "
        f"is read from {OWNER_URL_ENV} (never from the command line, which other users can read), and grant the "
        "switch's runtime role (by default the user of the configured database URL) what the switch does and "
        "nothing more: it may not own, truncate or switch the guards off any table. With the embedded PostgreSQL "
        "(no database URL), the start does this itself.",
    )
    parser.add_argument("action", choices=["migrate"])
    parser.add_argument("--role", help="the switch's runtime role (default: the configured database URL's user)")
    add_database_arguments(parser)


def main(args: argparse.Namespace, config: Config) -> int:
    url = config.database.url or os.environ.get(DATABASE_URL_ENV, "")
    if not url:  # the embedded PostgreSQL: migrated and granted as it starts
        return with_database(config, args.data_dir, _done)
    owner = os.environ.get(OWNER_URL_ENV, "")
    role = args.role or user_of(url)
    if not owner:
        return _refused(f"set {OWNER_URL_ENV} to the URL of the journal's owner")
    if not role:
        return _refused("the database URL names no user: name the switch's role with --role")
    try:
        version = asyncio.run(prepare(owner, role))
    except (SchemaNotCurrent, RoleTooStrong) as exc:
        return _refused(str(exc))
    except (asyncpg.PostgresError, OSError) as exc:
        return _refused(f"{type(exc).__name__}: {exc}")
    print(f"journal at schema version {version}; role {role} granted the switch's part")
    return 0


async def _done(url: str) -> int:
    print(f"journal (embedded) migrated; the switch connects as {user_of(url)}")
    return 0


def _refused(why: str) -> int:
    print(f"paysw journal: {why}", file=sys.stderr)
    return 2
