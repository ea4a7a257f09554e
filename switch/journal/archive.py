"""Retention of the journal: a day's partitions of ``txn`` and ``txn_move`` copied out to a folder
(``paysw journal archive``), read back and checked, and with ``drop`` detached and dropped, as the
journal's owner; read back in by ``restore`` for an inquiry or a dispute.

A day is archived only when the switch has no more business with it (``_BLOCKERS``):
- it is at least ``keep_days`` old (at least ``MIN_KEEP_DAYS``: a refund, taken up to a year after
  its payment by a channel's ``refund_days``, reads its purchase), and none of its purchases could
  still be refunded (the day, field 7's, may be the day before the purchase's receipt);
- none of its transactions is open, owes a reversal or has a void or refund under way;
- every payment and refund whose money was kept is settled (settlement reads the journal);
- no reconciliation batch near it is unfinished, no difference open on one of its transactions,
  no dead letter unresolved, no merchant notification still being delivered.

The folder ``journal-YYYY-MM-DD`` holds each table's rows as gzip'd CSV with a header, as
PostgreSQL's COPY writes them (nothing re-encoded; ``_AS_WRITTEN``), in key order, and
``manifest.json``: the day, the journal's schema version, and per table its columns, rows and the
SHA-256 of the CSV. A drop detaches the partitions (``CONCURRENTLY``: the switch's writes never wait
on it), checks the detached rows against the manifest again, and drops them with an audit row in
one transaction; a day that changed in between is attached again, not dropped. A restore reads back
only a folder whose SHA-256 this journal's audit recorded when it dropped the day. The records
beside the journal (reversals, reconciliation, settlement, notifications, the audit) are not
partitioned by day and stay."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import hashlib
import io
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from switch.console.audit import Entry, record
from switch.journal.machine import DUE_SQL, GONE_BACK, KEPT, PURCHASE, REFUND, REFUND_DAYS_MAX, State, sql_set
from switch.journal.schema import DAY_TABLE, LOCK_ID, partition
from switch.settlement import CLAWBACK

MIN_KEEP_DAYS = REFUND_DAYS_MAX + 1  # a refund's purchase stays in the journal (machine)
KEEP_DAYS = 400
HOLD_DAYS = 30  # a day restored stays this long before a drop takes it again
# Each table's rows in an order that makes the same rows the same bytes, text in bytes' order
# whatever the database's collation.
ORDER = {
    "txn": 'terminal_id COLLATE "C", stan COLLATE "C", transmitted COLLATE "C"',
    "txn_move": 'rrn COLLATE "C", moved_at, xid, from_state COLLATE "C" NULLS FIRST, to_state COLLATE "C"',
}
# COPY's text of times, bytes and numbers as the session's settings say: fixed here, so that the
# same rows are the same bytes in any session. A lock not had in time fails the command, rather
# than leave it waiting unseen behind a long transaction.
_AS_WRITTEN = (
    "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; SET bytea_output = 'hex'; "
    "SET extra_float_digits = 1; SET lock_timeout = '10s'"
)
MANIFEST = "manifest.json"
_GUARDS = ("txn_record_inserts", "txn_record_moves", "journal_keeps_all")  # schema's journal_guard_partition
_BOUND = re.compile(r"^FOR VALUES FROM \('(\d{4}-\d{2}-\d{2})'\) TO \('(\d{4}-\d{2}-\d{2})'\)$")
_CHUNK = 1 << 20

# What keeps a day in the journal, counted over ``{rows}``, the day's table of ``txn`` (named: its
# parent is not locked); a name for each, as the command says it.
_BLOCKERS = f"""
SELECT
    (SELECT count(*) FROM {{rows}} t WHERE {DUE_SQL}) AS "open or owing a reversal",
    (SELECT count(*) FROM {{rows}} t WHERE t.reserved_fen <> 0) AS "with a void or refund under way",
    (SELECT count(*) FROM {{rows}} t
     WHERE t.txn_type IN ('{PURCHASE}', '{REFUND}') AND t.state IN {sql_set(KEPT)} AND t.reversal_requested_at IS NULL
       AND NOT EXISTS (SELECT 1 FROM settlement_item s WHERE s.out_trade_no = t.out_trade_no
                       AND s.entry = CASE t.txn_type WHEN '{PURCHASE}' THEN 'PAY' ELSE 'REFUND' END)
    ) AS "not settled",
    (SELECT count(*) FROM {{rows}} t
     WHERE t.txn_type = '{PURCHASE}' AND t.state IN {sql_set(GONE_BACK)}
       AND EXISTS (SELECT 1 FROM settlement_item s WHERE s.entry = 'PAY' AND s.out_trade_no = t.out_trade_no)
       AND NOT EXISTS (SELECT 1 FROM settlement_item s WHERE s.entry = '{CLAWBACK}' AND s.out_trade_no = t.out_trade_no)
    ) AS "to claw back",
    (SELECT count(*) FROM {{rows}} t
     WHERE t.txn_type = '{PURCHASE}' AND t.state = '{State.APPROVED}' AND t.refunded_fen < t.amount_fen
       AND t.received_at > now() - make_interval(days => {REFUND_DAYS_MAX})
    ) AS "refundable still",
    (SELECT count(*) FROM recon_batch WHERE day BETWEEN $1::date - 1 AND $1::date + 1 AND step <> 'done')
        AS "reconciliation batches unfinished",
    (SELECT count(*) FROM recon_item i WHERE i.status = 'OPEN' AND (
        i.rrn IN (SELECT rrn FROM {{rows}}) OR i.out_trade_no IN (SELECT out_trade_no FROM {{rows}}))
    ) AS "with a reconciliation difference open",
    (SELECT count(*) FROM dead_letter WHERE tx_date = $1 AND resolved_at IS NULL) AS "dead letters unresolved",
    (SELECT count(*) FROM notice_outbox WHERE tx_date = $1 AND delivered_at IS NULL AND dead_at IS NULL)
        AS "notifications being delivered",
    (SELECT count(*) FROM (SELECT action, at FROM journal_retention WHERE day = $1 ORDER BY id DESC LIMIT 1) r
     WHERE r.action = 'restored' AND r.at > now() - make_interval(days => $2)) AS "restored lately"
