"""The journal on a real PostgreSQL: schema, partitions, group commit, invariant 2, state moves."""

import asyncio
import contextlib
import datetime as dt
import itertools
import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from risk.engine import Hit
from switch.journal import Event, Journal, NewTxn, Original, Report, State, hand_to_resolver, retry_dead_letter, store
from switch.journal.roles import RUNTIME_ROLE, as_role, grant, owns_journal, prepare, runtime_url
from switch.journal.rrns import RRN_BLOCK
from switch.journal.schema import MIGRATIONS, analyze_young, ensure_partitions, migrate
from switch.journal.store import _CLAIM_SQL, _MOVE_SQL, WRITER_LOCK_WAIT_MS, _columns
from switch.refused import JournalRefused, RoleRefused, SchemaNotCurrent
from tests.conftest import run
from tests.support import stalled_backends, waits_for_a_lock

TODAY = dt.datetime.now(dt.UTC).date()
UNSERVED_CHANNEL = "journal-test"  # synthetic rows: no switch serves (or resolves) this channel
_stans = itertools.count(1)


def new_txn(rrn: str, terminal: str | None = None, amount: int = 100) -> NewTxn:
    terminal = terminal or f"J{uuid.uuid4().hex[:7].upper()}"
    return NewTxn(
        TODAY,
        terminal,
        f"{next(_stans) % 1_000_000:06d}",
        "1123120000",
        rrn,
        "purchase",
        "0200",
        "000000",
        "898310048990001",
        amount,
        "156",
        "120000",
        "1123",
        "031",
        "134567********6700",
        b"pan-hash",
        UNSERVED_CHANNEL,
        f"{TODAY:%Y%m%d}{rrn}",
        b"request-hash",
        dt.datetime.now(dt.UTC),
        dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
    )


def undo_of(purchase: NewTxn, rrn: str, txn_type: str, amount: int) -> NewTxn:
    """A void or refund of ``purchase`` from its terminal."""
    return new_txn(rrn, terminal=purchase.terminal_id, amount=amount)._replace(txn_type=txn_type)


def outcome(txn: NewTxn, event: Event, code: str = "00") -> Report:
    return Report(*txn.key, event, code, "", "", "", "", None)


async def approved_purchase(journal: Journal, amount: int) -> tuple[NewTxn, Original]:
    """A purchase written ahead and approved, and itself as the original a void or refund names."""
    purchase = new_txn(await journal.next_rrn(), amount=amount)
    assert await journal.write_ahead(purchase)
    assert await journal.record(outcome(purchase, Event.ACCEPTED)) is State.APPROVED
    return purchase, await journal.original(purchase.rrn, purchase.merchant_id)


async def due_txn(journal: Journal, channel: str) -> NewTxn:
    """A purchase of ``channel`` written ahead and due for the resolver at once (a channel of the
    test's own: the shared journal's claims of it take only this test's rows)."""
    txn = new_txn(await journal.next_rrn())._replace(
        channel=channel, next_check_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    )
    assert await journal.write_ahead(txn)
    return txn


async def open_journal(url: str) -> Journal:
    return await Journal.open(url, pool_size=6, max_batch=512)


def test_migrations_are_idempotent_and_partitions_exist(database_url):
    async def scenario():
        journal = await open_journal(database_url)
        try:
            async with journal.pool.acquire() as conn:
                assert await migrate(conn) == len(MIGRATIONS)
                assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(MIGRATIONS)
            names = {
                r["relname"]
                for r in await journal.pool.fetch(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                    "WHERE i.inhparent = 'txn'::regclass"
                )
            }
            today = await journal.pool.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date")  # (not the import's)
            for offset in range(-2, 8):
                assert f"txn_{today + dt.timedelta(days=offset):%Y%m%d}" in names
            assert await journal.ensure_partitions(ahead_days=7) == []  # nothing new the second time
        finally:
            await journal.close()

    run(scenario())


def test_write_ahead_is_committed_and_a_key_is_one_transaction(database_url):
    async def scenario():
        journal = await open_journal(database_url)
        try:
            txn = new_txn(await journal.next_rrn())
            # The same key three times at once: one insert wins, in one group-commit batch or not.
            results = await asyncio.gather(*(journal.write_ahead(txn) for _ in range(3)))
            assert sorted(results) == [False, False, True]
            # Committed: another connection sees it.
            other = await asyncpg.connect(database_url)
            try:
                state = await other.fetchval("SELECT state FROM txn WHERE rrn = $1", txn.rrn)
            finally:
                await other.close()
            assert state == "RECEIVED"
            stored = await journal.find(txn.key)
            assert stored is not None and stored.rrn == txn.rrn and stored.request_hash == b"request-hash"
        finally:
            await journal.close()

    run(scenario())


def test_group_commit_shares_round_trips(database_url):
    async def scenario():
        sizes: list[int] = []
        journal = await Journal.open(
            database_url,
            pool_size=4,
            max_batch=512,
            on_batch=lambda op, n, _: sizes.append(n) if op == "write_ahead" else None,
        )
        try:
            txns = [new_txn(await journal.next_rrn()) for _ in range(400)]
            assert all(await asyncio.gather(*(journal.write_ahead(t) for t in txns)))
            assert sum(sizes) == 400
            assert len(sizes) < 40, f"400 concurrent writes took {len(sizes)} round trips"
        finally:
            await journal.close()

    run(scenario())


@pytest.mark.parametrize("writers", [1, 2])
def test_group_commit_keeps_to_its_writers(database_url, writers):
    """``[database] writers``: at most that many write-ahead batches commit at once (one by
    default, gathering the most rows per commit), however the writes arrive."""

    async def scenario():
        loop = asyncio.get_running_loop()
        spans: list[tuple[float, float]] = []

        def done(op: str, _: int, seconds: float) -> None:
            if op == "write_ahead":
                spans.append((loop.time() - seconds, loop.time()))

        journal = await Journal.open(database_url, pool_size=2, max_batch=512, on_batch=done, writers=writers)
        try:

            async def terminal() -> None:  # one write after another, as a till sends them
                for _ in range(15):
                    assert await journal.write_ahead(new_txn(await journal.next_rrn()))

            await asyncio.gather(*(terminal() for _ in range(40)))
            ends = sorted(end for _, end in spans)
            most = max(sum(1 for start, end in spans if start < at <= end) for at in ends)
            assert most == writers, f"{most} batches committing at once with writers = {writers}"
        finally:
            await journal.close()

    run(scenario())


def test_state_moves_follow_the_table_and_are_recorded(database_url):
    async def scenario():
        journal = await open_journal(database_url)
        try:
            txn = new_txn(await journal.next_rrn())
            assert await journal.write_ahead(txn)
            assert await journal.record(outcome(txn, Event.PAYING, "09")) is State.PENDING
            assert await journal.record(outcome(txn, Event.ACCEPTED)) is State.APPROVED
            assert await journal.record(outcome(txn, Event.REFUSED)) is None  # no such move: nothing changes
            with pytest.raises(asyncpg.CheckViolationError, match="APPROVED -> RECEIVED not allowed"):
                await journal.pool.execute("UPDATE txn SET state = 'RECEIVED' WHERE rrn = $1", txn.rrn)
            moves = await journal.pool.fetch(
                "SELECT from_state, to_state FROM txn_move WHERE rrn = $1 ORDER BY moved_at", txn.rrn
            )
            assert [(m["from_state"], m["to_state"]) for m in moves] == [
                (None, "RECEIVED"),
                ("RECEIVED", "PENDING"),
                ("PENDING", "APPROVED"),
            ]
        finally:
            await journal.close()

    run(scenario())


def test_a_statement_naming_a_days_partition_is_guarded_and_recorded_as_one_naming_txn(database_url):
    async def scenario():
        journal = await open_journal(database_url)
        part = f"txn_{TODAY:%Y%m%d}"
        later = [TODAY + dt.timedelta(days=n) for n in (500, 501, 503)]
        odd = f"odd_{uuid.uuid4().hex[:8]}"  # a partition by a name of its own
        try:
            declined, open_ = new_txn(await journal.next_rrn()), new_txn(await journal.next_rrn())
            for txn in (declined, open_):
                assert await journal.write_ahead(txn)
            assert await journal.record(outcome(declined, Event.REFUSED, "05")) is State.DECLINED
            with pytest.raises(asyncpg.CheckViolationError, match="DECLINED -> APPROVED not allowed"):
                await journal.pool.execute(f"UPDATE {part} SET state = 'APPROVED' WHERE rrn = $1", declined.rrn)
            await journal.pool.execute(f"UPDATE {part} SET state = 'UNKNOWN' WHERE rrn = $1", open_.rrn)
            with pytest.raises(asyncpg.CheckViolationError, match="state PAID unknown"):
                await journal.pool.execute(  # a copy of a row under a key of its own, in a state of none
                    f"INSERT INTO {part} SELECT (jsonb_populate_record(t, "
                    """'{"stan": "999999", "rrn": "999999999999", "state": "PAID"}')).* FROM txn t WHERE rrn = $1""",
                    open_.rrn,
                )
            moves = await journal.pool.fetch(
                "SELECT rrn, from_state, to_state FROM txn_move WHERE rrn = ANY($1) ORDER BY moved_at",
                [declined.rrn, open_.rrn],
            )
            # Each move once: through txn, only txn's triggers fire; through the partition, its own.
            assert [(m["rrn"], m["from_state"], m["to_state"]) for m in moves] == [
                (declined.rrn, None, "RECEIVED"),
                (open_.rrn, None, "RECEIVED"),
                (declined.rrn, "RECEIVED", "DECLINED"),
                (open_.rrn, "RECEIVED", "UNKNOWN"),
            ]
            # A partition made by a front end of an earlier release (no guard), or by a person under
            # a name of their own, is guarded by the next ensure_partitions; one it makes, at once.
            async with journal.pool.acquire() as conn:
                for name, day in ((f"txn_{later[0]:%Y%m%d}", later[0]), (odd, later[2])):
                    await conn.execute(
                        f"CREATE TABLE {name} PARTITION OF txn FOR VALUES FROM ('{day}') "
                        f"TO ('{day + dt.timedelta(days=1)}')"
                    )
                assert await ensure_partitions(conn, later[0], later[1]) == [
                    f"txn_move_{later[0]:%Y%m%d}",
                    f"txn_{later[1]:%Y%m%d}",
                    f"txn_move_{later[1]:%Y%m%d}",
                ]
                guards = await conn.fetch(
                    "SELECT tgrelid::regclass::text AS part, tgname FROM pg_trigger WHERE tgrelid::regclass::text "
                    "= ANY($1) AND NOT tgisinternal AND tgparentid = 0 ORDER BY 1, 2",
                    [odd, *(f"{parent}_{day:%Y%m%d}" for day in later[:2] for parent in ("txn", "txn_move"))],
                )
            guarded = ["journal_keeps_all", "txn_record_inserts", "txn_record_moves"]
            assert [(g["part"], g["tgname"]) for g in guards] == sorted(
                [
                    *((odd, name) for name in guarded),
                    *(
                        guard
                        for day in later[:2]
                        for guard in (
                            *((f"txn_{day:%Y%m%d}", name) for name in guarded),
                            (f"txn_move_{day:%Y%m%d}", "journal_keeps_all"),
                        )
                    ),
                ]
            )
        finally:
            async with journal.pool.acquire() as conn:
                for name in (odd, *(f"{parent}_{day:%Y%m%d}" for day in later for parent in ("txn", "txn_move"))):
                    await conn.execute(f"DROP TABLE IF EXISTS {name}")
            await journal.close()

    run(scenario())


