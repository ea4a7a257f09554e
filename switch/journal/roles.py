"""The switch's runtime role: what it may do in the journal's database, granted by the journal's
owner, who keeps the rest.

A role that owns a table may switch its triggers off (``ALTER TABLE ... DISABLE TRIGGER USER``),
truncate it or drop it, and with them the journal's guards (migrations 10, 14 and 25 to 27). So
the switch runs as a role that owns nothing: it reads, adds and updates rows, deletes only rows
that expire, are rebuilt or a person removes, and never writes the schema's version, the state
machine or the record of moves. The
owner migrates (``schema.migrate``); the days' partitions are made and analyzed on the switch's
behalf by functions the owner defined (migration 28). The embedded PostgreSQL is set up this way
by ``runtime_url``; an external one by ``paysw journal migrate``.
"""

from __future__ import annotations

import contextlib
import os
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from switch.journal.schema import DAY_TABLE, LOCK_ID, MIGRATIONS, migrate
from switch.refused import JournalRefused, RoleRefused

RUNTIME_ROLE = "paysw_switch"  # the embedded PostgreSQL's
# The owner's URL, for `paysw journal migrate` (never on a command line, which other users read).
OWNER_URL_ENV = "SWITCH_DATABASE_OWNER_URL"
# The embedded PostgreSQL's superuser URL, from a `paysw run --workers N` supervisor to its workers
# (each migrates at its start, as a rolling restart's new code may need).
EMBEDDED_OWNER_ENV = "PAYSW_EMBEDDED_OWNER_URL"
# The switch reads every table and adds to every one but these. Written by the owner alone: the
# schema's version and the state machine (schema.migrate), and the moves and the notifications
# of final ones (the guard's triggers, as the owner: migration 28), and what retention did to each
# day (what a restore may read back: switch.journal.archive).
NOT_ADDED_TO = ("schema_migrations", "txn_state", "txn_state_move", "txn_move", "notice_outbox", "journal_retention")
# The columns it changes in place; every other row it only adds. A transaction's key, amount,
# card and merchant stay as written ahead: its outcome, the resolver's and the reversal's marks,
# what its voids and refunds took of it, and a void's or refund's link to its purchase (set once,
# after its write-ahead) are its only changes; an outbox row's delivery, a reversal's answer, an
# order's QR code, and so on.
UPDATED: dict[str, tuple[str, ...]] = {
    "txn": (
        "state", "response_code", "auth_id", "channel_code", "channel_message", "channel_txn_id", "next_check_at",
        "leased_until", "checks", "checks_at_retry", "retried_at", "reversal_requested_at", "reserved_fen",
        "refunded_fen", "original_rrn",
    ),
    "notice_outbox": ("next_at", "delivered_at", "attempts", "last_error", "dead_at"),
    "reversal": ("code",),
    "merchant_order": ("qr_code",),
    "dead_letter": ("state", "reason", "reopened_at", "resolved_at", "resolution"),
    "merchant_endpoint": ("url",),
    "live_config": ("body", "version", "changed_at", "changed_by"),
    "config_reload": ("result", "detail", "at"),
    "console_session": ("expires_at",),
    "console_user": ("password_hash",),
    "recon_batch": ("step", "error", "updated_at", "statement", "fetched_at", "handling", "summary", "settled_at"),
    "recon_item": ("rrn", "journal_state", "journal_fen", "status", "note"),
    "settlement_mark": ("day", "seen_below", "unseen", "at"),
    "terminal_key_request": ("sent_at", "stan"),
    "config_change": ("decided_by", "decided_at", "outcome"),
}  # fmt: skip
# The tables the switch deletes rows from: reconciliation's working tables (rebuilt by a batch run
# afresh), what expires (sessions, sign-in failures, nonces, reload reports, superseded keys) and
# what a person removes (list entries, endpoints, live sections). Every other row is kept.
DELETED_FROM = (
    "recon_statement_row", "recon_journal_row", "recon_item", "console_session", "console_sign_in_failure",
    "merchant_nonce", "config_reload", "hsm_key", "risk_list", "merchant_endpoint", "live_config",
)  # fmt: skip
# The partitions' upkeep, done as the owner (migration 28).
UPKEEP = ("journal_make_days(date, date)", "journal_analyze_young(text[], bigint)")


