"""``paysw config``: where the live configuration comes from (``switch.live``), and moving it
between the file and the journal. The merchants, terminals, routing, the channels' limits and the
risk rules come from the file until a section of them is kept in the journal (by the console's
first edit, or by ``import``); from then on the journal's is in force in every front end, and the
file's is not used until ``forget``. Both are checked whole first, audited (``console_audit``, by
the operating-system user), and broadcast to every front end, which applies them within a second
or two."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import asyncpg

from switch.cli_support import add_database_arguments, who, with_database
from switch.config import Config, ConfigError
from switch.console import changes
from switch.console.audit import Entry, record
from switch.journal.schema import migrate
from switch.live import (
    LIVE,
    NOTIFY_CHANNEL,
    SECTIONS,
    EditConflict,
    file_section,
    in_force,
    keep_section,
    kept_sections,
    lock,
    provenance,
    versions,
)


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "config",
        help="where the live configuration comes from (the file, the journal): show, import, forget",
        description="show: for each live section (merchants, terminals, routing, the channels' limits and "
        "breakers, the risk rules), whether the file's or the "
        "journal's is in force. import: the file's sections replace the journal's (the file as the seed of the "
        "configuration kept in the journal, which the console edits). forget: the journal's sections are dropped "
        "and the file's are in force again. import and forget check the whole configuration first, are audited and "
        "reach every running front end within a second or two.",
    )
    parser.add_argument("action", choices=["show", "import", "forget"])
    parser.add_argument(
        "--section",
        action="append",
        choices=sorted(LIVE),
        help="import, forget: only this section (repeatable; by default import takes merchants, terminals and "
        "routing, and forget all)",
    )
    add_database_arguments(parser)


def main(args: argparse.Namespace, config: Config) -> int:
    return with_database(config, args.data_dir, lambda url: _run(url, config, args))


async def _run(url: str, config: Config, args: argparse.Namespace) -> int:
    # By default import takes the file's merchants, terminals and routing; the limits and the
    # rules only when named (frozen in the journal, a file edit of them would do nothing).
    sections = sorted(set(args.section or (SECTIONS if args.action == "import" else LIVE)))
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
        if args.action != "show":
            try:
                async with conn.transaction():
                    await _move(conn, config, args.action, sections)
            except (ConfigError, EditConflict) as exc:
                print(f"paysw config {args.action}: nothing changed: {exc}", file=sys.stderr)
                return 2
            print(f"paysw config {args.action}: {', '.join(sections)} done; every running front end applies it now")
        for section, source in (await provenance(conn)).items():
            print(f"{section}: {source}")
    finally:
        await conn.close()
    return 0


async def _move(conn: asyncpg.Connection, config: Config, action: str, sections: list[str]) -> None:
    await lock(conn)
    kept = await kept_sections(conn)
    seen = await versions(conn)
    by = f"cli:{who()}"
    for section in sections:  # a change asked in the console was of what is no longer there
        await changes.lapse_section(conn, section, by, f"paysw config {action}")
    if action == "import":
        files: dict[str, Any] = {s: file_section(config, s, kept) for s in sections}
        in_force(config, kept | files)  # the whole, as every front end will read it
        for section in sections:
            await keep_section(conn, section, files[section], seen[section], by)
            await record(conn, Entry(by, "config.import", section, before=kept.get(section), after=files[section]))
        return
    in_force(config, {s: body for s, body in kept.items() if s not in sections})
    for section in sections:
        if section in kept:
            await conn.execute("DELETE FROM live_config WHERE section = $1", section)
            await record(conn, Entry(by, "config.forget", section, before=kept[section]))
    await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, by)
