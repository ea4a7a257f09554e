"""Retention of the journal: a day's partitions of ``txn`` and ``txn_move`` copied out to a folder
(``paysw journal archive``), read back and checked, and with ``drop`` detached and dropped, as the
journal's owner; read back in by ``restore`` for an inquiry or a dispute.

A day is archived only when the switch has no more business with it (``_BLOCKERS``):
- it is at least ``keep_days`` old (at least ``MIN_KEEP_DAYS``: a refund up to a year after its
  payment reads its purchase);
- none of its transactions is open or owes a reversal (what the resolver works on);
- every payment and refund whose money was kept is settled (settlement reads the journal);
- no reconciliation difference is open on one of its transactions, no dead letter unresolved, no
  merchant notification still being delivered.

The folder ``journal-YYYY-MM-DD`` holds each table's rows as gzip'd CSV with a header, as
PostgreSQL's COPY writes them (nothing re-encoded), in key order, and ``manifest.json``: the day,
the journal's schema version, and per table its columns, rows and the SHA-256 of the CSV. A drop
detaches the partitions (``CONCURRENTLY``: the switch's writes to other days never wait), checks
the detached tables again against the manifest, and drops them with an audit row in one
transaction; a day that changed in between is attached again, not dropped. The records beside the
journal (reversals, reconciliation, settlement, notifications, the audit) are not partitioned by
day and stay."""

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
from switch.journal.machine import DUE_SQL, KEPT, PURCHASE, REFUND, sql_set
from switch.journal.schema import LOCK_ID, partition

MIN_KEEP_DAYS = 366
KEEP_DAYS = 400
# Each table's rows in an order that makes the same rows the same bytes (the restore's check).
# Text in bytes' order and times in UTC (``_AS_WRITTEN``), so that a restore into another database
# checks the same bytes.
ORDER = {
    "txn": 'terminal_id COLLATE "C", stan COLLATE "C", transmitted COLLATE "C"',
    "txn_move": 'rrn COLLATE "C", moved_at, from_state COLLATE "C" NULLS FIRST, to_state COLLATE "C"',
}
_AS_WRITTEN = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET bytea_output = 'hex'; SET extra_float_digits = 1"
MANIFEST = "manifest.json"
_GUARDS = ("txn_record_inserts", "txn_record_moves", "journal_keeps_all")  # schema's journal_guard_partition
_BOUND = re.compile(r"^FOR VALUES FROM \('(\d{4}-\d{2}-\d{2})'\) TO \('(\d{4}-\d{2}-\d{2})'\)$")
_CHUNK = 1 << 20

# What keeps a day in the journal, counted over ``{rows}``: the day's rows of ``txn`` (or its
# partition detached). A name for each, as the command says it.
_BLOCKERS = f"""
SELECT
    (SELECT count(*) FROM {{rows}} t WHERE t.tx_date = $1 AND {DUE_SQL}) AS "open or owing a reversal",
    (SELECT count(*) FROM {{rows}} t
     WHERE t.tx_date = $1 AND t.txn_type IN ('{PURCHASE}', '{REFUND}') AND t.state IN {sql_set(KEPT)}
       AND t.reversal_requested_at IS NULL
       AND NOT EXISTS (SELECT 1 FROM settlement_item s WHERE s.out_trade_no = t.out_trade_no
                       AND s.entry = CASE t.txn_type WHEN '{PURCHASE}' THEN 'PAY' ELSE 'REFUND' END)
    ) AS "not settled",
    (SELECT count(*) FROM recon_item i
     WHERE i.status = 'OPEN' AND i.rrn IN (SELECT rrn FROM {{rows}} t WHERE t.tx_date = $1)
    ) AS "with a reconciliation difference open",
    (SELECT count(*) FROM dead_letter WHERE tx_date = $1 AND resolved_at IS NULL) AS "dead letters unresolved",
    (SELECT count(*) FROM notice_outbox WHERE tx_date = $1 AND delivered_at IS NULL AND dead_at IS NULL)
        AS "notifications undelivered"
"""