# What would let a role undo the guards whatever it is granted, each with its reason: the owner's
# powers, by membership or by making objects (a schema of the owner's name, a function the
# owner's would call) that the owner's statements would run; and the predefined roles that
# write any table or run programs on the server.
_POWERS_SQL = """
SELECT r.rolsuper AS "is a superuser",
       r.rolcreaterole AS "may create roles",
       pg_has_role(r.oid, coalesce((SELECT relowner FROM pg_class WHERE oid = to_regclass('txn')),
                                   (SELECT oid FROM pg_roles WHERE rolname = current_user)), 'MEMBER')
           AS "is or may become the journal's owner",
       pg_has_role(r.oid, (SELECT datdba FROM pg_database WHERE datname = current_database()), 'MEMBER')
           AS "owns the database",
       has_database_privilege(r.oid, current_database(), 'CREATE') AS "may create schemas in the database",
       pg_has_role(r.oid, (SELECT nspowner FROM pg_namespace WHERE nspname = current_schema()), 'MEMBER')
           AS "owns the journal's schema",
       has_schema_privilege(r.oid, current_schema(), 'CREATE') AS "may create in the journal's schema",
       pg_has_role(r.oid, 'pg_write_all_data', 'MEMBER') AS "is a member of pg_write_all_data",
       pg_has_role(r.oid, 'pg_execute_server_program', 'MEMBER') AS "is a member of pg_execute_server_program"
FROM pg_roles r WHERE r.rolname = $1
"""
# What the role may do, after the grants, beyond reading: on every table and partition, the
# guard's functions and the database, however it came by it (granted to PUBLIC, or to a role it
# belongs to): (table, privilege, column).
_HELD_SQL = """
SELECT c.oid::regclass::text AS tbl, p.priv, NULL AS col
FROM pg_class c CROSS JOIN unnest(ARRAY['INSERT', 'DELETE', 'TRUNCATE', 'TRIGGER', 'REFERENCES']) AS p(priv)
WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p')
  AND has_table_privilege($1, c.oid, p.priv)
UNION ALL
SELECT c.oid::regclass::text, 'UPDATE', a.attname
FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p')
  AND has_column_privilege($1, c.oid, a.attnum, 'UPDATE')
UNION ALL  -- the guard's functions, which record moves as the owner (put on a table of its own)
SELECT f, 'EXECUTE', NULL FROM unnest(ARRAY['txn_record_inserts()', 'txn_record_moves()']) AS f
WHERE has_function_privilege($1, f, 'EXECUTE')
UNION ALL  -- a sequence set back would hand out RRNs again
SELECT c.oid::regclass::text, 'UPDATE', NULL FROM pg_class c
WHERE c.relnamespace = current_schema()::regnamespace  -- CASE: has_sequence_privilege on a table is an error
  AND CASE WHEN c.relkind = 'S' THEN has_sequence_privilege($1, c.oid, 'UPDATE') ELSE false END
UNION ALL
SELECT current_database(), 'TEMPORARY', NULL WHERE has_database_privilege($1, current_database(), 'TEMPORARY')
"""