def test_the_journal_refuses_to_delete_or_truncate_its_rows_or_change_or_make_up_a_move(database_url):
    async def scenario():
        journal = await open_journal(database_url)
        try:
            txn = new_txn(await journal.next_rrn())
            assert await journal.write_ahead(txn)
            for statement in (
                "DELETE FROM txn WHERE rrn = $1",
                f"DELETE FROM txn_{TODAY:%Y%m%d} WHERE rrn = $1",
                "DELETE FROM txn_move WHERE rrn = $1",
                f"DELETE FROM txn_move_{TODAY:%Y%m%d} WHERE rrn = $1",
                "UPDATE txn_move SET to_state = 'APPROVED' WHERE rrn = $1",  # a move recorded stands
            ):
                with pytest.raises(asyncpg.InsufficientPrivilegeError, match="the journal keeps every row"):
                    await journal.pool.execute(statement, txn.rrn)
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="INSERT on txn_move"):
                await journal.pool.execute(  # a move made up
                    "INSERT INTO txn_move (tx_date, rrn, from_state, to_state) VALUES ($1, $2, 'RECEIVED', 'APPROVED')",
                    TODAY,
                    txn.rrn,
                )
            for table in ("txn", "txn_move", f"txn_{TODAY:%Y%m%d}", f"txn_move_{TODAY:%Y%m%d}"):
                with pytest.raises(asyncpg.InsufficientPrivilegeError, match="TRUNCATE on"):
                    await journal.pool.execute(f"TRUNCATE {table}")
            assert await journal.pool.fetchval("SELECT count(*) FROM txn WHERE rrn = $1", txn.rrn) == 1
            assert await journal.pool.fetchval("SELECT count(*) FROM txn_move WHERE rrn = $1", txn.rrn) == 1
        finally:
            await journal.close()

    run(scenario())


KEPT_BESIDE = (
    "reversal", "dead_letter", "late_answer", "channel_notice", "risk_decision", "risk_audit", "merchant_order",
    "merchant_refund", "settlement_item",
)  # fmt: skip


def test_the_records_beside_the_journal_are_kept_as_it_is(database_url):
    async def scenario():
        journal = await open_journal(database_url)
        try:
            purchase = new_txn(await journal.next_rrn())
            assert await journal.write_ahead(purchase)
            rrn = await journal.next_rrn()
            await journal.request_reversal(purchase.key, "999998", "1123120001", purchase.amount_fen, rrn)
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="DELETE on reversal refused"):
                await journal.pool.execute("DELETE FROM reversal WHERE rrn = $1", rrn)  # its original would be sent
            for table in KEPT_BESIDE:
                with pytest.raises(asyncpg.InsufficientPrivilegeError, match=f"TRUNCATE on {table} refused"):
                    await journal.pool.execute(f"TRUNCATE {table} CASCADE")
            row_guards = await journal.pool.fetch(
                "SELECT tgrelid::regclass::text AS kept FROM pg_trigger WHERE tgname = tgrelid::regclass::text "
                "|| '_keeps_rows' ORDER BY 1"
            )
            assert [g["kept"] for g in row_guards if g["kept"] in KEPT_BESIDE] == sorted(KEPT_BESIDE)
            assert await journal.pool.fetchval("SELECT count(*) FROM reversal WHERE rrn = $1", rrn) == 1
        finally:
            await journal.close()

    run(scenario())


def test_the_switchs_role_writes_the_journal_but_may_not_switch_its_guards_off_or_rewrite_its_machine(database_url):
    """The switch runs as a role that owns nothing (``switch.journal.roles``): it writes ahead,
    moves and makes the days to come, but no statement of its own can disable a trigger, truncate,
    drop, delete a kept row or change the state machine; and a machine not this release's stops
    it with a clear error rather than being written by it."""

    async def scenario():
        url = await runtime_url(database_url)
        journal = await open_journal(url)
        runtime = await asyncpg.connect(url)
        try:
            assert not await owns_journal(runtime)
            txn = new_txn(await journal.next_rrn())
            assert await journal.write_ahead(txn)
            assert await journal.record(outcome(txn, Event.ACCEPTED)) is State.APPROVED
            later = TODAY + dt.timedelta(days=random.randrange(20, 60))  # the days it may make: those in use
            made = await ensure_partitions(runtime, later, later)
            assert set(made) <= {f"txn_{later:%Y%m%d}", f"txn_move_{later:%Y%m%d}"}
            assert await runtime.fetchval(f"SELECT to_regclass('txn_move_{later:%Y%m%d}') IS NOT NULL")
            assert await runtime.fetchval("DELETE FROM console_session WHERE false RETURNING 1") is None  # expires
            day = f"txn_{TODAY:%Y%m%d}"
            for statement in (
                "ALTER TABLE txn DISABLE TRIGGER USER",
                f"ALTER TABLE {day} DISABLE TRIGGER USER",
                f"ALTER TABLE txn_move_{later:%Y%m%d} DISABLE TRIGGER USER",  # one it had made
                f"UPDATE {day} SET state = state",  # partitions are reached through txn alone
                "TRUNCATE recon_item",
                "DROP TABLE reversal",
                "CREATE TABLE txn_copy (LIKE txn)",
                "CREATE TEMP TABLE scratch (x int)",  # nothing of its own for the owner's functions to meet
                "INSERT INTO txn_state_move VALUES ('APPROVED', 'RECEIVED')",
                "UPDATE txn_state SET final = false",
                "DELETE FROM schema_migrations",
                "SET session_replication_role = replica",
                "UPDATE txn SET amount_fen = 1",  # a transaction's amount, key, card and merchant are as written
                "UPDATE txn SET merchant_id = 'M'",
                "UPDATE risk_audit SET detail = 'x'",  # a record only added to
                "UPDATE settlement_item SET amount_fen = 0",
                "UPDATE notice_outbox SET state = 'APPROVED', delivered_at = NULL",  # a notice forged
                "UPDATE reversal SET orig_stan = '000000'",  # as good as deleted
                "SELECT journal_guard_partition('txn_copy'::regclass)",
                f"INSERT INTO txn_move (tx_date, rrn, from_state, to_state) VALUES ('{TODAY}', 'X', NULL, 'APPROVED')",
                "INSERT INTO notice_outbox (tx_date, rrn, state, merchant_id, url) VALUES (now(), 'X', 'S', 'M', 'u')",
            ):
                with pytest.raises((asyncpg.InsufficientPrivilegeError, asyncpg.UndefinedTableError)):
                    await runtime.execute(statement)
            with pytest.raises(asyncpg.InvalidParameterValueError, match="at most 63 days"):
                await ensure_partitions(runtime, later, later + dt.timedelta(days=400))  # not a catalog's worth
            with pytest.raises(asyncpg.InvalidParameterValueError, match="only the days from"):
                await ensure_partitions(runtime, TODAY + dt.timedelta(days=400), TODAY + dt.timedelta(days=400))

            owner = await asyncpg.connect(database_url)
            database = await owner.fetchval("SELECT current_database()")
            await owner.execute(f"GRANT TEMPORARY ON DATABASE {database} TO {RUNTIME_ROLE}")
            try:  # Were it let make temporary tables, the guard would not read them for its own,
                await runtime.execute(
                    "CREATE TEMP TABLE txn_state_move (from_state text, to_state text); "
                    "INSERT INTO txn_state_move VALUES ('APPROVED', 'RECEIVED'); "
                    "CREATE TEMP TABLE txn_move (LIKE public.txn_move INCLUDING DEFAULTS); "
                    "CREATE TEMP TABLE fake (tx_date date, rrn text, state text)"
                )
                with pytest.raises(asyncpg.CheckViolationError, match="APPROVED -> RECEIVED not allowed"):
                    await runtime.execute("UPDATE txn SET state = 'RECEIVED' WHERE rrn = $1", txn.rrn)
                fresh = new_txn(await journal.next_rrn())
                assert await journal.write_ahead(fresh)  # recorded in the journal's txn_move, not the session's
                assert await runtime.fetchval("SELECT count(*) FROM public.txn_move WHERE rrn = $1", fresh.rrn) == 1
                with pytest.raises(asyncpg.InsufficientPrivilegeError):  # nor could it put the guard on its own
                    await runtime.execute(
                        "CREATE TRIGGER forge AFTER INSERT ON pg_temp.fake REFERENCING NEW TABLE AS inserted "
                        "FOR EACH STATEMENT EXECUTE FUNCTION public.txn_record_inserts()"
                    )
                await runtime.execute("DROP TABLE pg_temp.txn_state_move, pg_temp.txn_move, pg_temp.fake")
            finally:
                await owner.execute(f"REVOKE TEMPORARY ON DATABASE {database} FROM {RUNTIME_ROLE}")
            assert await runtime.fetchval("SELECT state FROM txn WHERE rrn = $1", txn.rrn) == State.APPROVED
            try:
                for strong in ("postgres", await owner.fetchval("SELECT current_user")):
                    with pytest.raises(RoleRefused, match="is a superuser"):
                        await grant(owner, strong)  # a role that could undo the guards is refused one
                await owner.execute(f"GRANT CREATE ON DATABASE {database} TO {RUNTIME_ROLE}")
                try:  # a schema of the owner's name would come first in the owner's own search path
                    with pytest.raises(RoleRefused, match="may create schemas in the database"):
                        await runtime_url(database_url)
                finally:
                    await owner.execute(f"REVOKE CREATE ON DATABASE {database} FROM {RUNTIME_ROLE}")
                for given, taken in (
                    ("GRANT TRUNCATE ON recon_item TO PUBLIC", "REVOKE TRUNCATE ON recon_item FROM PUBLIC"),
                    ("GRANT UPDATE ON rrn_block_seq TO PUBLIC", "REVOKE UPDATE ON rrn_block_seq FROM PUBLIC"),  # RRNs
                ):
                    await owner.execute(given)
                    try:  # however it came by it
                        with pytest.raises(RoleRefused, match=r"may do more than.*(TRUNCATE on recon_item|rrn_block)"):
                            await grant(owner, RUNTIME_ROLE)
                    finally:
                        await owner.execute(taken)
                # A machine edited by hand: the owner's next migrate puts it back, the switch's role may not.
                await owner.execute("DELETE FROM txn_state_move WHERE from_state = 'UNKNOWN' AND to_state = 'PENDING'")
                with pytest.raises(SchemaNotCurrent, match="`paysw journal migrate` as the journal's owner"):
                    await migrate(runtime)
                assert await migrate(owner) == len(MIGRATIONS)
                assert await migrate(runtime) == len(MIGRATIONS)
                # Grants an earlier release's: the switch says what it may not do, rather than fail mid-traffic.
                await owner.execute(f"REVOKE UPDATE (state) ON txn FROM {RUNTIME_ROLE}")
                await owner.execute(f"REVOKE USAGE ON SEQUENCE live_config_version FROM {RUNTIME_ROLE}")
                with pytest.raises(SchemaNotCurrent, match=r"may not UPDATE on txn \(state\).*`paysw journal migrate`"):
                    await open_journal(url)
                with pytest.raises(SchemaNotCurrent, match="USAGE on live_config_version"):  # a later migration's
                    await open_journal(url)
                await runtime_url(database_url)
                await runtime_url(database_url, "paysw_other")  # made, as weak as the switch's
                with pytest.raises(JournalRefused, match="of the owner's URL does not own the journal's tables"):
                    await prepare(url, "paysw_other")  # the switch's own URL given for the owner's
            finally:
                await owner.close()
        finally:
            await runtime.close()
            await journal.close()

    run(scenario())