"""
# What to do about each (the command says it with the reason).
HINTS = {
    "open or owing a reversal": "the resolver's, or a person's from paysw recon errors",
    "with a void or refund under way": "the resolver's",
    "not settled": "paysw settle, once reconciliation has matched them",
    "to claw back": "paysw settle takes back a payment settled whose money went back",
    # A purchase's day (field 7's) may be the day before its receipt, which the refund window counts from.
    "refundable still": f"a refund may be asked up to {REFUND_DAYS_MAX} days after the purchase's receipt",
    "reconciliation batches unfinished": "paysw recon",
    "with a reconciliation difference open": "paysw recon errors",
    "dead letters unresolved": "the console's Dead letters page",
    "notifications being delivered": "paysw notify list",
    "restored lately": "held --hold-days from its restore",
}


# The reasons in a day's own rows (the others are records beside the journal, which may change
# after a drop): what a restore refuses.
_ROW_REASONS = ("open or owing a reversal", "with a void or refund under way")


class ArchiveRefused(RuntimeError):
    """A day cannot be archived, dropped or restored as asked; the message says why."""


@dataclass(frozen=True, slots=True)
class Day:
    day: dt.date
    tables: dict[str, str]  # parent: the day's table
    # The parents whose table a drop cut short has detached, or begun to: out of the journal's sight.
    detached: frozenset[str] = frozenset()

    @property
    def attached(self) -> bool:
        return not self.detached


@dataclass(frozen=True, slots=True)
class Done:
    day: dt.date
    folder: Path | None  # None: kept in the journal (``kept`` says why)
    rows: dict[str, int]
    kept: str = ""
    dropped: bool = False
    manifest: dict | None = None  # the folder's, as written or read back and checked in this run


def folder_of(root: Path, day: dt.date) -> Path:
    return root / f"journal-{day:%Y-%m-%d}"


async def days_before(conn: asyncpg.Connection, before: dt.date) -> list[Day]:
    """The journal's days before ``before``, oldest first: each day's tables of ``txn`` and
    ``txn_move``, partitions or left detached by a drop cut short."""
    rows = await conn.fetch(
        "SELECT p.relname AS parent, c.relname AS name, pg_get_expr(c.relpartbound, c.oid) AS bound, "
        "i.inhdetachpending AS pending "
        "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent "
        "WHERE i.inhparent IN ('txn'::regclass, 'txn_move'::regclass)"
    )
    tables: dict[dt.date, dict[str, str]] = {}
    detached: dict[dt.date, set[str]] = {}
    odd = []
    for row in rows:
        bound = _BOUND.match(row["bound"] or "")
        first = dt.date.fromisoformat(bound[1]) if bound else None
        if first is None or dt.date.fromisoformat(bound[2]) != first + dt.timedelta(days=1):
            odd.append(row["name"])
        elif first < before:
            tables.setdefault(first, {})[row["parent"]] = row["name"]
            if row["pending"]:  # a detach begun: out of sight already
                detached.setdefault(first, set()).add(row["parent"])
    if odd:
        raise ArchiveRefused(f"partitions not of one day each, for a person to look at: {', '.join(sorted(odd))}")
    for (name,) in await conn.fetch(
        "SELECT relname FROM pg_class WHERE relkind = 'r' AND relnamespace = current_schema()::regnamespace "
        "AND relname ~ $1 AND NOT relispartition",
        DAY_TABLE,
    ):
        parent, _, digits = name.rpartition("_")
        try:
            day = dt.datetime.strptime(digits, "%Y%m%d").date()
        except ValueError:  # not a day: not a table of the journal's making
            continue
        if day < before:
            tables.setdefault(day, {})[parent] = name
            detached.setdefault(day, set()).add(parent)
    return [Day(day, tables[day], frozenset(detached.get(day, ()))) for day in sorted(tables)]


async def blockers(conn: asyncpg.Connection, day: Day, hold_days: int = HOLD_DAYS) -> dict[str, int]:
    """What keeps ``day`` in the journal: each reason's count, those above zero (a restore of it
    within ``hold_days`` among them)."""
    rows = _quoted(day.tables.get("txn", partition("txn", day.day)))
    found = await conn.fetchrow(_BLOCKERS.format(rows=rows), day.day, hold_days)
    return {reason: n for reason, n in found.items() if n}


async def _columns(conn: asyncpg.Connection, table: str) -> list[list[str]]:
    return [
        [name, kind]
        for name, kind in await conn.fetch(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            table,
        )
    ]


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _copy_out(table: str, columns: list[list[str]], parent: str) -> str:
    names = ", ".join(_quoted(name) for name, _ in columns)
    return f"SELECT {names} FROM {_quoted(table)} ORDER BY {ORDER[parent]}"


async def _hash_of(conn: asyncpg.Connection, query: str, also: Callable[[bytes], object] | None = None) -> str:
    digest = hashlib.sha256()

    async def take(chunk: bytes) -> None:
        digest.update(chunk)
        if also is not None:
            also(chunk)

    await conn.copy_from_query(query, output=take, format="csv", header=True)
    return digest.hexdigest()


def _read_back(file: Path) -> tuple[str, int]:
    """A table's file as read back: the SHA-256 of its CSV, and its rows."""
    digest = hashlib.sha256()
    with gzip.open(file, "rb") as raw:
        while chunk := raw.read(_CHUNK):
            digest.update(chunk)
    csv.field_size_limit(1 << 30)  # a channel's message is not capped by the journal
    with gzip.open(file, "rt", encoding="utf-8", newline="") as text:
        rows = sum(1 for _ in csv.reader(text)) - 1  # the header
    return digest.hexdigest(), rows


