"""One reconciliation batch: a channel's statement against the journal for a day, or an hour of
it. A fixed sequence of steps, each one database transaction that ends by moving the batch's
persisted ``step`` on, so a batch that fails or is killed resumes at the step that did not
finish, never from scratch, and no step's work is ever committed twice.

    fetch    the statement through the channel's download call (kept in the batch row: archive)
    load     parse it; its rows in the window into ``recon_statement_row``
    extract  the journal's purchases and refunds of the window into ``recon_journal_row``
             (the work is done on these copies, away from the online tables)
    match    compare the two: one ``recon_item`` per order or refund, classified
    handle   the automatic error handling (``switch.recon.handling``), within its threshold
    report   counts and amounts per class into the batch's summary; the work rows go

Classes: MATCHED; LONG (the channel kept money for an order the journal does not have); SHORT
(approved in the journal, unknown to the channel); AMOUNT (both, amounts differ); STATUS (both,
or the journal alone, disagree on whether money was kept: a journal still UNKNOWN or PENDING, a
decline the channel charged, a reversal the channel did not do); REFUND (a refund on one side
only, of another amount, or not done on the statement: in progress, closed). A channel-only
order it gave back whole (REVOKED) moved no money and is not a difference.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Awaitable, Callable

import asyncpg

from protocols.channels import channel_of
from protocols.statements import CST, PAID
from switch.journal.machine import KEPT, OPEN, PURCHASE, REFUND, sql_set
from switch.recon.handling import Handler

Fetch = Callable[[str, dt.date], Awaitable[bytes]]
# Runs ``statement_records`` away from the caller's event loop: a thread by default; the switch
# passes a Ray task, so that parsing a day's file never stalls the front end's loop.
Parse = Callable[[int, str, bytes, dt.datetime, dt.datetime], Awaitable[list[tuple]]]
STEPS = ("fetch", "load", "extract", "match", "handle", "report")
DONE = "done"
CLASSES = ("MATCHED", "LONG", "SHORT", "AMOUNT", "STATUS", "REFUND")
WHOLE_DAY = -1
# A purchase whose reversal was acknowledged is not money kept; it is still owed (the resolver's
# to finish) while open, or while kept with its reversal not yet carried out (as ``DUE_SQL``).
_MONEY_KEPT = f"(j.state IN {sql_set(KEPT)} AND NOT j.reversing)"
_STILL_OPEN = f"(j.state IN {sql_set(OPEN)} OR (j.state IN {sql_set(KEPT)} AND j.reversing))"
_REFUND_EXPECTED = sql_set(KEPT | OPEN)  # a refund the channel should have

_MATCH_PAYMENTS = f"""
INSERT INTO recon_item
    (batch_id, class, entry, out_trade_no, rrn, journal_state, journal_fen, channel_status, channel_fen, status)
SELECT $1, class, 'PAY', out_trade_no, rrn, state, journal_fen, channel_status, channel_fen,
       CASE WHEN class = 'MATCHED' THEN 'MATCHED' ELSE 'OPEN' END
FROM (
    SELECT coalesce(s.out_trade_no, j.out_trade_no) AS out_trade_no, j.rrn, j.state, j.amount_fen AS journal_fen,
           s.status AS channel_status, s.amount_fen AS channel_fen,
           CASE
               WHEN j.out_trade_no IS NULL THEN CASE WHEN s.status = 'SUCCESS' THEN 'LONG' END
               WHEN s.out_trade_no IS NULL THEN CASE
                   WHEN {_MONEY_KEPT} THEN 'SHORT'
                   WHEN {_STILL_OPEN} THEN 'STATUS' END
               WHEN (s.status = 'SUCCESS') <> {_MONEY_KEPT} THEN 'STATUS'
               WHEN s.amount_fen <> j.amount_fen THEN 'AMOUNT'
               ELSE 'MATCHED'
           END AS class
    FROM (SELECT * FROM recon_statement_row WHERE batch_id = $1 AND entry = 'PAY') s
    FULL JOIN (SELECT * FROM recon_journal_row WHERE batch_id = $1 AND txn_type = '{PURCHASE}') j
        ON s.out_trade_no = j.out_trade_no
) compared
WHERE class IS NOT NULL
"""

_MATCH_REFUNDS = f"""
INSERT INTO recon_item
    (batch_id, class, entry, out_trade_no, rrn, journal_state, journal_fen, channel_status, channel_fen, status)
SELECT $1, class, 'REFUND', refund_no, rrn, state, journal_fen, channel_status, channel_fen,
       CASE WHEN class = 'MATCHED' THEN 'MATCHED' ELSE 'OPEN' END