def test_a_journal_a_later_release_migrated_is_run_on_not_rewritten_unless_its_machine_refuses_ours(database_url):
    """An earlier release starting on a journal a later one migrated (a rolling upgrade) writes
    nothing while the later machine allows every move of its own, and stops, saying why, when not:
    it used to write its own machine back over the later one's."""
    from tests.conftest import fresh_database

    async def scenario():
        conn = await asyncpg.connect(await fresh_database(database_url, "journal_later_release"))
        try:
            await migrate(conn)
            later = len(MIGRATIONS) + 1
            await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", later)
            await conn.execute("INSERT INTO txn_state_move VALUES ('DECLINED', 'APPROVED')")  # the later's own
            await conn.execute("UPDATE txn_state SET description = 'said otherwise' WHERE state = 'APPROVED'")
            assert await migrate(conn) == later  # its version, for `paysw journal migrate` to leave its grants be
            assert await conn.fetchval("SELECT count(*) FROM txn_state_move WHERE from_state = 'DECLINED'") == 1
            assert await conn.fetchval("SELECT max(version) FROM schema_migrations") == later
            await conn.execute("DELETE FROM txn_state_move WHERE from_state = 'UNKNOWN' AND to_state = 'PENDING'")
            with pytest.raises(SchemaNotCurrent, match=f"at schema version {later}, a later release's"):
                await migrate(conn)
            assert await conn.fetchval("SELECT count(*) FROM txn_state_move WHERE from_state = 'DECLINED'") == 1
        finally:
            await conn.close()

    run(scenario())