class ArchiveRefused(RuntimeError):
    """A day cannot be archived, dropped or restored as asked; the message says why."""


@dataclass(frozen=True, slots=True)
class Day:
    day: dt.date
    tables: dict[str, str]  # parent: the day's table (its partition, or left detached by a drop cut short)
    attached: bool


@dataclass(frozen=True, slots=True)
class Done:
    day: dt.date
    folder: Path | None  # None: kept in the journal (``kept`` says why)
    rows: dict[str, int]
    kept: str = ""
    dropped: bool = False


def folder_of(root: Path, day: dt.date) -> Path:
    return root / f"journal-{day:%Y-%m-%d}"


async def days_before(conn: asyncpg.Connection, before: dt.date) -> list[Day]:
    """The journal's days before ``before``, oldest first: each day's partitions of ``txn`` and
    ``txn_move``, and the tables of a drop cut short after their detach (by their names)."""
    rows = await conn.fetch(
        "SELECT p.relname AS parent, c.relname AS name, pg_get_expr(c.relpartbound, c.oid) AS bound "
        "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent "
        "WHERE i.inhparent IN ('txn'::regclass, 'txn_move'::regclass)"
    )
    found: dict[dt.date, dict[str, str]] = {}
    odd = []
    for row in rows:
        bound = _BOUND.match(row["bound"] or "")
        first = dt.date.fromisoformat(bound[1]) if bound else None
        if first is None or dt.date.fromisoformat(bound[2]) != first + dt.timedelta(days=1):
            odd.append(row["name"])
        elif first < before:
            found.setdefault(first, {})[row["parent"]] = row["name"]
    if odd:
        raise ArchiveRefused(f"partitions not of one day each, for a person to look at: {', '.join(sorted(odd))}")
    days = [Day(day, tables, True) for day, tables in found.items()]
    left = await conn.fetch(  # detached by a drop that did not get to its DROP
        "SELECT relname FROM pg_class WHERE relkind = 'r' AND relnamespace = current_schema()::regnamespace "
        "AND relname ~ '^txn(_move)?_[0-9]{8}$' AND NOT relispartition"
    )
    detached: dict[dt.date, dict[str, str]] = {}
    for (name,) in left:
        parent, _, digits = name.rpartition("_")
        day = dt.datetime.strptime(digits, "%Y%m%d").date()
        if day < before and day not in found:
            detached.setdefault(day, {})[parent] = name
    days += [Day(day, tables, False) for day, tables in detached.items()]
    return sorted(days, key=lambda d: d.day)


async def blockers(conn: asyncpg.Connection, day: Day) -> dict[str, int]:
    """What keeps ``day`` in the journal: each reason's count, those above zero."""
    rows = "txn" if day.attached else _quoted(day.tables.get("txn", partition("txn", day.day)))
    found = await conn.fetchrow(_BLOCKERS.format(rows=rows), day.day)
    return {reason: n for reason, n in found.items() if n}


async def _columns(conn: asyncpg.Connection, table: str) -> list[tuple[str, str]]:
    return [
        (name, kind)
        for name, kind in await conn.fetch(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            table,
        )
    ]


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _copy_out(table: str, columns: list[str], parent: str) -> str:
    names = ", ".join(_quoted(c) for c in columns)
    return f"SELECT {names} FROM {_quoted(table)} ORDER BY {ORDER[parent]}"


async def _hash_of(conn: asyncpg.Connection, query: str, also: Callable[[bytes], None] | None = None) -> str:
    digest = hashlib.sha256()

    async def take(chunk: bytes) -> None:
        digest.update(chunk)
        if also is not None:
            also(chunk)

    await conn.copy_from_query(query, output=take, format="csv", header=True)
    return digest.hexdigest()