FROM (
    SELECT coalesce(s.refund_no, j.out_trade_no) AS refund_no, j.rrn, j.state, j.amount_fen AS journal_fen,
           s.status AS channel_status, s.amount_fen AS channel_fen,
           CASE
               WHEN j.out_trade_no IS NULL THEN 'REFUND'
               WHEN s.refund_no IS NULL THEN CASE WHEN j.state IN {_REFUND_EXPECTED} THEN 'REFUND' END
               WHEN j.state NOT IN {sql_set(KEPT)} OR s.amount_fen <> j.amount_fen OR s.status <> '{PAID}' THEN 'REFUND'
               ELSE 'MATCHED'
           END AS class
    FROM (SELECT * FROM recon_statement_row WHERE batch_id = $1 AND entry = 'REFUND') s
    FULL JOIN (SELECT * FROM recon_journal_row WHERE batch_id = $1 AND txn_type = '{REFUND}') j
        ON s.refund_no = j.out_trade_no
) compared
WHERE class IS NOT NULL
"""

_EXTRACT = f"""
INSERT INTO recon_journal_row (batch_id, txn_type, out_trade_no, rrn, state, amount_fen, reversing)
SELECT $1, txn_type, out_trade_no, rrn, state, amount_fen, reversal_requested_at IS NOT NULL
FROM txn
WHERE channel = $2 AND txn_type IN ('{PURCHASE}', '{REFUND}')
  AND tx_date BETWEEN $3 AND $4 AND received_at >= $5 AND received_at < $6
"""


def statement_records(batch_id: int, kind: str, statement: bytes, start: dt.datetime, end: dt.datetime) -> list[tuple]:
    """The statement's rows in [start, end), as ``recon_statement_row`` records (plain tuples, so
    they travel cheaply from a worker process)."""
    return [
        (batch_id, r.entry, r.out_trade_no, r.refund_no, r.channel_txn_id, r.status, r.amount_fen, r.fee_fen, r.at)
        for r in channel_of(kind).statement.read(statement)
        if start <= r.at < end
    ]


async def parse_in_thread(
    batch_id: int, kind: str, statement: bytes, start: dt.datetime, end: dt.datetime
) -> list[tuple]:
    return await asyncio.to_thread(statement_records, batch_id, kind, statement, start, end)


async def recon_gauges(pool: asyncpg.Pool) -> tuple[list[tuple[str, str, int]], list[tuple[str, int]]]:
    """(channel, class, open differences) and (channel, batches stopped by an error), for metrics."""
    open_rows = await pool.fetch(
        "SELECT b.channel, i.class, count(*) AS n FROM recon_item i JOIN recon_batch b ON b.id = i.batch_id "
        "WHERE i.status = 'OPEN' GROUP BY 1, 2"
    )
    failed = await pool.fetch(
        "SELECT channel, count(*) AS n FROM recon_batch WHERE step <> 'done' AND error IS NOT NULL GROUP BY 1"
    )
    return [(r["channel"], r["class"], r["n"]) for r in open_rows], [(r["channel"], r["n"]) for r in failed]


class StepFailed(Exception):
    def __init__(self, step: str, cause: BaseException) -> None:
        super().__init__(f"step {step} failed: {type(cause).__name__}: {cause}")
        self.step = step


class StepTaken(Exception):
    """Another runner moved the batch on first: this one stops (its transaction rolled back)."""


def window(day: dt.date, hour: int) -> tuple[dt.datetime, dt.datetime]:
    """The batch's period in Beijing time, as channels cut their statements."""
    if hour == WHOLE_DAY:
        start = dt.datetime.combine(day, dt.time(), CST)
        return start, start + dt.timedelta(days=1)
    start = dt.datetime.combine(day, dt.time(hour), CST)
    return start, start + dt.timedelta(hours=1)


