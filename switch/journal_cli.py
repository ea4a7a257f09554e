"""``paysw journal``, the journal's owner's commands, run where the switch's secrets are not (no
configuration is read):
- ``migrate``: bring the journal's schema and state machine to this release's, and grant the
  switch's role its part and nothing more (``switch.journal.roles``). For an external PostgreSQL,
  run by the DBA before each release's first start; the embedded one is done this way at every
  start of the switch.
- ``archive``: copy the days the switch is done with out to folders, and with ``--drop`` take them
  out of the journal (``switch.journal.archive``); ``restore``: read one back in."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
import tempfile
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg

from switch.cli_support import who
from switch.journal import archive
from switch.journal.roles import OWNER_URL_ENV, RUNTIME_ROLE, prepare
from switch.journal.schema import MIGRATIONS
from switch.refused import JournalRefused

_OWNER = (
    f"The owner's URL is read from {OWNER_URL_ENV} only, never the command line (which other users can read): "
    "its password in ~/.pgpass or PGPASSFILE, readable by the DBA alone."
)


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "journal",
        help="the journal's owner's commands: migrate (an external PostgreSQL), archive and restore days",
        description="The journal's owner's commands. No configuration is read. Exit status: 0 done, 1 a day "
        "kept (archive: why, on stdout), 2 refused (why, on stderr), 3 a day out of the journal's sight (archive), "
        "4 stopped by an error not foreseen (its traceback on stderr).",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="{migrate,archive,restore}")
    migrate = actions.add_parser(
        "migrate",
        help="apply this release's migrations and grant the switch's role its part",
        description="Apply this release's migrations and state machine to the journal as its owner, and grant "
        "the switch's role (--role) what the switch does and nothing more: it may not alter, truncate or drop a "
        "table, switch a trigger off, or make temporary objects (the database's TEMPORARY is revoked from "
        f"PUBLIC). {_OWNER} Run it with each release before that release's first start; a switch whose role "
        "finds the journal not this release's stops and names this command. The embedded PostgreSQL needs none "
        "of this: each start does it.",
    )
    migrate.add_argument(
        "--role",
        default=RUNTIME_ROLE,
        help=f"the switch's role: a login that owns nothing, made by the DBA (default {RUNTIME_ROLE})",
    )
    keep = actions.add_parser(
        "archive",
        help="copy the days before a date out to folders; with --drop, take them out of the journal",
        description="Copy each day of the journal before --before (its transactions and their moves) to a "
        "folder journal-YYYY-MM-DD under --to: gzip'd CSV and a manifest of columns, rows and SHA-256, read back and "
        "checked, readable by the owner alone. A day is kept, and the command says why, while any of its "
        "transactions is open, owes a reversal or has a void or refund under way, a payment or refund whose money "
        "was kept is not settled, a payment settled whose money went back since is not clawed back, a purchase "
        "could still be refunded, a reconciliation batch of the day or either side of it is unfinished, a "
        "difference on one of its transactions is open, a dead letter is unresolved or a merchant notification "
        "still being delivered; and the last --keep-days whatever --before says. With --drop each day archived is "
        "checked against its folder, detached from the journal (waiting for the transactions older than it, "
        "holding up none), checked again and dropped, with an audit row (journal.drop); a day changed since is "
        "attached again and kept; a drop cut short is finished by the next. Any other lock not had within 10 s "
        f"fails the command. A day restored stays --hold-days before a drop takes it again. {_OWNER} Else "
        "--data-dir's embedded PostgreSQL (safe beside a running switch). Exit status: 0 every day archived (and "
        "dropped), 1 a day kept (why and what to do, on stdout), 3 a day left detached, out of the journal's "
        "sight (run again with --drop), 2 refused (why, on stderr), 4 stopped by an error not foreseen.",
    )
    keep.add_argument(
        "--before",
        type=_day,
        help="the first day kept, YYYY-MM-DD (default: the first of the last --keep-days by the journal's clock, "
        "which is what a daily run from cron wants)",
    )
    keep.add_argument(
        "--to",
        type=Path,
        required=True,
        help="the folder the days' folders go in: one that exists and this user may write (an archive share "
        "mounted there; keep what it holds where the bank keeps its records: after --drop it is the only copy)",
    )
    keep.add_argument(
        "--keep-days",
        type=int,
        default=archive.KEEP_DAYS,
        help=f"days the journal keeps whatever --before says (default {archive.KEEP_DAYS}, at least "
        f"{archive.MIN_KEEP_DAYS}: a refund, taken up to a year after its payment, reads its purchase)",
    )
    keep.add_argument(
        "--hold-days",
        type=int,
        default=archive.HOLD_DAYS,
        help=f"days a day restored stays before a drop takes it again (default {archive.HOLD_DAYS})",
    )
    keep.add_argument("--drop", action="store_true", help="take each day archived out of the journal")
    back = actions.add_parser(
        "restore",
        help="read an archived day back into the journal",
        description="Read a folder written by paysw journal archive back in as its day's partitions, owned and "
        "guarded as every day is, checked against its manifest byte for byte, with an audit row (journal.restore): "
        "only the folder of the last drop of that day this journal recorded (by its SHA-256), none of its rows "
        f"open, and not while the journal has the day. {_OWNER} Else --data-dir's embedded PostgreSQL. Exit "
        "status: 0 read back, 2 refused (why, on stderr).",
    )
    back.add_argument("folder", type=Path, help="the day's folder, journal-YYYY-MM-DD")
    for each in (keep, back):
        each.add_argument(
            "--data-dir",
            type=Path,
            default=Path(".paysw"),
            help=f"folder of the embedded PostgreSQL, when {OWNER_URL_ENV} is not set (default ./.paysw)",
        )


def _day(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a day, YYYY-MM-DD, not {text!r}") from None


CRASHED = 4  # not 1: a cron job reads 1 as "a day kept, said why", never as a crash


def main(args: argparse.Namespace) -> int:
    try:
        return _main(args)
    except JournalRefused:
        raise
    except Exception:
        traceback.print_exc()
        print(f"paysw journal {args.action}: stopped by the error above (exit status {CRASHED}); a day it left "
              "out of the journal's sight is finished by the next archive --drop", file=sys.stderr)  # fmt: skip
        return CRASHED


def _main(args: argparse.Namespace) -> int:
    if args.action == "migrate":
        return _migrate(args)
    if args.action == "archive":
        if not archive.MIN_KEEP_DAYS <= args.keep_days <= 100_000:
            raise JournalRefused(f"--keep-days: at least {archive.MIN_KEEP_DAYS}, not {args.keep_days}")
        if not 0 <= args.hold_days <= 3650:
            raise JournalRefused(f"--hold-days: 0 to 3650, not {args.hold_days}")
        _writable(args.to)
    work = _archive if args.action == "archive" else _restore
    return _as_owner(args.data_dir, lambda conn: work(conn, args))


def _writable(folder: Path) -> None:
    """``folder`` is one this user may write in (tried), or the command stops before it reads a day:
    never made here, so that an archive share not mounted is not taken for an empty folder."""
    if not folder.is_dir():
        raise JournalRefused(
            f"--to {folder}: not a folder{'' if folder.exists() else ' (none there: make it, or mount it)'}"
        )
    try:  # a new file of a random name (O_EXCL: no link of another user's is followed)
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".paysw-probe-")
    except OSError as exc:
        raise JournalRefused(f"--to {folder}: not writable ({exc.strerror})") from exc
    os.close(handle)
    Path(probe).unlink(missing_ok=True)


def _migrate(args: argparse.Namespace) -> int:
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


def _as_owner(data_dir: Path, work: Callable[[asyncpg.Connection], Awaitable[int]]) -> int:
    """``work`` on a connection as the journal's owner: ``OWNER_URL_ENV``'s, else the embedded
    PostgreSQL's superuser under ``data_dir`` (one there already: none is made)."""
    owner, embedded = os.environ.get(OWNER_URL_ENV, ""), None
    if not owner and not (data_dir / "pg").is_dir():
        raise JournalRefused(f"set {OWNER_URL_ENV} to the URL of the journal's owner, or --data-dir to the "
                             f"switch's embedded PostgreSQL ({data_dir / 'pg'} is not one)")  # fmt: skip

    async def connected() -> int:
        conn = await asyncpg.connect(owner)
        try:
            return await work(conn)
        finally:
            await conn.close()

    try:
        if not owner:
            from switch.journal.embedded import EmbeddedPostgres

            embedded = EmbeddedPostgres(data_dir / "pg")
            owner = embedded.start()
        return asyncio.run(connected())
    except JournalRefused:
        raise
    except archive.ArchiveRefused as exc:
        raise JournalRefused(str(exc)) from exc
    except asyncpg.LockNotAvailableError as exc:
        raise JournalRefused(f"the journal was busy (a lock not had within 10 s: {exc}): run it again") from exc
    except OSError as exc:
        if exc.filename is not None:  # a file's, not the database's
            raise JournalRefused(f"{exc.filename}: {exc.strerror}") from exc
        raise JournalRefused(f"the owner's database: {type(exc).__name__}: {exc}") from exc
    except (asyncpg.PostgresError, asyncpg.InterfaceError, ValueError, RuntimeError) as exc:  # (pgserver's too)
        raise JournalRefused(f"the owner's database: {type(exc).__name__}: {exc}") from exc
    finally:
        if embedded is not None:
            embedded.stop()