def read_manifest(folder: Path) -> dict:
    """The folder's manifest, its shape checked and its files read back against it."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        dt.date.fromisoformat(manifest["day"])
        for parent in ORDER:
            entry = manifest["tables"][parent]
            if entry["file"] != f"{parent}.csv.gz":  # a manifest names no file outside its folder
                raise ValueError(f"{parent}'s file is named {entry['file']!r}")
            if not entry["columns"] or not all(
                isinstance(c, list) and len(c) == 2 and all(isinstance(x, str) for x in c) for c in entry["columns"]
            ):
                raise ValueError(f"{parent}'s columns are not [name, type] pairs")
            if _read_back(folder / entry["file"]) != (entry["sha256"], entry["rows"]):
                raise ArchiveRefused(f"{folder / entry['file']}: not what {MANIFEST} says (rows or SHA-256)")
    except (OSError, ValueError, KeyError, TypeError, EOFError, csv.Error) as exc:
        raise ArchiveRefused(
            f"{folder}: not a readable archive of a journal day ({type(exc).__name__}: {exc})"
        ) from exc
    return manifest


async def archive(conn: asyncpg.Connection, day: Day, root: Path, by: str, hold_days: int = HOLD_DAYS) -> Done:
    """Copy ``day`` out to its folder under ``root`` (kept in the journal, and said why, when
    something keeps it); a folder already there is read back and checked, not written again."""
    folder = folder_of(root, day.day)
    if folder.exists():
        manifest = read_manifest(folder)
        return Done(day.day, folder, _rows(manifest), manifest=manifest)
    if not day.attached:
        raise ArchiveRefused(f"{day.day}: its tables were detached by a drop cut short, and {folder} is missing")
    await conn.execute(_AS_WRITTEN)
    partial = root / f".{folder.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(mode=0o700)
    tables = {}
    # The check and the copy in one snapshot; the day's tables named, so that their parents are not
    # locked for as long as the copy takes (the day's partitions are made under a lock on them).
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        kept = await blockers(conn, day, hold_days)
        if kept:
            shutil.rmtree(partial)
            return Done(day.day, None, {}, kept=_why(kept))
        for parent in ORDER:
            table = day.tables.get(parent, partition(parent, day.day))
            columns = await _columns(conn, table)
            file = f"{parent}.csv.gz"
            with _private(partial / file) as out, gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=0) as gz:
                digest = await _hash_of(conn, _copy_out(table, columns, parent), gz.write)
            tables[parent] = {"file": file, "rows": 0, "sha256": digest, "columns": columns, "table": table}
        version = await conn.fetchval("SELECT max(version) FROM schema_migrations")
    for parent, entry in tables.items():  # each file read back: the bytes copied, and its rows
        digest, entry["rows"] = _read_back(partial / entry["file"])
        if digest != entry["sha256"]:
            raise ArchiveRefused(f"{partial / entry['file']}: read back, not the {parent} rows copied")
    manifest = {"day": day.day.isoformat(), "schema_version": version, "tables": tables, "archived_by": by}
    with _private(partial / MANIFEST) as out:
        out.write(json.dumps(manifest, indent=2).encode())
    _sync_dir(partial)
    os.rename(partial, folder)
    _sync_dir(root)
    await record(conn, Entry(by, "journal.archive", day.day.isoformat(), after=_said(folder, tables)))
    return Done(day.day, folder, _rows(manifest), manifest=manifest)


async def drop(
    conn: asyncpg.Connection,
    day: Day,
    folder: Path,
    by: str,
    fresh: bool = False,
    hold_days: int = HOLD_DAYS,
    manifest: dict | None = None,
) -> Done:
    """Detach ``day``'s partitions and drop them, once they are checked against the archive in
    ``folder`` (before the detach, unless the archive was ``fresh``ly made from them, and after it);
    attached again and kept (``kept`` says why) if they changed since. ``manifest``: the folder's,
    if this run has read it back already (``Done.manifest``)."""
    manifest = manifest or read_manifest(folder)  # (its files read once a run: a day's are gigabytes)
    await conn.execute(_AS_WRITTEN)
    tables = {parent: day.tables.get(parent, partition(parent, day.day)) for parent in ORDER}
    rows = _rows(manifest)
    if manifest["day"] != day.day.isoformat():
        return Done(day.day, folder, rows, kept=f"{folder} is the archive of {manifest['day']}: {_ASIDE}")
    stale = await _columns_changed(conn, tables, manifest, folder)
    if not stale and day.attached:  # nothing detached for a day that would be kept
        kept = await blockers(conn, day, hold_days)
        stale = [_why(kept)] if kept else [] if fresh else await _changed(conn, tables, manifest, folder)
    if stale:
        return Done(day.day, folder, rows, kept="; ".join(stale))
    # Each outside a transaction, so that the switch's reads and writes go on meanwhile; with no
    # lock_timeout, as it waits for every transaction older than it (a report, a backup) and
    # holds nothing they or the switch's writes wait for. Cut short, the day is out of sight
    # until a drop finishes it.
    await conn.execute("SET lock_timeout = 0")
    try:
        for parent, table in tables.items():
            pending = await conn.fetchval(
                "SELECT inhdetachpending FROM pg_inherits WHERE inhrelid = $1::regclass", _quoted(table)
            )
            if pending is not None:  # still a partition, its detach maybe begun by a drop cut short
                finish = "FINALIZE" if pending else "CONCURRENTLY"
                await conn.execute(f"ALTER TABLE {parent} DETACH PARTITION {_quoted(table)} {finish}")
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:  # (the caller finds the day out of sight)
        return Done(day.day, folder, rows, kept=f"its detach did not finish ({type(exc).__name__}: {exc})")
    await conn.execute(_AS_WRITTEN)
    detached = Day(day.day, tables, frozenset(ORDER))
    async with conn.transaction():
        for table in tables.values():  # nothing writes a detached table; nothing is to, meanwhile
            await conn.execute(f"LOCK TABLE {_quoted(table)} IN ACCESS EXCLUSIVE MODE")
        stale = await _columns_changed(conn, tables, manifest, folder) or await _changed(conn, tables, manifest, folder)
        kept = await blockers(conn, detached, hold_days)
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_ID)  # as partitions are made and guarded
        if not stale and not kept:
            for table in tables.values():
                await conn.execute(f"DROP TABLE {_quoted(table)}")
            hashes = [manifest["tables"][parent]["sha256"] for parent in ORDER]
            await _done_to(conn, day.day, "dropped", hashes, folder, by)
            await record(conn, Entry(by, "journal.drop", day.day.isoformat(), after=_said(folder, manifest["tables"])))
            return Done(day.day, folder, rows, dropped=True)
        for parent, table in tables.items():
            await _attach(conn, parent, table, day.day)
    return Done(day.day, folder, rows, kept="; ".join([*stale, _why(kept)] if kept else stale))


_ASIDE = "move that folder aside and run again, to archive the day as it is now"


async def _columns_changed(conn: asyncpg.Connection, tables: dict[str, str], manifest: dict, folder: Path) -> list[str]:
    """The day's tables whose columns are not the archive's (one added since would be dropped
    unarchived), said as a reason to keep the day."""
    return [
        f"{parent}'s columns changed since {folder} was written: {_ASIDE}"
        for parent, table in tables.items()
        if await _columns(conn, table) != manifest["tables"][parent]["columns"]
    ]


async def _changed(conn: asyncpg.Connection, tables: dict[str, str], manifest: dict, folder: Path) -> list[str]:
    """The day's tables whose rows are not the archive's bytes, said as a reason to keep the day."""
    return [
        f"{parent} changed since {folder} was written: {_ASIDE}"
        for parent, table in tables.items()
        if await _hash_of(conn, _copy_out(table, manifest["tables"][parent]["columns"], parent))
        != manifest["tables"][parent]["sha256"]
    ]


async def restore(conn: asyncpg.Connection, folder: Path, by: str) -> Done:
    """Read an archived day back in as the journal's partitions of that day, owned and guarded as
    every partition is: only a folder whose SHA-256 this journal recorded when it dropped the day
    (``journal_retention``, which the switch's role cannot write), its rows read in checked against it
    byte for byte, none of them open."""
    manifest = read_manifest(folder)
    day = dt.date.fromisoformat(manifest["day"])
    await conn.execute(_AS_WRITTEN)
    owner = await conn.fetchval("SELECT relowner::regrole::text FROM pg_class WHERE oid = 'txn'::regclass")
    dropped = await conn.fetch(
        "SELECT txn_sha256, txn_move_sha256 FROM journal_retention WHERE day = $1 AND action = 'dropped' "
        "ORDER BY id DESC LIMIT 1",
        day,
    )
    if [tuple(row) for row in dropped] != [tuple(manifest["tables"][parent]["sha256"] for parent in ORDER)]:
        raise ArchiveRefused(
            f"{folder}: this journal recorded no drop of {day} with these files' SHA-256 as its last "
            "(a folder of another journal, an earlier drop's, or altered): nothing read in"
        )
    if [d for d in await days_before(conn, day + dt.timedelta(days=1)) if d.day == day]:
        raise ArchiveRefused(f"{day}: the journal has this day's tables already: nothing read in")
    tables = {parent: partition(parent, day) for parent in ORDER}
    bounds = f"tx_date >= '{day}' AND tx_date < '{day + dt.timedelta(days=1)}'"
    async with conn.transaction():
        try:  # its partitions the owner's, whoever of its members runs it
            await conn.execute(f"SET LOCAL ROLE {owner}")
        except asyncpg.InsufficientPrivilegeError as exc:
            raise ArchiveRefused(
                f"only the journal's owner ({owner}), or a role that may become it, restores a day"
            ) from exc
        for parent, table in tables.items():  # read in, indexed and checked as tables of their own first
            entry = manifest["tables"][parent]
            await conn.execute(
                f"CREATE TABLE {_quoted(table)} (LIKE {parent} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
                f"INCLUDING INDEXES, CONSTRAINT restored_day CHECK ({bounds}))"  # the attach neither scans nor indexes
            )
            with gzip.open(folder / entry["file"], "rb") as source:
                names = [name for name, _ in entry["columns"]]
                await conn.copy_to_table(table, source=source, columns=names, format="csv", header=True)
            if await _hash_of(conn, _copy_out(table, entry["columns"], parent)) != entry["sha256"]:
                raise ArchiveRefused(f"{folder}: {parent}'s rows read in are not those archived: nothing read in")
        found = await blockers(conn, Day(day, tables, frozenset(ORDER)), hold_days=0)
        open_rows = {reason: n for reason, n in found.items() if reason in _ROW_REASONS}
        if open_rows:  # no day is dropped so: the folder is not what was dropped
            raise ArchiveRefused(f"{folder}: {_why(open_rows)}, as no day dropped is: nothing read in")
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_ID)
        for parent, table in tables.items():
            await _attach(conn, parent, table, day)
            await conn.execute(f"ALTER TABLE {_quoted(table)} DROP CONSTRAINT restored_day")
        hashes = [manifest["tables"][parent]["sha256"] for parent in ORDER]
        await _done_to(conn, day, "restored", hashes, folder, by)
        await record(conn, Entry(by, "journal.restore", day.isoformat(), after=_said(folder, manifest["tables"])))
    return Done(day, folder, _rows(manifest))


async def out_of_sight(conn: asyncpg.Connection, day: dt.date) -> bool:
    """Whether ``day``'s tables are detached, or being detached, from the journal (a drop cut short)."""
    return any(d.day == day and not d.attached for d in await days_before(conn, day + dt.timedelta(days=1)))


async def _attach(conn: asyncpg.Connection, parent: str, table: str, day: dt.date) -> None:
    """Attach ``table`` as ``parent``'s partition of ``day``, guarded as every partition is (a table
    detached keeps its own guard's triggers, whose transition tables a table to attach may not have)."""
    for trigger in _GUARDS:
        await conn.execute(f"DROP TRIGGER IF EXISTS {trigger} ON {_quoted(table)}")
    bounds = f"FROM ('{day}') TO ('{day + dt.timedelta(days=1)}')"
    await conn.execute(f"ALTER TABLE {parent} ATTACH PARTITION {_quoted(table)} FOR VALUES {bounds}")
    await conn.execute("SELECT journal_guard_partition($1::regclass)", _quoted(table))


async def _done_to(
    conn: asyncpg.Connection, day: dt.date, action: str, hashes: list[str], folder: Path, by: str
) -> None:
    await conn.execute(
        "INSERT INTO journal_retention (day, action, txn_sha256, txn_move_sha256, folder, by_whom) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        day, action, *hashes, str(folder.resolve()), by,
    )  # fmt: skip


def _rows(manifest: dict) -> dict[str, int]:
    return {parent: manifest["tables"][parent]["rows"] for parent in ORDER}


def _why(kept: dict[str, int]) -> str:
    return ", ".join(
        f"{n} {reason} ({HINTS[reason]})" if reason in HINTS else f"{n} {reason}" for reason, n in kept.items()
    )


def _said(folder: Path, tables: dict) -> dict:
    """What an audit row keeps of an archive: where, and each table's rows and SHA-256."""
    return {"folder": str(folder), **{p: {"rows": t["rows"], "sha256": t["sha256"]} for p, t in tables.items()}}


class _private(io.FileIO):
    """A new file only its owner may read (the journal's masked cards and fingerprints), synced to
    disk when closed."""

    def __init__(self, path: Path) -> None:
        super().__init__(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")

    def close(self) -> None:
        if not self.closed:
            os.fsync(self.fileno())
        super().close()


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