class ReconBatch:
    def __init__(
        self,
        pool: asyncpg.Pool,
        channel: str,
        kind: str,
        day: dt.date,
        hour: int,
        fetch: Fetch,
        handler: Handler | None = None,
        progress: Callable[[str, str], None] = lambda channel, step: None,
        parse: Parse = parse_in_thread,
    ) -> None:
        self._pool = pool
        self.channel = channel
        self._kind = kind
        self.day = day
        self.hour = hour
        self._fetch = fetch
        self._handler = handler
        self._progress = progress
        self._parse = parse
        self.start, self.end = window(day, hour)
        self.id = 0

    async def run(self, stop_after: str | None = None) -> str:
        """Run the steps still to do; returns the step the batch is at (``done`` when finished).
        ``stop_after`` stops after that step (as a kill between steps would)."""
        self.id, step = await self._open()
        steps = {"fetch": self._fetch_step, "load": self._load, "extract": self._extract, "match": self._match}
        steps |= {"handle": self._handle, "report": self._report}
        while step != DONE:
            self._progress(self.channel, step)
            try:
                await steps[step]()
            except StepTaken:
                raise
            except Exception as exc:
                await self._pool.execute(
                    "UPDATE recon_batch SET error = $2, updated_at = now() WHERE id = $1", self.id, str(exc)[:500]
                )
                raise StepFailed(step, exc) from exc
            done, step = step, _after(step)
            if done == stop_after:
                break
        return step

    async def summary(self) -> dict[str, dict[str, int]]:
        """Per class: count, channel and journal amounts, and how many are still open."""
        text = await self._pool.fetchval("SELECT summary FROM recon_batch WHERE id = $1", self.id)
        return json.loads(text) if text else {}

    async def handling(self) -> dict[str, int | bool]:
        text = await self._pool.fetchval("SELECT handling FROM recon_batch WHERE id = $1", self.id)
        return json.loads(text) if text else {}

    async def _open(self) -> tuple[int, str]:
        row = await self._pool.fetchrow(
            "INSERT INTO recon_batch (channel, day, hour) VALUES ($1, $2, $3) "
            "ON CONFLICT (channel, day, hour) DO UPDATE SET updated_at = now() RETURNING id, step",
            self.channel,
            self.day,
            self.hour,
        )
        return row["id"], row["step"]

    async def _advance(self, conn: asyncpg.Connection, step: str, **columns: object) -> None:
        sets = "".join(f", {name} = ${i}" for i, name in enumerate(columns, start=4))
        status = await conn.execute(
            f"UPDATE recon_batch SET step = $3, error = NULL, updated_at = now(){sets} WHERE id = $1 AND step = $2",
            self.id,
            step,
            _after(step),
            *columns.values(),
        )
        if status != "UPDATE 1":
            raise StepTaken(f"batch {self.id} is no longer at {step}")

    async def _fetch_step(self) -> None:
        # Before the call: a move recorded after this may be missing from the statement.
        asked = await self._pool.fetchval("SELECT clock_timestamp()")
        statement = await self._fetch(self.channel, self.day)
        async with self._pool.acquire() as conn, conn.transaction():
            await self._advance(conn, "fetch", statement=statement, fetched_at=asked)

    async def _load(self) -> None:
        statement = await self._pool.fetchval("SELECT statement FROM recon_batch WHERE id = $1", self.id)
        records = await self._parse(self.id, self._kind, statement, self.start, self.end)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM recon_statement_row WHERE batch_id = $1", self.id)
            await conn.copy_records_to_table("recon_statement_row", records=records)
            await self._advance(conn, "load")

    async def _extract(self) -> None:
        # A row's day is its field 7's, which may be a day either side of the arrival's (a
        # terminal's clock, Beijing's date sent for UTC's): the days around the window's are read.
        first, last = self.start.astimezone(dt.UTC).date(), self.end.astimezone(dt.UTC).date()
        day = dt.timedelta(days=1)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM recon_journal_row WHERE batch_id = $1", self.id)
            await conn.execute(_EXTRACT, self.id, self.channel, first - day, last + day, self.start, self.end)
            await self._advance(conn, "extract")

    async def _match(self) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM recon_item WHERE batch_id = $1", self.id)
            await conn.execute(_MATCH_PAYMENTS, self.id)
            await conn.execute(_MATCH_REFUNDS, self.id)
            await self._advance(conn, "match")

    async def _handle(self) -> None:
        """Each action commits on its own, exactly once; a rerun looks only at what is still open."""
        done = await self._handler.handle(self.id) if self._handler is not None else None
        handling = {"fixed": done.fixed, "left": done.left, "stopped": done.stopped} if done else {"skipped": True}
        async with self._pool.acquire() as conn, conn.transaction():
            await self._advance(conn, "handle", handling=json.dumps(handling))

    async def _report(self) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT class, count(*) AS n, coalesce(sum(channel_fen), 0)::bigint AS channel_fen, "
                "coalesce(sum(journal_fen), 0)::bigint AS journal_fen, count(*) FILTER (WHERE status = 'OPEN') AS open "
                "FROM recon_item WHERE batch_id = $1 GROUP BY class",
                self.id,
            )
            summary = {
                r["class"]: {
                    "count": r["n"],
                    "channel_fen": r["channel_fen"],
                    "journal_fen": r["journal_fen"],
                    "open": r["open"],
                }
                for r in rows
            }
            await conn.execute("DELETE FROM recon_statement_row WHERE batch_id = $1", self.id)
            await conn.execute("DELETE FROM recon_journal_row WHERE batch_id = $1", self.id)
            await self._advance(conn, "report", summary=json.dumps(summary))


def _after(step: str) -> str:
    index = STEPS.index(step)
    return STEPS[index + 1] if index + 1 < len(STEPS) else DONE