def read_manifest(folder: Path) -> dict:
    """The folder's manifest, its files read back and checked against it (rows and SHA-256)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        tables = manifest["tables"]
        for parent in ORDER:
            entry = tables[parent]
            if entry["file"] != f"{parent}.csv.gz":  # a manifest names no file outside its folder
                raise ValueError(f"{parent}'s file is named {entry['file']!r}")
            digest, rows = hashlib.sha256(), -1
            with gzip.open(folder / entry["file"], "rb") as raw:
                while chunk := raw.read(_CHUNK):
                    digest.update(chunk)
            with gzip.open(folder / entry["file"], "rt", encoding="utf-8", newline="") as text:
                rows = sum(1 for _ in csv.reader(text)) - 1  # the header
            if (digest.hexdigest(), rows) != (entry["sha256"], entry["rows"]):
                raise ArchiveRefused(f"{folder / entry['file']}: not what {MANIFEST} says (rows or SHA-256)")
    except (OSError, ValueError, KeyError, TypeError, EOFError, gzip.BadGzipFile) as exc:
        raise ArchiveRefused(
            f"{folder}: not a readable archive of a journal day ({type(exc).__name__}: {exc})"
        ) from exc
    return manifest


async def archive(conn: asyncpg.Connection, day: Day, root: Path, by: str) -> Done:
    """Copy ``day`` out to its folder under ``root`` (kept in the journal, and said why, when
    something keeps it); a folder already there is read back and checked, not written again."""
    folder = folder_of(root, day.day)
    if folder.exists():
        manifest = read_manifest(folder)
        return Done(day.day, folder, {p: manifest["tables"][p]["rows"] for p in ORDER})
    if not day.attached:
        raise ArchiveRefused(f"{day.day}: its tables were detached by a drop cut short, and {folder} is missing")
    await conn.execute(_AS_WRITTEN)
    partial = root / f".{folder.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(mode=0o700, parents=True)
    tables = {}
    async with conn.transaction(isolation="repeatable_read", readonly=True):  # the check and the copy: one snapshot
        kept = await blockers(conn, day)
        if kept:
            shutil.rmtree(partial)
            return Done(day.day, None, {}, kept=", ".join(f"{n} {reason}" for reason, n in kept.items()))
        for parent in ORDER:
            table = day.tables.get(parent, partition(parent, day.day))
            columns = await _columns(conn, parent)
            names = [name for name, _ in columns]
            file = f"{parent}.csv.gz"
            with _private(partial / file) as out, gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as packed:
                digest = await _hash_of(conn, _copy_out(table, names, parent), packed.write)
            rows = await conn.fetchval(f"SELECT count(*) FROM {_quoted(table)}")
            tables[parent] = {"file": file, "rows": rows, "sha256": digest, "columns": columns, "table": table}
        version = await conn.fetchval("SELECT max(version) FROM schema_migrations")
    manifest = {"day": day.day.isoformat(), "schema_version": version, "tables": tables, "archived_by": by}
    with _private(partial / MANIFEST) as out:
        out.write(json.dumps(manifest, indent=2).encode())
    read_manifest(partial)  # the files as written, read back
    os.rename(partial, folder)
    _sync_dir(root)
    await record(conn, Entry(by, "journal.archive", day.day.isoformat(), after=_said(folder, tables)))
    return Done(day.day, folder, {p: t["rows"] for p, t in tables.items()})


async def drop(conn: asyncpg.Connection, day: Day, folder: Path, by: str) -> Done:
    """Detach ``day``'s partitions and drop them, once they are checked again against the archive in
    ``folder``; attached again and kept (``kept`` says why) if they changed since."""
    manifest = read_manifest(folder)
    await conn.execute(_AS_WRITTEN)
    tables = {parent: day.tables.get(parent, partition(parent, day.day)) for parent in ORDER}
    rows = {p: manifest["tables"][p]["rows"] for p in ORDER}
    for parent, table in tables.items():
        if day.attached:  # outside a transaction: the switch's writes to other days go on meanwhile
            pending = await conn.fetchval(
                "SELECT inhdetachpending FROM pg_inherits WHERE inhrelid = $1::regclass", _quoted(table)
            )
            finish = "FINALIZE" if pending else "CONCURRENTLY"
            await conn.execute(f"ALTER TABLE {parent} DETACH PARTITION {_quoted(table)} {finish}")
    detached = Day(day.day, tables, False)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_ID)  # as partitions are made
        for table in tables.values():
            await conn.execute(f"LOCK TABLE {_quoted(table)} IN ACCESS EXCLUSIVE MODE")
        changed = [
            parent
            for parent, table in tables.items()
            if await _hash_of(conn, _copy_out(table, _names(manifest, parent), parent))
            != manifest["tables"][parent]["sha256"]
        ]
        kept = await blockers(conn, detached)
        if not changed and not kept:
            for table in tables.values():
                await conn.execute(f"DROP TABLE {_quoted(table)}")
            await record(conn, Entry(by, "journal.drop", day.day.isoformat(), after=_said(folder, manifest["tables"])))
            return Done(day.day, folder, rows, dropped=True)
        for parent, table in tables.items():
            await _attach(conn, parent, table, day.day)
    why = [f"{', '.join(changed)} changed since {folder} was written"] if changed else []
    why += [f"{n} {reason}" for reason, n in kept.items()]
    return Done(day.day, folder, rows, kept="; ".join(why))


async def restore(conn: asyncpg.Connection, folder: Path, by: str) -> Done:
    """Read an archived day back in as the journal's partitions of that day, guarded as every
    partition is, and check the rows read back against the manifest byte for byte."""
    manifest = read_manifest(folder)
    day = dt.date.fromisoformat(manifest["day"])
    await conn.execute(_AS_WRITTEN)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_ID)
        there = [d for d in await days_before(conn, day + dt.timedelta(days=1)) if d.day == day]
        if there:
            names = ", ".join(there[0].tables.values())
            raise ArchiveRefused(f"{day}: the journal has this day's tables already ({names}): nothing read in")
        for parent in ORDER:
            entry = manifest["tables"][parent]
            columns = [tuple(c) for c in entry["columns"]]
            ours = dict(await _columns(conn, parent))
            unknown = [f"{name} {kind}" for name, kind in columns if ours.get(name) != kind]
            if unknown:
                raise ArchiveRefused(f"{folder}: {parent}'s columns {', '.join(unknown)} are not this journal's")
            table = partition(parent, day)
            await conn.execute(
                f"CREATE TABLE {_quoted(table)} (LIKE {parent} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
            )
            with gzip.open(folder / entry["file"], "rb") as source:
                await conn.copy_to_table(
                    table, source=source, columns=[c for c, _ in columns], format="csv", header=True
                )
            await _attach(conn, parent, table, day)
            if await _hash_of(conn, _copy_out(table, _names(manifest, parent), parent)) != entry["sha256"]:
                raise ArchiveRefused(f"{folder}: {parent}'s rows read in are not those archived: nothing read in")
        await record(conn, Entry(by, "journal.restore", day.isoformat(), after=_said(folder, manifest["tables"])))
    return Done(day, folder, {p: manifest["tables"][p]["rows"] for p in ORDER})


async def _attach(conn: asyncpg.Connection, parent: str, table: str, day: dt.date) -> None:
    """Attach ``table`` as ``parent``'s partition of ``day``, guarded as every partition is (a table
    detached keeps its own guard's triggers, whose transition tables a table to attach may not have)."""
    for trigger in _GUARDS:
        await conn.execute(f"DROP TRIGGER IF EXISTS {trigger} ON {_quoted(table)}")
    bounds = f"FROM ('{day}') TO ('{day + dt.timedelta(days=1)}')"
    await conn.execute(f"ALTER TABLE {parent} ATTACH PARTITION {_quoted(table)} FOR VALUES {bounds}")
    await conn.execute("SELECT journal_guard_partition($1::regclass)", _quoted(table))


def _names(manifest: dict, parent: str) -> list[str]:
    return [name for name, _ in manifest["tables"][parent]["columns"]]


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