async def refuse_strong(conn: asyncpg.Connection, role: str) -> None:
    """``RoleRefused`` unless ``role`` exists and could not undo the guards whatever it is
    granted (``conn`` the owner's: checked before it migrates, and again as it grants)."""
    powers = await conn.fetchrow(_POWERS_SQL, role)
    if powers is None:
        raise RoleRefused(f"role {role} does not exist: create it (a login that owns nothing) first")
    held = [power for power, holds in powers.items() if holds]
    defaults = await conn.fetchval(  # what the owner makes later (a day's partition) would be granted it
        "SELECT count(*) FROM pg_default_acl d, aclexplode(d.defaclacl) a WHERE d.defaclobjtype = 'r' "
        "AND (a.grantee = 0 OR pg_has_role((SELECT oid FROM pg_roles WHERE rolname = $1), a.grantee, 'MEMBER'))",
        role,
    )
    if defaults:
        held.append("is granted tables by default privileges (ALTER DEFAULT PRIVILEGES), itself or as PUBLIC")
    if held:
        raise RoleRefused(f"role {role} {'; '.join(held)}: the switch needs a role that owns nothing")


async def grant(conn: asyncpg.Connection, role: str) -> None:
    """Grant ``role`` the switch's part and nothing more, on the journal's tables as they are now
    (``conn`` the owner's, after ``migrate``: run again after each); ``RoleRefused`` if the role
    could undo the guards, or holds more however it came by it (then nothing is granted)."""
    await refuse_strong(conn, role)
    to = await conn.fetchval("SELECT quote_ident($1)", role)
    schema = await conn.fetchval("SELECT quote_ident(current_schema())")
    database = await conn.fetchval("SELECT quote_ident(current_database())")
    tables = await _tables(conn)
    ours = _part(tables)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_ID)  # grants at once: "tuple concurrently updated"
        # No temporary objects: the switch makes none, and a trigger or a cast of its own making
        # is how a caller would reach into a function that runs as the owner.
        await conn.execute(f"REVOKE TEMPORARY ON DATABASE {database} FROM PUBLIC, {to}")
        await conn.execute(f"GRANT USAGE ON SCHEMA {schema} TO {to}")
        await conn.execute(f"REVOKE ALL ON {', '.join(tables)} FROM {to}")  # whatever was granted before
        for privilege in ("SELECT", "INSERT", "DELETE"):
            on = sorted(table for table, held, _ in ours if held == privilege)
            await conn.execute(f"GRANT {privilege} ON {', '.join(on)} TO {to}")
        for table, columns in UPDATED.items():
            await conn.execute(f"GRANT UPDATE ({', '.join(columns)}) ON {table} TO {to}")
        await conn.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema} FROM {to}")
        await conn.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {to}")
        await conn.execute(f"GRANT EXECUTE ON FUNCTION {', '.join(UPKEEP)} TO {to}")
        beyond = [_said(*row) for row in await conn.fetch(_HELD_SQL, role) if tuple(row) not in ours]
        if beyond:  # the grants are undone with the transaction
            raise RoleRefused(
                f"role {role} may do more than the switch does, granted to PUBLIC or to a role it belongs to: "
                f"{', '.join(beyond[:8])}{' ...' if len(beyond) > 8 else ''}"
            )


async def lacking(conn: asyncpg.Connection) -> list[str]:
    """What of this release's part the role connected may not do (its grants an earlier
    release's, say), as ``grant`` would give it."""
    wanted = sorted(_part(await _tables(conn))) + [(f, "EXECUTE", None) for f in UPKEEP]
    wanted += [(s, "USAGE", None) for s in await _sequences(conn)]  # (a later migration's sequence, say)
    rows = await conn.fetch(
        "SELECT t, p, c FROM unnest($1::text[], $2::text[], $3::text[]) AS w(t, p, c) WHERE NOT CASE "
        "WHEN p = 'EXECUTE' THEN has_function_privilege(t, p) WHEN p = 'USAGE' THEN has_sequence_privilege(t, p) "
        "WHEN c IS NULL THEN has_table_privilege(t, p) ELSE has_column_privilege(t, c, p) END",
        *map(list, zip(*wanted, strict=True)),
    )
    return [_said(*row) for row in rows]


