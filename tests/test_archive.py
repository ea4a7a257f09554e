"""Retention (``paysw journal archive`` / ``restore``, ``switch.journal.archive``) on a real
PostgreSQL: a day is copied out and dropped only when nothing keeps it, what is dropped is what was
archived, and a restore reads the same rows back, guarded as every day is."""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import hashlib
import json
import os
import stat
import subprocess
import sys

import asyncpg
import pytest

from switch.journal import Event, Journal, State
from switch.journal import archive as retention
from switch.journal.roles import lacking, runtime_url
from switch.journal.schema import partition
from tests.conftest import fresh_database, run
from tests.test_journal import new_txn, outcome

OWNER_URL_ENV = "SWITCH_DATABASE_OWNER_URL"
noon = dt.time(12)


def paysw_journal(url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, OWNER_URL_ENV: url}
    return subprocess.run(
        [sys.executable, "-m", "switch.cli", "journal", *args], env=env, capture_output=True, text=True, timeout=120
    )


async def rows_of(conn: asyncpg.Connection, day: dt.date) -> tuple[list, list]:
    """The day's transactions and moves, every column, in key order."""
    txns = await conn.fetch("SELECT * FROM txn WHERE tx_date = $1 ORDER BY terminal_id, stan", day)
    moves = await conn.fetch("SELECT * FROM txn_move WHERE tx_date = $1 ORDER BY rrn, moved_at", day)
    return [tuple(r) for r in txns], [tuple(r) for r in moves]


async def written(journal: Journal, day: dt.date, *events: Event) -> str:
    """A purchase of ``day`` written ahead and moved by ``events``; its order number."""
    txn = new_txn(await journal.next_rrn())._replace(tx_date=day, received_at=dt.datetime.combine(day, noon, dt.UTC))
    assert await journal.write_ahead(txn)
    for event in events:
        assert await journal.record(outcome(txn, event, "05" if event is Event.REFUSED else "00")) is not None
    return txn.out_trade_no


async def _execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _fetchval(url: str, sql: str, *args: object) -> object:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