async def _archive(conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    # The journal's days are UTC days (field 7's date), whatever this host's or the server's time zone.
    today = await conn.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date")
    first_kept = today - dt.timedelta(days=args.keep_days - 1)
    before = args.before or first_kept
    if before > first_kept:
        raise JournalRefused(
            f"--before {before}: the journal keeps the last {args.keep_days} days (--keep-days) by its clock, "
            f"today {today}: --before {first_kept} at the latest, or leave it out"
        )
    root = args.to.resolve()
    by, kept, hidden = f"cli:{who()}", 0, 0
    days = await archive.days_before(conn, before)
    print(f"{len(days)} day{'' if len(days) == 1 else 's'} before {before} in the journal", flush=True)
    for day in days:
        fresh = not archive.folder_of(root, day.day).exists()
        done = await archive.archive(conn, day, root, by, args.hold_days)
        if done.folder is not None and args.drop:
            done = await archive.drop(
                conn, day, done.folder, by, fresh=fresh, hold_days=args.hold_days, manifest=done.manifest
            )
        counts = f"{done.rows.get('txn', 0):,} transactions, {done.rows.get('txn_move', 0):,} moves"
        where = f"archived to {done.folder}" if fresh else f"archived already in {done.folder} (read back)"
        if not done.dropped and await archive.out_of_sight(conn, day.day):
            hidden += 1
            why = f": {done.kept}" if done.kept else ""
            print(f"{day.day}: out of the journal's sight, detached by a drop cut short{why}; run "
                  "paysw journal archive --drop again to finish it", flush=True)  # fmt: skip
        elif done.kept:
            kept += 1
            print(f"{day.day}: kept in the journal: {done.kept}", flush=True)
        elif done.dropped:
            print(f"{day.day}: {counts} {where} and dropped from the journal", flush=True)
        else:
            print(f"{day.day}: {counts} {where}", flush=True)
    return 3 if hidden else 1 if kept else 0


async def _restore(conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    if not (args.folder / archive.MANIFEST).exists() and any(args.folder.glob("journal-*")):
        raise JournalRefused(f"{args.folder}: name one day's folder in it, journal-YYYY-MM-DD")
    done = await archive.restore(conn, args.folder, f"cli:{who()}")
    print(f"{done.day}: {done.rows['txn']:,} transactions, {done.rows['txn_move']:,} moves read back into the "
          f"journal; a drop takes it again after --hold-days ({archive.HOLD_DAYS} unless said otherwise)")  # fmt: skip
    return 0