async def _tables(conn: asyncpg.Connection) -> dict[str, bool]:
    """The journal's tables, and whether each is a partition or a day's table detached (reached
    through its parent alone, if at all: the switch never names one)."""
    rows = await conn.fetch(
        "SELECT c.oid::regclass::text, c.relispartition OR (c.relkind = 'r' AND c.relname ~ $1) FROM pg_class c "
        "WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p') ORDER BY 1",
        DAY_TABLE,
    )
    return {name: partition for name, partition in rows}


async def _sequences(conn: asyncpg.Connection) -> list[str]:
    """The journal's sequences, which ``grant`` gives the switch the use of."""
    rows = await conn.fetch(
        "SELECT c.oid::regclass::text FROM pg_class c "
        "WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'S' ORDER BY 1"
    )
    return [row[0] for row in rows]


def _part(tables: dict[str, bool]) -> set[tuple[str, str, str | None]]:
    """The switch's part of ``tables``: (table, privilege, column, or None for the whole table)."""
    parents = [table for table, partition in tables.items() if not partition]
    part = {(table, "SELECT", None) for table in parents}
    part |= {(table, "INSERT", None) for table in parents if table not in NOT_ADDED_TO}
    part |= {(table, "DELETE", None) for table in DELETED_FROM}
    return part | {(table, "UPDATE", column) for table, columns in UPDATED.items() for column in columns}


def _said(table: str, privilege: str, column: str | None) -> str:
    return f"{privilege} on {table}" + (f" ({column})" if column else "")


async def prepare(owner_url: str, role: str, make_role: bool = False) -> int:
    """Migrate the journal at ``owner_url`` as its owner and grant ``role`` the switch's part;
    with ``make_role``, make it first if there is none (a login without a password: for a server
    that trusts its local connections, as the embedded one does). Returns the schema version. A
    journal a later release migrated keeps that release's grants: they are its to give."""
    conn = await asyncpg.connect(owner_url)
    try:
        if make_role:
            await _make_role(conn, role)
        await refuse_strong(conn, role)  # before anything runs as the owner
        version = await migrate(conn)
        if not await owns_journal(conn):
            raise JournalRefused(
                f"role {await conn.fetchval('SELECT current_user')} of the owner's URL does not own the journal's "
                "tables: give the URL of the role that made them"
            )
        if version == len(MIGRATIONS):
            await grant(conn, role)
        return version
    finally:
        await conn.close()


async def _make_role(conn: asyncpg.Connection, role: str) -> None:
    """Make ``role`` if there is none: another database's start may make it at the same moment (a
    role is the server's, an advisory lock a database's)."""
    if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", role):
        return
    with contextlib.suppress(asyncpg.DuplicateObjectError, asyncpg.UniqueViolationError):
        await conn.execute(f"CREATE ROLE {await conn.fetchval('SELECT quote_ident($1)', role)} LOGIN")


async def runtime_url(owner_url: str, role: str = RUNTIME_ROLE) -> str:
    """``prepare`` the journal at ``owner_url`` for ``role``, made if need be; the URL of the same
    database as ``role``."""
    await prepare(owner_url, role, make_role=True)
    return as_role(owner_url, role)


async def owns_journal(conn: asyncpg.Connection) -> bool:
    """Whether the role connected owns the journal's tables, or may do anything (a superuser):
    then it may also switch their guards off."""
    owner = "(SELECT relowner FROM pg_class WHERE oid = 'txn'::regclass)"
    return await conn.fetchval(f"SELECT pg_has_role({owner}, 'MEMBER')")


def take_owner_urls() -> str:
    """Take the owners' URLs out of this process's environment, which the switch's children (Ray's
    among them) would inherit; the embedded one's, which only a worker's supervisor gives."""
    os.environ.pop(OWNER_URL_ENV, None)
    return os.environ.pop(EMBEDDED_OWNER_ENV, "")


def as_role(url: str, role: str) -> str:
    """``url`` with ``role`` for its user and no password."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{quote(role, safe='')}@{host}"))


def user_of(url: str) -> str:
    """The user a PostgreSQL URL connects as ('' when it names none)."""
    return urlsplit(url).username or ""