def test_a_day_is_archived_dropped_and_restored_only_when_nothing_keeps_it(database_url, tmp_path):
    url = run(fresh_database(database_url, "paysw_archive"))
    folders = tmp_path / "archive"
    # A server whose clock reads another day than UTC's for 14 hours of each: the journal's days are UTC's.
    run(_execute(url, "ALTER DATABASE paysw_archive SET TimeZone = 'Pacific/Kiritimati'"))

    async def setup() -> tuple[dt.date, str, list]:
        journal = await Journal.open(url, pool_size=2, max_batch=64)
        try:
            today = await journal.pool.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date")
            old = today - dt.timedelta(days=retention.KEEP_DAYS + 100)
            await journal.pool.fetch("SELECT journal_make_days($1, $2)", old, old + dt.timedelta(days=1))
            settled = await written(journal, old, Event.ACCEPTED)
            unsettled = await written(journal, old, Event.ACCEPTED)
            gone = await written(journal, old, Event.ACCEPTED, Event.VOIDED)  # settled, then its money went back
            await written(journal, old + dt.timedelta(days=1))  # the next day: one still open
            await journal.pool.executemany(
                "INSERT INTO settlement_item (entry, out_trade_no, settled_on, merchant_id, channel, amount_fen, "
                "fee_fen) VALUES ('PAY', $1, $2, 'm', 'c', 100, 0)",
                [(settled, old), (gone, old)],
            )  # fmt: skip
            async with journal.pool.acquire() as conn:
                before = await rows_of(conn, old)
            return old, unsettled, gone, before
        finally:
            await journal.close()

    old, unsettled, gone, before = run(setup())
    next_day = old + dt.timedelta(days=1)
    assert len(before[0]) == 3 and len(before[1]) == 7  # three written RECEIVED, approved, one voided

    # Too young, too little kept, or nowhere to write: refused before anything is read.
    today = old + dt.timedelta(days=retention.KEEP_DAYS + 100)
    first_kept = today - dt.timedelta(days=retention.KEEP_DAYS - 1)
    for args, said in (
        (["--to", str(tmp_path), "--before", str(today)], f"--before {first_kept} at the latest, or leave it out"),
        (["--to", str(tmp_path), "--before", str(old), "--keep-days", "30"], "--keep-days: at least 366"),
        (["--to", str(folders)], "not a folder (none there: make it, or mount it)"),  # never made: a share unmounted
    ):
        refused = paysw_journal(url, "archive", *args)
        assert refused.returncode == 2 and said in refused.stderr, refused.stderr
    assert not folders.exists()
    folders.mkdir()
    nowhere = subprocess.run(
        [sys.executable, "-m", "switch.cli", "journal", "archive", "--to", str(folders), "--data-dir", str(tmp_path)],
        env={k: v for k, v in os.environ.items() if k != OWNER_URL_ENV}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert nowhere.returncode == 2 and f"set {OWNER_URL_ENV}" in nowhere.stderr and "is not one" in nowhere.stderr

    # One payment kept but not settled keeps its day; the open one keeps the next: nothing written.
    first = paysw_journal(
        url, "archive", "--before", str(next_day + dt.timedelta(days=1)), "--to", str(folders), "--drop"
    )
    assert first.returncode == 1, first.stderr
    assert f"{old}: kept in the journal: 1 not settled" in first.stdout
    assert "1 to claw back (paysw settle takes back a payment settled whose money went back)" in first.stdout
    assert f"{next_day}: kept in the journal: 1 open or owing a reversal" in first.stdout
    assert list(folders.iterdir()) == []

    async def settle() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.executemany(
                "INSERT INTO settlement_item (entry, out_trade_no, settled_on, merchant_id, channel, amount_fen, "
                "fee_fen) VALUES ($1, $2, $3, 'm', 'c', 100, 0)",
                [("PAY", unsettled, old), ("CLAWBACK", gone, old)],
            )  # fmt: skip
        finally:
            await conn.close()

    run(settle())
    second = paysw_journal(
        url, "archive", "--before", str(next_day + dt.timedelta(days=1)), "--to", str(folders), "--drop"
    )
    assert second.returncode == 1, second.stderr  # the next day is still kept
    folder = retention.folder_of(folders, old)
    assert f"{old}: 3 transactions, 7 moves archived to {folder} and dropped from the journal" in second.stdout
    manifest = json.loads((folder / retention.MANIFEST).read_text())
    assert {p: t["rows"] for p, t in manifest["tables"].items()} == {"txn": 3, "txn_move": 7}
    for file in folder.iterdir():
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file  # the owner's alone
    with gzip.open(folder / "txn.csv.gz", "rt") as text:
        assert text.readline().startswith("tx_date,terminal_id,stan,transmitted,rrn,")

    async def after_drop() -> None:
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT to_regclass($1)", partition("txn", old)) is None
            assert await conn.fetchval("SELECT count(*) FROM txn WHERE tx_date = $1", next_day) == 1  # kept
            audit = await conn.fetch("SELECT action, target, after FROM console_audit ORDER BY id")
            assert [(a["action"], a["target"]) for a in audit] == [
                ("journal.archive", str(old)),
                ("journal.drop", str(old)),
            ]
            assert json.loads(audit[1]["after"])["txn"] == {"rows": 3, "sha256": manifest["tables"]["txn"]["sha256"]}
        finally:
            await conn.close()

    run(after_drop())

    # An archive altered after it was written is refused whole.
    altered = tmp_path / "altered"
    altered.mkdir()
    for file in folder.iterdir():
        (altered / file.name).write_bytes(file.read_bytes())
    with gzip.open(folder / "txn.csv.gz", "rb") as raw:
        rows = raw.read()
    (altered / "txn.csv.gz").write_bytes(gzip.compress(rows.replace(b",100,", b",900,", 1)))
    refused = paysw_journal(url, "restore", str(altered))
    assert refused.returncode == 2 and "not what manifest.json says" in refused.stderr, refused.stderr

    # Altered with a manifest to match: not what this journal's audit recorded when it dropped the day.
    manifest_altered = json.loads((altered / retention.MANIFEST).read_text())
    manifest_altered["tables"]["txn"]["sha256"] = hashlib.sha256(rows.replace(b",100,", b",900,", 1)).hexdigest()
    (altered / retention.MANIFEST).write_text(json.dumps(manifest_altered))
    forged = paysw_journal(url, "restore", str(altered))
    assert forged.returncode == 2 and "recorded no drop of" in forged.stderr, forged.stderr

    restored = paysw_journal(url, "restore", str(folder))
    assert restored.returncode == 0, restored.stderr
    assert f"{old}: 3 transactions, 7 moves read back into the journal" in restored.stdout
    again = paysw_journal(url, "restore", str(folder))
    assert again.returncode == 2 and "the journal has this day's tables already" in again.stderr

    async def after_restore() -> None:
        conn = await asyncpg.connect(url)
        try:
            assert await rows_of(conn, old) == before  # every column of every row, as it was
            with pytest.raises(asyncpg.InsufficientPrivilegeError):  # guarded as every day is
                await conn.execute(f"TRUNCATE {partition('txn', old)}")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("DELETE FROM txn WHERE tx_date = $1", old)
        finally:
            await conn.close()

    run(after_restore())

    # A day restored is held from the next nightly drop for --hold-days (never detached meanwhile); then taken again.
    args = ["archive", "--before", str(next_day), "--to", str(folders), "--drop"]
    guard = "SELECT oid FROM pg_trigger WHERE tgrelid = $1::regclass AND tgname = 'txn_record_moves'"
    guarded = run(_fetchval(url, guard, partition("txn", old)))
    held = paysw_journal(url, *args)
    assert held.returncode == 1 and f"{old}: kept in the journal: 1 restored lately (held --hold-days" in held.stdout
    assert run(_fetchval(url, guard, partition("txn", old))) == guarded
    again = paysw_journal(url, *args, "--hold-days", "0")
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{old}: 3 transactions, 7 moves archived already in {folder} (read back) and dropped" in again.stdout

    async def retention_rows() -> list[tuple]:
        conn = await asyncpg.connect(url)
        try:
            return [tuple(r) for r in await conn.fetch("SELECT day, action, folder FROM journal_retention ORDER BY id")]
        finally:
            await conn.close()

    assert run(retention_rows()) == [(old, action, str(folder)) for action in ("dropped", "restored", "dropped")]


def test_a_day_changed_after_it_was_archived_is_not_dropped_and_a_drop_cut_short_is_finished(database_url, tmp_path):
    url = run(fresh_database(database_url, "paysw_archive_changed"))

    async def scenario() -> None:
        journal = await Journal.open(url, pool_size=2, max_batch=64)
        try:
            today = await journal.pool.fetchval("SELECT current_date")
            old = today - dt.timedelta(days=retention.KEEP_DAYS + 2)
            await journal.pool.fetch("SELECT journal_make_days($1, $2)", old, old + dt.timedelta(days=1))
            await written(journal, old, Event.REFUSED)
            await written(journal, old + dt.timedelta(days=1), Event.REFUSED)
        finally:
            await journal.close()
        runtime = await asyncpg.connect(await runtime_url(url))  # the switch's role, as it starts
        # Two sessions whose times read otherwise: the archive's bytes are the same in either.
        conn = await asyncpg.connect(url, server_settings={"TimeZone": "Asia/Shanghai"})
        other = await asyncpg.connect(url, server_settings={"TimeZone": "America/New_York", "DateStyle": "SQL"})
        try:
            day, later = await retention.days_before(conn, old + dt.timedelta(days=2))
            done = await retention.archive(conn, day, tmp_path, "test")
            assert done.folder is not None and done.rows == {"txn": 1, "txn_move": 2}
            # A row changed since (no move: the guard lets it) is seen before the detach...
            await conn.execute("UPDATE txn SET channel_message = 'changed' WHERE tx_date = $1", old)
            guard = "SELECT oid FROM pg_trigger WHERE tgrelid = $1::regclass AND tgname = 'txn_record_moves'"
            guarded = await conn.fetchval(guard, day.tables["txn"])
            kept = await retention.drop(other, day, done.folder, "test")
            assert not kept.dropped and "txn changed since" in kept.kept
            assert await conn.fetchval(guard, day.tables["txn"]) == guarded  # never detached (nor guarded anew)
            # ... and, had it changed between an archive and the detach, after it: attached again.
            kept = await retention.drop(other, day, done.folder, "test", fresh=True)
            assert not kept.dropped and "txn changed since" in kept.kept
            assert await conn.fetchval("SELECT count(*) FROM txn WHERE tx_date = $1", old) == 1
            again, _ = await retention.days_before(conn, old + dt.timedelta(days=2))
            assert again.attached and again.tables == day.tables
            assert [r["action"] for r in await conn.fetch("SELECT action FROM console_audit")] == ["journal.archive"]
            assert await conn.fetchval("SELECT state FROM txn WHERE tx_date = $1", old) == State.DECLINED.value
            with pytest.raises(asyncpg.InsufficientPrivilegeError):  # guarded again
                await conn.execute(f"TRUNCATE {partition('txn', old)}")

            # The next day archived, then left half detached by a drop cut short: the switch's role
            # still finds its grants whole (it starts), and the next drop finishes the day.
            written_later = await retention.archive(conn, later, tmp_path, "test")
            await conn.execute(f"ALTER TABLE txn DETACH PARTITION {later.tables['txn']}")
            async with other.transaction():  # a transaction older than the detach, which it waits for...
                await other.fetchval("SELECT count(*) FROM txn_move")
                await conn.execute("SET lock_timeout = '200ms'")
                with pytest.raises(asyncpg.LockNotAvailableError):  # ... until cut short: left pending
                    await conn.execute(f"ALTER TABLE txn_move DETACH PARTITION {later.tables['txn_move']} CONCURRENTLY")
            pending = "SELECT inhdetachpending FROM pg_inherits WHERE inhrelid = $1::regclass"
            assert await conn.fetchval(pending, later.tables["txn_move"])
            _, left = await retention.days_before(conn, old + dt.timedelta(days=2))
            assert left.detached == {"txn", "txn_move"} and left.tables == later.tables  # one detached, one begun
            assert await retention.out_of_sight(conn, later.day) and not await retention.out_of_sight(conn, old)
            assert await lacking(runtime) == []
            said = await asyncio.to_thread(paysw_journal, url, "archive", "--to", str(tmp_path))
            assert said.returncode == 3, said.stdout + said.stderr  # what monitoring is to see
            assert f"{later.day}: out of the journal's sight, detached by a drop cut short" in said.stdout
            assert (await retention.archive(conn, left, tmp_path, "test")).folder == written_later.folder  # read back
            assert (await retention.drop(other, left, written_later.folder, "test")).dropped  # and FINALIZEd
            with pytest.raises(asyncpg.InsufficientPrivilegeError):  # what a restore trusts: the owner's alone
                await runtime.execute(
                    "INSERT INTO journal_retention (day, action, txn_sha256, txn_move_sha256, folder, by_whom) "
                    "VALUES ($1, 'dropped', 'x', 'x', 'x', 'x')",
                    later.day,
                )
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("DELETE FROM journal_retention")
            assert [d.day for d in await retention.days_before(conn, old + dt.timedelta(days=2))] == [old]

            # A column added since the archive: its rows would be dropped unarchived, so not dropped.
            await conn.execute("UPDATE txn SET channel_message = $2 WHERE tx_date = $1", old, "again")
            (tmp_path / "second").mkdir()
            fresh = await retention.archive(conn, again, tmp_path / "second", "test")
            await conn.execute("ALTER TABLE txn ADD COLUMN later_info text DEFAULT 'not in the archive'")
            kept = await retention.drop(conn, again, fresh.folder, "test", fresh=True)
            assert not kept.dropped and "txn's columns changed since" in kept.kept
            assert (await retention.days_before(conn, old + dt.timedelta(days=2)))[0].attached
        finally:
            for each in (conn, other, runtime):
                await each.close()

    run(scenario())


def test_what_keeps_a_day_is_each_named(database_url):
    """Each thing the switch still has to do with a day's rows keeps it, and is named."""
    url = run(fresh_database(database_url, "paysw_archive_blockers"))
    # Each reason's statements, each given the day's one order number (ORDER) or the day (DAY).
    ORDER, DAY = "order", "day"
    reasons = {
        # Paid and settled, but received on a later day than its own (field 7's) and within the
        # refund window (the journal's guards forbid the change: the test steps around them).
        "refundable still": [
            ("SET session_replication_role = replica", None),
            (
                "UPDATE txn SET state = 'APPROVED', received_at = now() - interval '365 days' + interval '1 hour' "
                "WHERE out_trade_no = $1",
                ORDER,
            ),
            ("RESET session_replication_role", None),
            (
                "INSERT INTO settlement_item (entry, out_trade_no, settled_on, merchant_id, channel, amount_fen, "
                "fee_fen) SELECT 'PAY', out_trade_no, tx_date, merchant_id, channel, amount_fen, 0 FROM txn "
                "WHERE out_trade_no = $1",
                ORDER,
            ),
        ],
        "with a void or refund under way": [("UPDATE txn SET reserved_fen = 10 WHERE out_trade_no = $1", ORDER)],
        "reconciliation batches unfinished": [
            ("INSERT INTO recon_batch (channel, day, hour) VALUES ('c', $1, -1)", DAY)
        ],
        "with a reconciliation difference open": [
            ("INSERT INTO recon_batch (channel, day, hour, step) VALUES ('d', $1::date - 30, -1, 'done')", DAY),
            (
                "INSERT INTO recon_item (batch_id, class, entry, out_trade_no, status) "
                "SELECT currval('recon_batch_id_seq'), 'LONG', 'PAY', $1, 'OPEN'",  # no RRN: by its order number
                ORDER,
            ),
        ],
        "dead letters unresolved": [
            (
                "INSERT INTO dead_letter SELECT tx_date, terminal_id, stan, transmitted, rrn, channel, state, 'test' "
                "FROM txn WHERE out_trade_no = $1",
                ORDER,
            )
        ],
        "notifications being delivered": [
            (
                "INSERT INTO notice_outbox (tx_date, rrn, state, merchant_id, url) "
                "SELECT tx_date, rrn, state, merchant_id, 'https://m.example/n' FROM txn WHERE out_trade_no = $1",
                ORDER,
            )
        ],
    }

    async def scenario() -> dict[str, dict[str, int]]:
        journal = await Journal.open(url, pool_size=2, max_batch=64)
        found = {}
        try:
            today = await journal.pool.fetchval("SELECT current_date")
            for n, (reason, statements) in enumerate(reasons.items()):
                day = today - dt.timedelta(days=retention.KEEP_DAYS + 10 * n)
                await journal.pool.fetch("SELECT journal_make_days($1, $1)", day)
                given = {ORDER: await written(journal, day, Event.REFUSED), DAY: day}
                async with journal.pool.acquire() as conn:
                    for sql, arg in statements:
                        await conn.execute(sql, *([] if arg is None else [given[arg]]))
                    held = (await retention.days_before(conn, day + dt.timedelta(days=1)))[-1]
                    found[reason] = await retention.blockers(conn, held)
        finally:
            await journal.close()
        return found

    assert run(scenario()) == {reason: {reason: 1} for reason in reasons}


def test_an_error_not_foreseen_is_exit_status_4_not_a_day_kept(database_url, tmp_path):
    """Cron reads exit status 1 as "a day kept" (said why): a crash is 4, with its traceback. The
    crash is made by a day list that raises, in a real process against the real journal."""
    crash = (
        "import sys\n"
        "from switch.journal import archive\n"
        "async def days_before(conn, before):\n"
        "    raise KeyError('not foreseen')\n"
        "archive.days_before = days_before\n"
        "from switch.cli import main\n"
        f"sys.exit(main(['journal', 'archive', '--to', {str(tmp_path)!r}]))\n"
    )
    env = {**os.environ, OWNER_URL_ENV: database_url}
    done = subprocess.run([sys.executable, "-c", crash], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 4, done.stderr
    assert "Traceback" in done.stderr and "KeyError: 'not foreseen'" in done.stderr
    assert "paysw journal archive: stopped by the error above (exit status 4)" in done.stderr