def test_paysw_journal_migrate_grants_the_switchs_role_as_the_owner(database_url):
    """``paysw journal migrate`` migrates a database as its owner (its URL from the environment,
    never the command line; no configuration read) and grants the switch's role its part; what
    it refuses, it says on one line."""
    from tests.conftest import fresh_database

    base = run(fresh_database(database_url, "paysw_journal_cli"))
    run(runtime_url(database_url))  # the role, made in the cluster
    url = as_role(base, RUNTIME_ROLE)
    command = [sys.executable, "-m", "switch.cli", "journal", "migrate"]
    env = {k: v for k, v in os.environ.items() if k != "SWITCH_DATABASE_OWNER_URL"}
    for owner, refusal in (
        ("", "set SWITCH_DATABASE_OWNER_URL"),
        ("owner@nowhere/x", "the owner's database:"),  # not a URL
        (as_role(base, "postgres").replace("postgres@", "nobody_at_all@"), "the owner's database:"),
    ):
        refused = subprocess.run(
            command, env={**env, "SWITCH_DATABASE_OWNER_URL": owner}, capture_output=True, text=True, timeout=60
        )
        assert (refused.returncode, refused.stderr.count("\n")) == (2, 1), refused.stderr
        assert refused.stderr.startswith("paysw: journal error: ") and refusal in refused.stderr, refused.stderr
    superuser = subprocess.run(
        [*command, "--role", "postgres"], env={**env, "SWITCH_DATABASE_OWNER_URL": base}, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert superuser.returncode == 2 and "role postgres is a superuser" in superuser.stderr
    done = subprocess.run(
        command, env={**env, "SWITCH_DATABASE_OWNER_URL": base}, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert f"version {len(MIGRATIONS)}; role paysw_switch granted" in done.stdout

    async def check():
        runtime = await asyncpg.connect(url)
        try:
            assert await migrate(runtime) == len(MIGRATIONS)  # current: nothing for it to write
            assert await runtime.fetchval("SELECT count(*) FROM txn") == 0
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await runtime.execute("TRUNCATE txn")
        finally:
            await runtime.close()

    run(check())


def test_one_bad_row_does_not_fail_its_batch_neighbours(database_url):
    async def scenario():
        journal = await open_journal(database_url)
        try:
            good = [new_txn(await journal.next_rrn()) for _ in range(5)]
            bad = new_txn(await journal.next_rrn(), amount=-1)  # refused by the amount's check
            results = await asyncio.gather(
                *(journal.write_ahead(t) for t in good), journal.write_ahead(bad), return_exceptions=True
            )
            assert results[:5] == [True] * 5
            assert isinstance(results[5], asyncpg.CheckViolationError)
            rows = await journal.pool.fetch("SELECT rrn FROM txn WHERE rrn = ANY($1)", [t.rrn for t in [*good, bad]])
            assert {r["rrn"] for r in rows} == {t.rrn for t in good}
        finally:
            await journal.close()

    run(scenario())


def test_rrns_are_unique_across_front_ends(database_url):
    async def scenario():
        first, second = await open_journal(database_url), await open_journal(database_url)
        try:
            rrns = await asyncio.gather(*(j.next_rrn() for j in [first, second] * 1500))
            assert len(set(rrns)) == 3000
            assert all(len(r) == 12 and r.isdigit() for r in rrns)
        finally:
            await first.close()
            await second.close()

    run(scenario())


def test_the_next_rrn_block_is_on_its_way_before_this_one_runs_out(database_url):
    async def scenario():
        journal = await open_journal(database_url)
        try:
            block = int(await journal.next_rrn()) // RRN_BLOCK
            for _ in range(RRN_BLOCK * 3 // 4):
                await journal.next_rrn()
            for _ in range(100):  # fetched in the background, not by the request that needs it
                if await journal.pool.fetchval("SELECT last_value FROM rrn_block_seq") > block:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("no block fetched ahead")
            rrns = [int(await journal.next_rrn()) for _ in range(RRN_BLOCK // 4 + 1)]
            assert rrns[-1] // RRN_BLOCK > block and len(set(rrns)) == len(rrns)
        finally:
            await journal.close()

    run(scenario())


def test_a_reversed_purchase_keeps_what_its_terminal_was_told(database_url):
    """A resend of a reversed original gets its first answer (resolver._failure_code), its
    authorisation code included: the reversal's own report, which names none, must not erase it."""

    async def scenario():
        journal = await open_journal(database_url)
        try:
            txn = new_txn(await journal.next_rrn())
            assert await journal.write_ahead(txn)
            approved = outcome(txn, Event.ACCEPTED)._replace(auth_id="001003", channel_txn_id="CH1")
            assert await journal.record(approved) is State.APPROVED
            await journal.request_reversal(txn.key, "000002", txn.transmitted, txn.amount_fen, await journal.next_rrn())
            assert await journal.record(outcome(txn, Event.CANCELLED)) is State.REVERSED
            stored = await journal.find(txn.key)
            assert (stored.state, stored.response_code, stored.auth_id, stored.channel_txn_id) == (
                State.REVERSED,
                "00",
                "001003",
                "CH1",
            )
        finally:
            await journal.close()

    run(scenario())


def test_a_purchase_is_its_front_ends_to_answer_until_a_resolver_takes_it(database_url):
    """A front end's own answer (``Report.first``) moves a purchase only while no resolver has
    taken it: one that has acts on "nobody was told anything" (and may be cancelling it). A hand
    to the resolver (a channel's "not paid", reconciliation) leaves a purchase still in its front
    end's hands there until its deadline, and that is counted on the database's clock: a front
    end whose clock runs an hour behind keeps its purchases its deadline long."""
    channel = f"first-{uuid.uuid4().hex[:8]}"  # the shared journal: the claim takes only this test's rows

    async def scenario():
        journal = await open_journal(database_url)
        try:
            in_hands = new_txn(await journal.next_rrn())._replace(channel=channel)
            overdue = new_txn(await journal.next_rrn())._replace(
                channel=channel, next_check_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
            )
            slow_clock = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
            behind = new_txn(await journal.next_rrn())._replace(
                channel=channel, received_at=slow_clock, next_check_at=slow_clock + dt.timedelta(seconds=10)
            )
            for txn in (in_hands, overdue, behind):
                assert await journal.write_ahead(txn)
            async with journal.pool.acquire() as conn:
                assert await hand_to_resolver(conn, in_hands.key)
            assert [t.rrn for t in await journal.claim_due(10, 60, [channel])] == [overdue.rrn]
            for txn in (in_hands, behind):
                assert await journal.record(outcome(txn, Event.ACCEPTED)._replace(first=True)) is State.APPROVED
            assert await journal.record(outcome(overdue, Event.ACCEPTED)._replace(first=True)) is None
            stored = await journal.find(overdue.key)
            assert (stored.state, stored.response_code) == (State.RECEIVED, None)
            assert await journal.record(outcome(overdue, Event.CANCELLED, "05")) is State.CANCELLED
        finally:
            await journal.close()

    run(scenario())


def test_a_leased_transaction_is_one_claims_until_it_ends_or_lapses(database_url):
    """A claim's lease is its own: a hand to the resolver (a reversal, a notification) or a move
    that leaves the transaction due lets no second claim take it while the lease runs; the
    holder's "look again later" then keeps it due, and otherwise backs off even once the lease
    has run out. Renewing holds a claim only while no later claim has taken the transaction and it
    is still in the resolver's queues; a claim whose lease lapsed and was taken puts nothing off."""
    channel = f"lease-{uuid.uuid4().hex[:8]}"  # the shared journal: the claims take only this test's rows

    async def scenario():
        journal = await open_journal(database_url)
        try:
            txn = await due_txn(journal, channel)
            [first] = await journal.claim_due(10, 3600, [channel])
            async with journal.pool.acquire() as conn:
                assert await hand_to_resolver(conn, txn.key)
            assert await journal.claim_due(10, 3600, [channel]) == []
            unsure = Report(*txn.key, Event.UNSURE, "91", "", "TIMEOUT", "", "", dt.datetime.now(dt.UTC))
            assert await journal.record(unsure) is State.UNKNOWN  # due now, still leased
            assert await journal.claim_due(10, 3600, [channel]) == []
            assert await journal.renew(txn.key, first.checks, 3600)
            assert not await journal.renew(txn.key, first.checks + 1, 3600)
            await journal.defer(txn.key, first.checks, 3600)  # asked for meanwhile: still due
            [second] = await journal.claim_due(10, 1, [channel])
            assert second.checks == first.checks + 1
            assert not await journal.renew(txn.key, first.checks, 3600)
            await asyncio.sleep(1.2)  # its lease runs out, nobody takes it
            await journal.defer(txn.key, second.checks, 3600)  # backs off all the same
            assert await journal.claim_due(10, 3600, [channel]) == []
            async with journal.pool.acquire() as conn:
                assert await hand_to_resolver(conn, txn.key)
                [third] = await journal.claim_due(10, 3600, [channel])
                assert await hand_to_resolver(conn, txn.key)
            assert await journal.claim_due(10, 1, [channel]) == []
            await journal.release(txn.key, third.checks)  # let go: anyone's, being due
            [fourth] = await journal.claim_due(10, 1, [channel])
            await asyncio.sleep(1.2)  # its lease lapses, and a fifth claim takes it
            [fifth] = await journal.claim_due(10, 3600, [channel])
            assert not await journal.renew(txn.key, fourth.checks, 3600)
            assert await journal.taken_since(txn.key, fourth.checks)
            await journal.defer(txn.key, fourth.checks, 0)
            await journal.release(txn.key, fourth.checks)
            assert await journal.claim_due(10, 3600, [channel]) == []
            assert await journal.record(outcome(txn, Event.CANCELLED, "05")) is State.CANCELLED
            assert not await journal.renew(txn.key, fifth.checks, 3600)  # out of the queues
            assert not await journal.taken_since(txn.key, fifth.checks)
        finally:
            await journal.close()

    run(scenario())


def test_a_renewed_claim_sees_the_transaction_as_it_is_now(database_url):
    """A lane that waited for a slot past its claim renews it and gets the row as it is now: the
    reversal asked for meanwhile, the state moved meanwhile, and its own claim's count; the lane
    having seen the reversal, its "look again later" backs off."""
    channel = f"renew-{uuid.uuid4().hex[:8]}"

    async def scenario():
        journal = await open_journal(database_url)
        try:
            txn = await due_txn(journal, channel)
            [claimed] = await journal.claim_due(10, 3600, [channel])
            assert (claimed.state, claimed.reversal_requested) == (State.RECEIVED, False)
            unsure = Report(*txn.key, Event.UNSURE, "91", "", "TIMEOUT", "", "", dt.datetime.now(dt.UTC))
            assert await journal.record(unsure) is State.UNKNOWN
            await journal.request_reversal(txn.key, "000002", txn.transmitted, txn.amount_fen, await journal.next_rrn())
            now = await journal.renew(txn.key, claimed.checks, 3600, seen=True)
            assert now is not None
            assert (now.key, now.state, now.response_code, now.reversal_requested, now.checks) == (
                txn.key, State.UNKNOWN, "91", True, claimed.checks,
            )  # fmt: skip
            await journal.defer(txn.key, claimed.checks, 3600)  # the reversal was seen: no reason to stay due
            assert await journal.claim_due(10, 3600, [channel]) == []
            async with journal.pool.acquire() as conn:
                assert await hand_to_resolver(conn, txn.key)
                [again] = await journal.claim_due(10, 3600, [channel])
                assert await journal.renew(txn.key, again.checks, 3600, seen=True)
                assert await hand_to_resolver(conn, txn.key)  # asked for after the lane looked
            await journal.defer(txn.key, again.checks, 3600)
            assert [t.checks for t in await journal.claim_due(10, 3600, [channel])] == [again.checks + 1]
        finally:
            await journal.close()

    run(scenario())


def test_only_the_claim_that_holds_a_transaction_hands_it_to_a_person(database_url):
    """A lane stuck past its lease gives up on a transaction another resolver has claimed since:
    nothing is dead-lettered, and the transaction stays the other's. The holding claim's give-up
    is recorded once, and the transaction leaves the resolver's queues; handed back to the
    resolver and given up on again, its letter is open again."""
    channel = f"dead-{uuid.uuid4().hex[:8]}"

    async def scenario():
        journal = await open_journal(database_url)
        try:
            txn = await due_txn(journal, channel)
            [stuck] = await journal.claim_due(10, 1, [channel])
            await asyncio.sleep(1.2)  # its lease lapses
            [holder] = await journal.claim_due(10, 3600, [channel])
            letters = "SELECT count(*) FROM dead_letter WHERE rrn = $1"
            assert not await journal.dead_letter(txn.key, stuck.checks, "stuck lane gives up")
            assert await journal.pool.fetchval(letters, txn.rrn) == 0
            assert await journal.renew(txn.key, holder.checks, 3600)  # still the holder's, still queued
            assert await journal.dead_letter(txn.key, holder.checks, "unresolved")
            assert not await journal.dead_letter(txn.key, holder.checks, "again")
            assert await journal.pool.fetchval(letters, txn.rrn) == 1
            assert await journal.pool.fetchval(
                "SELECT next_check_at IS NULL AND leased_until IS NULL FROM txn WHERE rrn = $1", txn.rrn
            )
            assert await journal.claim_due(10, 3600, [channel]) == []
            await journal.pool.execute(
                "UPDATE dead_letter SET resolved_at = now(), resolution = 'refunded by hand' WHERE rrn = $1", txn.rrn
            )
            async with journal.pool.acquire() as conn:  # handed back (a reversal of it, say)
                assert await hand_to_resolver(conn, txn.key)
            [back] = await journal.claim_due(10, 3600, [channel])
            assert await journal.dead_letter(txn.key, back.checks, "refused again")  # the letter reopened
            letter = await journal.pool.fetchrow(
                "SELECT reason, reopened_at IS NOT NULL AS reopened FROM dead_letter WHERE rrn = $1 "
                "AND resolved_at IS NULL",
                txn.rrn,
            )
            assert letter["reopened"]
            assert letter["reason"].startswith("refused again (given up on before, at RECEIVED: unresolved; resolved ")
            assert letter["reason"].endswith(": refunded by hand)")  # what a person did is not lost
        finally:
            await journal.close()

    run(scenario())


def test_a_dead_letter_whose_transaction_went_final_is_not_handed_back(database_url):
    """A transaction given up on and made final since (by reconciliation, say) is not handed back
    to the resolver: nothing changes, and its letter stays open for a person."""
    channel = f"final-{uuid.uuid4().hex[:8]}"

    async def scenario():
        journal = await open_journal(database_url)
        try:
            txn = await due_txn(journal, channel)
            [claimed] = await journal.claim_due(10, 3600, [channel])
            assert await journal.dead_letter(txn.key, claimed.checks, "unresolved")
            assert await journal.record(outcome(txn, Event.CANCELLED, "05")) is State.CANCELLED
            async with journal.pool.acquire() as conn, conn.transaction():
                assert not await retry_dead_letter(conn, txn.rrn, "the channel is back")
            row = await journal.pool.fetchrow(
                "SELECT t.next_check_at, t.retried_at, d.resolved_at FROM txn t JOIN dead_letter d USING (rrn) "
                "WHERE rrn = $1",
                txn.rrn,
            )
            assert tuple(row) == (None, None, None)
        finally:
            await journal.close()

    run(scenario())


def test_an_authorisation_code_goes_with_any_answer_but_an_approval(database_url):
    async def scenario():
        journal = await open_journal(database_url)
        try:
            txn = new_txn(await journal.next_rrn())
            assert await journal.write_ahead(txn)
            assert await journal.record(outcome(txn, Event.PAYING, "09")._replace(auth_id="001004")) is State.PENDING
            assert await journal.record(outcome(txn, Event.REFUSED, "05")) is State.DECLINED
            stored = await journal.find(txn.key)
            assert (stored.response_code, stored.auth_id) == ("05", None)
        finally:
            await journal.close()

    run(scenario())


def test_amounts_are_integer_fen_and_never_negative(database_url):
    async def scenario():
        journal = await open_journal(database_url)
        try:
            column = await journal.pool.fetchval(
                "SELECT data_type FROM information_schema.columns "
                "WHERE table_name = 'txn' AND column_name = 'amount_fen'"
            )
            assert column == "bigint"
            with pytest.raises(asyncpg.CheckViolationError):
                await journal.write_ahead(new_txn(await journal.next_rrn(), amount=-1))
        finally:
            await journal.close()

    run(scenario())


def test_a_void_or_refund_is_settled_once(database_url):
    """Two resolvers settling the same declined refund (a lease that lapsed) release its
    reservation once, not twice; an accepted one moves its amount from reserved to refunded."""

    async def scenario():
        journal = await open_journal(database_url)
        try:
            purchase, original = await approved_purchase(journal, 1000)
            refunds = []
            for amount in (300, 500, 150):
                refunds.append(undo_of(purchase, await journal.next_rrn(), "refund", amount))
                assert await journal.write_ahead_undo(refunds[-1], original, refund_days=365) is None
            over = undo_of(purchase, await journal.next_rrn(), "refund", 51)
            assert await journal.write_ahead_undo(over, original, refund_days=365) == (
                "64",
                "AMOUNT",
            )  # 950 held: 51 more is too much
            declined = outcome(refunds[0], Event.REFUSED, "05")
            assert await journal.record_undo(declined, "refund", 300, original) is State.DECLINED
            assert await journal.record_undo(declined, "refund", 300, original) is None  # the second resolver
            accepted = outcome(refunds[2], Event.ACCEPTED)
            assert await journal.record_undo(accepted, "refund", 150, original) is State.APPROVED
            row = await journal.pool.fetchrow("SELECT reserved_fen, refunded_fen FROM txn WHERE rrn = $1", purchase.rrn)
            assert (row["reserved_fen"], row["refunded_fen"]) == (500, 150)  # the 500 still under way
        finally:
            await journal.close()

    run(scenario())


def test_a_refund_is_taken_only_within_its_channels_refund_window(database_url):
    """A refund is taken up to ``refund_days`` after its purchase was received, to the second, and
    refused ``12`` after, reserving nothing and writing nothing; a channel of 0 days takes voids
    only."""

    async def scenario():
        journal = await open_journal(database_url)
        try:
            purchase, original = await approved_purchase(journal, 1000)
            year = dt.timedelta(days=365)

            def refund_at(rrn: str, after: dt.timedelta) -> NewTxn:
                return undo_of(purchase, rrn, "refund", 100)._replace(received_at=original.received_at + after)

            late = refund_at(await journal.next_rrn(), year + dt.timedelta(seconds=1))
            assert await journal.write_ahead_undo(late, original, refund_days=365) == ("12", "REFUND_WINDOW")
            assert await journal.find(late.key) is None
            for after in (dt.timedelta(seconds=1), dt.timedelta(seconds=-1)):  # another front end's clock behind
                none_taken = refund_at(await journal.next_rrn(), after)
                assert await journal.write_ahead_undo(none_taken, original, refund_days=0) == ("12", "REFUND_WINDOW")
            last = refund_at(await journal.next_rrn(), year)
            assert await journal.write_ahead_undo(last, original, refund_days=365) is None
            assert await _reserved_fen(journal, purchase.rrn) == 100  # the last one's alone
            _, fresh = await approved_purchase(journal, 500)
            void = undo_of(fresh, await journal.next_rrn(), "void", 500)
            assert await journal.write_ahead_undo(void, fresh, refund_days=0) is None
        finally:
            await journal.close()

    run(scenario())


def test_a_refunds_risk_decisions_are_written_with_it_or_not_at_all(database_url):
    """A refund's rules that fired go in with its row, in its transaction: refused by its purchase
    (more than is left), or written twice (another front end first), it leaves no decision; written,
    its decisions are there the moment it is."""

    async def scenario():
        journal = await open_journal(database_url)
        try:
            purchase, original = await approved_purchase(journal, 1000)
            hits = [Hit("refunds-over-sales", "decline", "enforce", "61"), Hit("watch", "review", "shadow", "")]
            decided = "SELECT rule_id FROM risk_decision WHERE rrn = $1 ORDER BY rule_id"
            over = undo_of(purchase, await journal.next_rrn(), "refund", 1001)
            assert await journal.write_ahead_undo(over, original, hits, refund_days=365) == ("64", "AMOUNT")
            assert await journal.pool.fetch(decided, over.rrn) == []
            refund = undo_of(purchase, await journal.next_rrn(), "refund", 300)
            assert await journal.write_ahead_undo(refund, original, hits, refund_days=365) is None
            written = await journal.pool.fetch(decided, refund.rrn)
            assert [r["rule_id"] for r in written] == ["refunds-over-sales", "watch"]
            again = refund._replace(rrn=await journal.next_rrn())  # the same key, another front end's RRN
            with pytest.raises(asyncpg.UniqueViolationError):
                await journal.write_ahead_undo(again, original, hits, refund_days=365)
            assert await journal.pool.fetch(decided, again.rrn) == []
            assert await _reserved_fen(journal, purchase.rrn) == 300  # the refused and the second reserved nothing
        finally:
            await journal.close()

    run(scenario())


def test_a_void_or_refund_refused_before_its_channel_is_written_declined_with_its_row(database_url):
    """Refused by risk, a suspension or the channel's limits, a void or refund is never open in
    the journal (a resolver would send it): its row goes in DECLINED with the answer, in the
    transaction that writes it, and it reserves nothing of its purchase."""

    async def scenario():
        journal = await open_journal(database_url)
        try:
            purchase, original = await approved_purchase(journal, 1000)
            for txn_type, amount in (("refund", 400), ("void", 1000)):
                undo = undo_of(purchase, await journal.next_rrn(), txn_type, amount)
                refused = Report(*undo.key, Event.REFUSED, "57", "", "SUSPENDED", "suspended", "", None)
                assert await journal.write_ahead_undo(undo, original, refused=refused, refund_days=365) is None
                row = await journal.pool.fetchrow(
                    "SELECT state, response_code, channel_code FROM txn WHERE rrn = $1", undo.rrn
                )
                assert tuple(row) == ("DECLINED", "57", "SUSPENDED")
                moves = await journal.pool.fetch("SELECT to_state FROM txn_move WHERE rrn = $1", undo.rrn)
                assert sorted(m["to_state"] for m in moves) == ["DECLINED", "RECEIVED"]
            bought = await journal.pool.fetchrow("SELECT state, reserved_fen FROM txn WHERE rrn = $1", purchase.rrn)
            assert tuple(bought) == ("APPROVED", 0)
        finally:
            await journal.close()

    run(scenario())


def test_a_refund_written_at_two_front_ends_at_once_is_a_duplicate_not_a_refusal(database_url):
    """A retransmission at another front end, while the first arrival's write-ahead is under way,
    finds no row yet and writes too: it waits on the purchase's lock, and must then see the first
    arrival's row (and replay its answer), not count its reservation against itself (64, when
    the refund is more than half the purchase) and tell the terminal the refund was refused."""

    async def scenario():
        journal = await open_journal(database_url)
        holder = await asyncpg.connect(database_url)
        try:
            purchase, original = await approved_purchase(journal, 1000)
            refund = undo_of(purchase, await journal.next_rrn(), "refund", 600)
            twice = refund._replace(rrn=await journal.next_rrn())  # the same key, the other front end's RRN
            async with holder.transaction():  # both wait on the purchase's lock, past their look-ups
                await holder.execute("SELECT 1 FROM txn WHERE rrn = $1 FOR UPDATE", purchase.rrn)
                writes = [
                    asyncio.create_task(journal.write_ahead_undo(txn, original, refund_days=365))
                    for txn in (refund, twice)
                ]
                await asyncio.sleep(0.5)
            results = await asyncio.gather(*writes, return_exceptions=True)
            assert sorted(map(repr, results)) == sorted(
                [repr(None), repr(asyncpg.UniqueViolationError("void or refund written twice"))]
            ), results
            assert await _reserved_fen(journal, purchase.rrn) == 600
        finally:
            await holder.close()
            await journal.close()

    run(scenario())


def test_a_reversal_racing_its_refunds_write_ahead_sees_the_refund(database_url):
    """A 0400 naming a refund whose write-ahead is under way (its row written, not yet committed)
    waits for it and is answered 12, the refund's. Neither seeing the other, it was answered 25
    while the refund was sent, and a cashier told "not found" refunds again under another STAN.
    A 0400 first is 25, and its refund is then never written."""

    async def scenario():
        journal = await open_journal(database_url)
        holder = await asyncpg.connect(database_url)
        try:
            purchase, original = await approved_purchase(journal, 1000)
            refund = undo_of(purchase, await journal.next_rrn(), "refund", 400)
            hit = Hit("watch", "review", "shadow", "")
            held = holder.transaction()  # the refund's decision waits on this one's: its row is in
            await held.start()
            await holder.execute(
                "INSERT INTO risk_decision (tx_date, rrn, rule_id, action, mode, code, merchant_id, terminal_id, "
                "channel, amount_fen) VALUES ($1, $2, 'watch', 'review', 'shadow', '', '', '', '', 0)",
                refund.tx_date,
                refund.rrn,
            )
            written = asyncio.create_task(journal.write_ahead_undo(refund, original, [hit], refund_days=365))
            await _until_waiting(holder, "watcher")
            reversal = asyncio.create_task(
                journal.request_reversal(refund.key, "000002", refund.transmitted, 400, await journal.next_rrn())
            )
            await _until_waiting(holder, "advisory", reversal)
            await held.rollback()
            assert await written is None
            assert (await reversal)[1] == "12"
            assert await _reserved_fen(journal, purchase.rrn) == 400  # the refund stands, owing no reversal
            row = await journal.pool.fetchrow("SELECT reversal_requested_at FROM txn WHERE rrn = $1", refund.rrn)
            assert row["reversal_requested_at"] is None
            # The other order: the 0400 first is 25, and the refund is then never written (nor sent).
            late = undo_of(purchase, await journal.next_rrn(), "refund", 300)
            code = await journal.request_reversal(late.key, "000003", late.transmitted, 300, await journal.next_rrn())
            assert code[1] == "25"
            with pytest.raises(asyncpg.UniqueViolationError):
                await journal.write_ahead_undo(late, original, refund_days=365)
            assert await journal.find(late.key) is None
            assert await _reserved_fen(journal, purchase.rrn) == 400
        finally:
            await holder.close()
            await journal.close()

    run(scenario())


async def _reserved_fen(journal, rrn: str) -> int:
    """What the voids and refunds under way hold of purchase ``rrn``."""
    return await journal.pool.fetchval("SELECT reserved_fen FROM txn WHERE rrn = $1", rrn)


async def _until_waiting(watcher: asyncpg.Connection, lock: str, done: asyncio.Task | None = None) -> None:
    """Return once a backend waits for ``lock`` ("advisory", or "watcher": one the watcher holds), or
    ``done`` has ended (it did not wait)."""
    waiting = {
        "advisory": "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
        "AND classid = x'6b657973'::int AND objsubid = 2",  # a key's (store._KEY_LOCK_SQL), not a migration's
        "watcher": "SELECT count(*) FROM pg_stat_activity WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid))",
    }[lock]
    for _ in range(250):
        if (done is not None and done.done()) or await watcher.fetchval(waiting):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"no backend waited for the {lock} lock")


def test_an_accepted_void_voids_its_purchase_and_refunds_nothing(database_url):
    """What a void reserved is released when it is accepted; the purchase is VOIDED, and its
    refunded_fen stays 0: that column holds what refunds gave back, and a void is no refund."""

    async def scenario():
        journal = await open_journal(database_url)
        try:
            purchase, original = await approved_purchase(journal, 1000)
            void = undo_of(purchase, await journal.next_rrn(), "void", 1000)
            assert await journal.write_ahead_undo(void, original, refund_days=365) is None
            amounts = "SELECT reserved_fen, refunded_fen FROM txn WHERE rrn = $1"
            assert tuple(await journal.pool.fetchrow(amounts, purchase.rrn)) == (1000, 0)  # the void under way
            assert await journal.record_undo(outcome(void, Event.ACCEPTED), "void", 1000, original) is State.APPROVED
            row = await journal.pool.fetchrow(
                "SELECT state, reserved_fen, refunded_fen, txn_type FROM txn WHERE rrn = $1", purchase.rrn
            )
            assert tuple(row) == ("VOIDED", 0, 0, "purchase")
        finally:
            await journal.close()

    run(scenario())


async def schema_at(conn: asyncpg.Connection, version: int, days: list[dt.date]) -> None:
    """A journal of an earlier release in an empty database: its schema at ``version``, and the
    partitions of ``days`` as that release made them."""
    await conn.execute(
        "CREATE TABLE schema_migrations (version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    for applied, sql in enumerate(MIGRATIONS[:version], start=1):
        await conn.execute(sql)
        await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", applied)
    for day in days:
        for parent in ("txn", "txn_move"):
            await conn.execute(
                f"CREATE TABLE {parent}_{day:%Y%m%d} PARTITION OF {parent} "
                f"FOR VALUES FROM ('{day}') TO ('{day + dt.timedelta(days=1)}')"
            )


def test_migration_25_waits_for_a_writer_rather_than_deadlock_with_it(database_url):
    """Migration 25 adds triggers to every partition. Were it to lock them one by one, a writer
    holding txn (a batch written to one day) and then writing another day it had locked would
    deadlock with it: the upgrade of a live journal would fail writes. It locks the parents first,
    as writers take them, so it waits for the writer's commit instead."""
    from tests.conftest import fresh_database

    async def scenario():
        url = await fresh_database(database_url, "journal_schema_24")
        conn, writer = await asyncpg.connect(url), await asyncpg.connect(url)
        try:
            days = [TODAY - dt.timedelta(days=1), TODAY]  # the earlier day first, as the migration goes
            await schema_at(conn, 24, days)
            columns = ", ".join(c for c in NewTxn._fields)
            values = ", ".join(f"${i}" for i in range(1, len(NewTxn._fields) + 1))
            insert = f"INSERT INTO txn ({columns}, state) VALUES ({values}, 'RECEIVED')"
            async with writer.transaction():
                await writer.execute(insert, *new_txn("250000000001"))  # today's partition, and txn, held
                migrating = asyncio.ensure_future(migrate(conn))
                await asyncio.sleep(0.5)  # the migration under way, waiting for what the writer holds
                await writer.execute(insert, *new_txn("250000000002")._replace(tx_date=days[0]))
            assert await asyncio.wait_for(migrating, 30) == len(MIGRATIONS)
            assert await conn.fetchval("SELECT count(*) FROM txn") == 2
        finally:
            await writer.close()
            await conn.close()

    run(scenario())


def test_migration_15_names_types_and_entries_and_takes_voids_out_of_refunded_fen(database_url):
    """A journal at schema 14, where an accepted void had put its purchase's whole amount in
    refunded_fen: migrated, the voided purchase has refunded 0, a refunded one keeps its refunds,
    and the transaction types and statement entries are under their new names."""
    from tests.conftest import fresh_database

    async def scenario():
        conn = await asyncpg.connect(await fresh_database(database_url, "journal_schema_14"))
        try:
            await schema_at(conn, 14, [TODAY])
            await conn.execute(
                "INSERT INTO txn (tx_date, terminal_id, stan, transmitted, rrn, kind, mti, processing_code, "
                "merchant_id, amount_fen, currency, local_time, local_date, entry_mode, pan_masked, pan_hash, "
                "channel, out_trade_no, request_hash, state, refunded_fen) "
                "SELECT $1, 'T1', stan, '1123120000', rrn, 'purchase', '0200', '000000', 'M', 1000, '156', "
                "'120000', '1123', '031', '-', '', 'wechat', rrn, '', state, refunded "
                "FROM (VALUES ('000001', 'VOIDED', 1000), ('000002', 'APPROVED', 300)) AS v(stan, state, refunded), "
                "LATERAL (SELECT 'RRN' || stan AS rrn) r",
                TODAY,
            )
            assert await migrate(conn) == len(MIGRATIONS)
            rows = await conn.fetch("SELECT state, txn_type, refunded_fen FROM txn ORDER BY stan")
            guards = await conn.fetchval(  # migration 25 guards the partitions made before it
                f"SELECT count(*) FROM pg_trigger WHERE tgrelid = 'txn_{TODAY:%Y%m%d}'::regclass "
                "AND tgname IN ('txn_record_inserts', 'txn_record_moves')"
            )
            columns = await conn.fetch(
                "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public' "
                "AND column_name IN ('kind', 'txn_type', 'entry') AND table_name NOT LIKE 'txn\\_%'"
            )
        finally:
            await conn.close()
        assert [tuple(r) for r in rows] == [("VOIDED", "purchase", 0), ("APPROVED", "purchase", 300)]
        assert guards == 2
        assert {tuple(c) for c in columns} == {
            ("txn", "txn_type"),
            ("recon_journal_row", "txn_type"),
            ("recon_statement_row", "entry"),
            ("recon_item", "entry"),
            ("settlement_item", "entry"),
            ("hsm_key", "kind"),  # a key's kind (MAK, PIK, ...) is another word's business
        }

    run(scenario())


def test_closing_the_journal_ends_though_its_server_answers_no_more(database_url, monkeypatch):
    """A backend of each pool stopped (SIGSTOP: a server stalled, or out of reach), a write-ahead
    under way on one: a graceful close would wait on each for its statement's timeout; the
    journal's ends within CLOSE_S, its connections cut, and the write-ahead failed (never sent)."""
    monkeypatch.setattr(store, "CLOSE_S", 1.0)

    async def scenario():
        journal = await Journal.open(database_url, pool_size=2, max_batch=8)
        with stalled_backends() as stall:
            for pool in (journal.pool, journal._inserters, journal._movers):
                async with pool.acquire() as conn:
                    stall(conn.get_server_pid())
            under_way = asyncio.ensure_future(journal.write_ahead(new_txn(f"{random.randrange(10**11, 10**12)}")))
            await asyncio.sleep(0.2)
            assert not under_way.done()  # its statement sent, and never answered
            started = time.monotonic()
            await asyncio.wait_for(journal.close(), store.CLOSE_S + 10)
            assert time.monotonic() - started < store.CLOSE_S + 5
            assert under_way.done() and isinstance(under_way.exception(), Exception)

    if os.environ.get("SWITCH_DATABASE_URL"):
        pytest.skip("stops backends by pid: needs the embedded server, on this machine")
    run(scenario())


def test_a_connection_goes_back_to_the_pool_with_no_transaction_open(database_url):
    """With the journal's cheap pool reset, a transaction its last user left open is still rolled
    back (by asyncpg, before the reset hook) and never reaches the next user."""

    async def scenario():
        journal = await Journal.open(database_url, pool_size=2, max_batch=8)
        try:
            conn = await journal.pool.acquire()
            await conn.execute("BEGIN")
            await conn.execute("CREATE TEMP TABLE left_open (x int)")
            await journal.pool.release(conn)
            first, second = await journal.pool.acquire(), await journal.pool.acquire()
            assert not first.is_in_transaction() and not second.is_in_transaction()
            assert await first.fetchval("SELECT to_regclass('pg_temp.left_open')") is None
            assert await second.fetchval("SELECT to_regclass('pg_temp.left_open')") is None
            await journal.pool.release(first)
            await journal.pool.release(second)
        finally:
            await journal.close()

    run(scenario())


def test_a_batch_spanning_two_days_writes_every_row(database_url):
    """Around midnight one batch holds transactions of two days (field 7's date); each day's rows
    go in their own statement, and none is lost to the other day's."""

    async def scenario():
        journal = await open_journal(database_url)
        try:
            yesterday = TODAY - dt.timedelta(days=1)
            txns = [
                new_txn(await journal.next_rrn())._replace(tx_date=day) for _ in range(20) for day in (TODAY, yesterday)
            ]
            assert all(await asyncio.gather(*(journal.write_ahead(t) for t in txns)))
            assert all(await asyncio.gather(*(journal.record(outcome(t, Event.ACCEPTED)) for t in txns)))
            for t in txns:
                stored = await journal.find(t.key)
                assert stored is not None and stored.state == "APPROVED", t.key
        finally:
            await journal.close()

    run(scenario())


def test_outcome_updates_look_rows_up_by_key_as_the_day_grows(database_url):
    """The day's partition starts empty and grows fast. Outcome updates must find their rows by
    key once it is large, not through a plan made while it was empty and kept: that plan scans
    the whole partition on every batch, and the switch's cost grows with the day."""
    from tests.conftest import fresh_database

    async def updates(journal: Journal, batches: int, first: int) -> None:
        for batch in range(first, first + batches):
            txns = [new_txn(f"{batch:06d}{i:06d}") for i in range(25)]
            assert all(await asyncio.gather(*(journal.write_ahead(t) for t in txns)))
            assert all(await asyncio.gather(*(journal.record(outcome(t, Event.ACCEPTED)) for t in txns)))

    async def scenario():
        url = await fresh_database(database_url, "journal_growing_day")
        journal = await open_journal(url)
        try:
            await updates(journal, 10, 0)  # the morning: a small partition
            rush = await asyncpg.connect(url)  # the day's rush, from another writer, already approved:
            try:  # written so by the test's own hand, the journal's triggers off (as the superuser)
                await rush.execute("SET session_replication_role = replica")
                await rush.execute(
                    "INSERT INTO txn (tx_date, terminal_id, stan, transmitted, rrn, txn_type, mti, processing_code, "
                    "merchant_id, amount_fen, currency, local_time, local_date, entry_mode, pan_masked, pan_hash, "
                    "channel, out_trade_no, request_hash, received_at, state) "
                    "SELECT $1, 'RUSH' || (g / 100000), lpad((g % 100000)::text, 6, '0'), '1123120000', "
                    "'R' || lpad(g::text, 11, '0'), 'purchase', '0200', '000000', 'M', 100, '156', '120000', "
                    "'1123', '031', '-', '', $2, g::text, '', now(), 'APPROVED' FROM generate_series(1, 30000) g",
                    TODAY,
                    UNSERVED_CHANNEL,
                )
            finally:
                await rush.close()
            await updates(journal, 20, 10)
        finally:
            await journal.close()  # its backends report their table statistics as they end
        conn = await asyncpg.connect(url)
        try:
            read = await conn.fetchval(
                "SELECT seq_tup_read FROM pg_stat_user_tables WHERE relname = $1", f"txn_{TODAY:%Y%m%d}"
            )
        finally:
            await conn.close()
        assert read < 30_000, read  # not one scan of the grown partition per batch

    run(scenario())


def test_a_state_the_machine_does_not_know_or_does_not_begin_with_is_refused(database_url):
    """No foreign key checks a row's state (its query a row cost the hot path): the statement
    triggers do, for rows written and rows moved, and the statement is undone. A row is written
    in the state the machine begins a transaction with (``machine.BORN``), never past it."""

    async def scenario():
        journal = await open_journal(database_url)
        try:
            txn = new_txn(await journal.next_rrn())
            columns = ", ".join(txn._fields)
            values = ", ".join(f"${i}" for i in range(1, len(txn) + 1))
            with pytest.raises(asyncpg.CheckViolationError, match="state SETTLED unknown"):
                await journal.pool.execute(f"INSERT INTO txn ({columns}, state) VALUES ({values}, 'SETTLED')", *txn)
            with pytest.raises(asyncpg.CheckViolationError, match=r"state APPROVED is not one .* written RECEIVED"):
                await journal.pool.execute(f"INSERT INTO txn ({columns}, state) VALUES ({values}, 'APPROVED')", *txn)
            assert await journal.find(txn.key) is None
            assert await journal.write_ahead(txn)
            with pytest.raises(asyncpg.CheckViolationError, match="RECEIVED -> SETTLED not allowed"):
                await journal.pool.execute("UPDATE txn SET state = 'SETTLED' WHERE rrn = $1", txn.rrn)
            assert (await journal.find(txn.key)).state == "RECEIVED"
        finally:
            await journal.close()

    run(scenario())


def test_an_rrn_used_twice_is_an_error_not_a_duplicate(database_url):
    """Only a key already written makes a write-ahead a duplicate (answered as its first
    arrival); another transaction under an RRN in use is refused outright."""

    async def scenario():
        journal = await open_journal(database_url)
        try:
            first = new_txn(await journal.next_rrn())
            assert await journal.write_ahead(first)
            assert not await journal.write_ahead(first)  # a retransmission
            with pytest.raises(asyncpg.UniqueViolationError):
                await journal.write_ahead(new_txn(first.rrn))
        finally:
            await journal.close()

    run(scenario())


def test_a_young_day_is_analyzed_so_outcomes_look_their_rows_up_by_key(database_url):
    """Until a day's partition has statistics, the planner takes it for nearly empty and joins an
    outcome batch to it by scanning the whole day; ``analyze_young`` gives it statistics once it
    holds rows (once: then autovacuum takes over), and the day's ``txn_move`` partition too (the
    risk shards read it by transaction id)."""
    day = TODAY + dt.timedelta(days=random.randrange(40, 4000))  # a day of its own, run after run
    name, moves = f"txn_{day:%Y%m%d}", f"txn_move_{day:%Y%m%d}"

    async def outcome_plan(journal: Journal, txn: NewTxn) -> str:
        report = Report(*txn.key, Event.ACCEPTED, "00", "123456", "SUCCESS", "", "42", None)
        plan = await journal.pool.fetch(f"EXPLAIN {_MOVE_SQL}", *_columns([report]), day)  # planned, not run
        return "\n".join(row[0] for row in plan)

    async def scenario():
        journal = await open_journal(database_url)
        try:
            async with journal.pool.acquire() as conn:
                await ensure_partitions(conn, day, day)
                for table in (name, moves):  # this test analyzes
                    await conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
            txns = [new_txn(await journal.next_rrn())._replace(tx_date=day) for _ in range(300)]
            assert all(await asyncio.gather(*(journal.write_ahead(t) for t in txns)))
            await journal.close()  # its writers' backends report their rows as they exit
            journal = await open_journal(database_url)
            for _ in range(50):
                changed = await journal.pool.fetchval(
                    "SELECT min(n_mod_since_analyze) FROM pg_stat_user_tables WHERE relname = ANY($1::text[])",
                    [name, moves],
                )
                if changed >= 300:
                    break
                await asyncio.sleep(0.1)
            before = await outcome_plan(journal, txns[0])
            assert "terminal_id = u.terminal_id" not in before  # the whole day scanned by its date
            assert await journal.analyze_young(min_rows=1000, today=day) == []  # not young enough yet
            # The switch's runtime role may not analyze what it does not own: the owner does it for it.
            runtime = await asyncpg.connect(await runtime_url(database_url))
            try:
                assert not await runtime.fetchval(f"SELECT has_table_privilege('{name}', 'SELECT')")  # via txn only
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await runtime.execute(f"ALTER TABLE {name} SET (autovacuum_enabled = true)")
                assert sorted(await analyze_young(runtime, [day], 200)) == [name, moves]
            finally:
                await runtime.close()
            after = await outcome_plan(journal, txns[0])
            assert "terminal_id = u.terminal_id" in after, after  # looked up by its key
            assert await journal.analyze_young(min_rows=200, today=day) == []  # analyzed once
        finally:
            await journal.close()

    run(scenario())


def _nodes(plan: dict) -> list[dict]:
    """A plan's nodes (EXPLAIN's JSON), every level."""
    return [plan, *(node for child in plan.get("Plans", []) for node in _nodes(child))]


def test_the_resolver_claims_the_most_overdue_and_reads_a_finished_row_once(database_url):
    """Resolvers claim every second. A row that has left their queues stays in the queue's index
    until a vacuum, up to a fifth of the day: a claim passes its entry once, not on every claim.
    Each queue is read in order from its own index, however the statement is planned."""
    from tests.conftest import fresh_database

    async def index_reads(conn: asyncpg.Connection, partition: str) -> int:
        await conn.execute("SELECT pg_stat_force_next_flush()")  # this backend's, once it is idle
        await asyncio.sleep(0.1)
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        reads = "SELECT sum(idx_tup_read)::int FROM pg_stat_user_indexes WHERE relname = $1"
        return await conn.fetchval(reads, partition)

    async def scenario() -> tuple[list[tuple[str, bool]], list[int]]:
        url = await fresh_database(database_url, "journal_claims")
        journal = await open_journal(url)
        conn = await asyncpg.connect(url)
        try:
            partition = f"txn_{TODAY:%Y%m%d}"
            await conn.execute(f"ALTER TABLE {partition} SET (autovacuum_enabled = false)")  # as between vacuums
            await conn.execute(  # 5,000 written ahead an hour ago, in the order they fall due, and 1,000 now
                "INSERT INTO txn (tx_date, terminal_id, stan, transmitted, rrn, txn_type, mti, processing_code, "
                "merchant_id, amount_fen, currency, local_time, local_date, entry_mode, pan_masked, pan_hash, "
                "channel, out_trade_no, request_hash, state, next_check_at) "
                "SELECT $1, 'CLAIMS', lpad(g::text, 6, '0'), '1123120000', 'C' || lpad(g::text, 11, '0'), "
                "'purchase', '0200', '000000', 'M', 100, '156', '120000', '1123', '031', '-', '', $2, g::text, '', "
                "'RECEIVED', now() + CASE WHEN g <= 5000 THEN interval '-1 hour' ELSE interval '30 s' END "
                "+ g * interval '1 ms' "
                "FROM generate_series(1, 6000) g",
                TODAY,
                UNSERVED_CHANNEL,
            )
            await conn.execute(  # all the hour's answered but the last 40
                "UPDATE txn SET state = 'APPROVED', next_check_at = NULL WHERE rrn < 'C00000004961'"
            )
            reversing = "UPDATE txn SET reversal_requested_at = now(), next_check_at = $2 WHERE rrn = $1"
            await conn.execute(reversing, "C00000000001", dt.datetime.now(dt.UTC) - dt.timedelta(hours=2))
            await conn.execute(reversing, "C00000000002", dt.datetime.now(dt.UTC))
            await conn.execute(f"ANALYZE {partition}")
            before = await index_reads(conn, partition)
            claimed = await journal.claim_due(4, 3600, [UNSERVED_CHANNEL])
            await journal.close()  # its backends report what they read as they exit
            for _ in range(50):
                if await index_reads(conn, partition) - before >= 4_960:
                    break
            else:
                raise AssertionError("the claim's index reads were never reported")
            # The resolvers' next claims, planned once for any parameters (as a pooled connection's
            # prepared statement may be, from its sixth run).
            await conn.execute("SET plan_cache_mode = force_generic_plan")
            plan = json.loads(await conn.fetchval(f"EXPLAIN (FORMAT JSON) {_CLAIM_SQL}", 4, 3600, [UNSERVED_CHANNEL]))
            queues = await conn.fetch(
                "SELECT indexname FROM pg_indexes WHERE tablename = $1 AND indexdef LIKE '%(next_check_at)%'",
                partition,
            )
            reads = []
            for _ in range(4):
                before = await index_reads(conn, partition)
                assert len(await conn.fetch(_CLAIM_SQL, 4, 3600, [UNSERVED_CHANNEL])) == 4
                reads.append(await index_reads(conn, partition) - before)
            scanned = {node["Index Name"] for node in _nodes(plan[0]["Plan"]) if node["Node Type"] == "Index Scan"}
            assert {q["indexname"] for q in queues} <= scanned, (queues, scanned)  # in order, not as a bitmap
            return [(t.rrn, t.reversal_requested) for t in claimed], reads
        finally:
            await conn.close()
            await journal.close()

    claimed, reads = run(scenario())
    # The reversal two hours overdue, then the open rows in the order they fell due; the newest
    # reversal and the last open rows are left for the next claim.
    assert claimed == [("C00000000001", True), ("C00000004961", False), ("C00000004962", False),
                       ("C00000004963", False)]  # fmt: skip
    # The first claim passed the 4,960 answered rows' entries; the next ones read what they claim.
    assert max(reads) <= 20, reads


@contextlib.asynccontextmanager
async def writer_and_maker(url: str, names: list[str]) -> AsyncIterator[tuple[asyncpg.Connection, asyncpg.Connection]]:
    """A connection to write and one to make days on the migrated journal at ``url``; the
    partitions ``names`` dropped after (a lock-order test's far days)."""
    journal = await open_journal(url)
    writer, maker = await asyncpg.connect(url), await asyncpg.connect(url)
    try:
        yield writer, maker
    finally:
        for name in reversed(names):
            await maker.execute(f"DROP TABLE IF EXISTS {name}")
        await writer.close()
        await maker.close()
        await journal.close()


def test_days_are_made_locking_the_journal_as_a_write_does_so_that_neither_deadlocks(database_url):
    """A write locks ``txn``, then ``txn_move`` (its trigger records the move). Making days took
    them the other way round whenever the first partition it made was a ``txn_move`` one (a day
    whose ``txn`` partition was there already, an earlier release's): the next day's ``txn``
    partition then waited on a write that waited on it, and PostgreSQL aborted one of them (a
    fresh clone's test run caught it). Both are locked before any is made, in a write's order."""

    async def scenario() -> list[str]:
        days = [TODAY + dt.timedelta(days=n) for n in (530, 531)]
        names = [f"{parent}_{day:%Y%m%d}" for day in days for parent in ("txn", "txn_move")]
        async with writer_and_maker(database_url, names) as (writer, maker):
            await maker.execute(
                f"CREATE TABLE {names[0]} PARTITION OF txn FOR VALUES FROM ('{days[0]}') "
                f"TO ('{days[0] + dt.timedelta(days=1)}')"
            )
            async with writer.transaction():
                await writer.execute("LOCK TABLE ONLY txn IN ROW EXCLUSIVE MODE")  # a write under way
                making = asyncio.ensure_future(ensure_partitions(maker, days[0], days[1]))
                await waits_for_a_lock(writer, maker.get_server_pid())
                await writer.execute("LOCK TABLE ONLY txn_move IN ROW EXCLUSIVE MODE")  # its move's record
            return await making

    made = run(scenario())
    later = [TODAY + dt.timedelta(days=n) for n in (530, 531)]
    assert made == [f"txn_move_{later[0]:%Y%m%d}", f"txn_{later[1]:%Y%m%d}", f"txn_move_{later[1]:%Y%m%d}"]


def test_partitions_made_by_hand_are_guarded_locking_the_journal_as_a_write_does(database_url):
    """Guarding partitions made by hand (``txn_move``'s day first, then ``txn``'s) locked them one
    by one: the ``txn_move`` one, then the ``txn`` one a write of that day held while it waited for
    the ``txn_move`` one, and PostgreSQL aborted one of them (helper 76 reproduced it). With a
    partition to guard, as with one to make, both parents are locked first, in a write's order."""

    async def scenario() -> list[tuple[str, str]]:
        day = TODAY + dt.timedelta(days=540)
        names = [f"txn_move_{day:%Y%m%d}", f"txn_{day:%Y%m%d}"]
        async with writer_and_maker(database_url, names) as (writer, maker):
            for name, parent in zip(names, ("txn_move", "txn"), strict=True):
                await maker.execute(
                    f"CREATE TABLE {name} PARTITION OF {parent} FOR VALUES FROM ('{day}') "
                    f"TO ('{day + dt.timedelta(days=1)}')"
                )
            async with writer.transaction():  # a write of that day, its row in txn's partition
                await writer.execute("LOCK TABLE ONLY txn IN ROW EXCLUSIVE MODE")
                await writer.execute(f"LOCK TABLE {names[1]} IN ROW EXCLUSIVE MODE")
                making = asyncio.ensure_future(ensure_partitions(maker, day, day))
                await waits_for_a_lock(writer, maker.get_server_pid())
                await writer.execute(f"LOCK TABLE {names[0]} IN ROW EXCLUSIVE MODE")  # its move's record
            assert await making == []  # nothing to make, two to guard
            return [
                tuple(row)
                for row in await maker.fetch(
                    "SELECT tgrelid::regclass::text, tgname FROM pg_trigger WHERE tgrelid::regclass::text = ANY($1) "
                    "AND NOT tgisinternal AND tgparentid = 0 ORDER BY 1, 2",
                    names,
                )
            ]

    day = TODAY + dt.timedelta(days=540)
    assert run(scenario()) == [
        (f"txn_{day:%Y%m%d}", "journal_keeps_all"),
        (f"txn_{day:%Y%m%d}", "txn_record_inserts"),
        (f"txn_{day:%Y%m%d}", "txn_record_moves"),
        (f"txn_move_{day:%Y%m%d}", "journal_keeps_all"),
    ]


def test_the_queue_gauges_count_orphans_not_purchases_in_flight(database_url):
    """``paysw_open_transactions``: a purchase written ahead and still within its front end's
    deadline is no orphan (under load there are hundreds); one past it, or already claimed by a
    resolver, is."""
    channel = f"gauges-{uuid.uuid4().hex[:8]}"  # the shared journal: only this test's rows

    async def scenario() -> list[tuple[str, str, int]]:
        journal = await open_journal(database_url)
        try:
            txns = [new_txn(await journal.next_rrn())._replace(channel=channel) for _ in range(6)]
            assert all(await asyncio.gather(*(journal.write_ahead(t) for t in txns)))  # due in an hour
            set_row = "UPDATE txn SET {} WHERE tx_date = $1 AND rrn = $2"
            for txn, change in zip(txns[1:], [
                "next_check_at = now() - interval '1 s'",  # its front end gone past its deadline
                "next_check_at = now() + interval '30 s', checks = 1",  # such an orphan, leased
                "state = 'PENDING', next_check_at = now() + interval '10 s'",
                "state = 'APPROVED', reversal_requested_at = now(), next_check_at = now() + interval '1 h'",
                "reversal_requested_at = now()",  # in flight, and its 0400 arrived
            ], strict=True):  # fmt: skip
                await journal.pool.execute(set_row.format(change), TODAY, txn.rrn)
            return sorted((q, n) for c, q, n in await journal.open_by_queue() if c == channel)
        finally:
            await journal.close()

    assert run(scenario()) == [("PENDING", 1), ("RECEIVED", 2), ("REVERSAL", 2)]


def test_a_writer_gives_up_on_a_row_locked_elsewhere(database_url):
    """One writer commits a front end's outcomes: a row locked elsewhere (a person's transaction
    left open) fails its own outcome after WRITER_LOCK_WAIT_MS, not every outcome for 30 s."""

    async def scenario():
        journal = await open_journal(database_url)
        try:
            locked, free = new_txn(await journal.next_rrn()), new_txn(await journal.next_rrn())
            assert await journal.write_ahead(locked) and await journal.write_ahead(free)
            async with journal.pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "SELECT 1 FROM txn WHERE tx_date = $1 AND terminal_id = $2 AND stan = $3 AND transmitted = $4 "
                    "FOR UPDATE",
                    *locked.key,
                )
                loop = asyncio.get_running_loop()
                started = loop.time()
                results = await asyncio.gather(
                    journal.record(outcome(locked, Event.ACCEPTED)),
                    journal.record(outcome(free, Event.ACCEPTED)),
                    return_exceptions=True,
                )
                waited = loop.time() - started
            assert isinstance(results[0], asyncpg.LockNotAvailableError), results
            assert results[1] is State.APPROVED
            assert waited < 3 * WRITER_LOCK_WAIT_MS / 1000, waited  # not command_timeout's 30 s
            assert (await journal.find(locked.key)).state == "RECEIVED"  # the resolver's to finish
        finally:
            await journal.close()

    run(scenario())
