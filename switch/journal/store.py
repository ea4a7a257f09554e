"""Journal operations: write-ahead inserts and state moves through group commit, lookups, RRN
allocation and partition upkeep. Every change of a transaction's state, and of its sub-states
(reversal requested, amounts reserved and refunded), is made here, by the state machine of
``switch.journal.machine``."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

import asyncpg

from protocols import response_codes as rc
from switch.journal.groupcommit import GroupCommit
from switch.journal.machine import (
    BORN,
    DUE_SQL,
    KEPT,
    MOVE_SQL,
    NEXT_CHECK_SQL,
    OPEN,
    OPEN_SQL,
    PURCHASE,
    REFUND,
    REVERSING_SQL,
    VOID,
    Event,
    State,
    UndoRefusal,
    reversal_answer,
    sql_set,
    undo_refusal,
)
from switch.journal.roles import lacking, owns_journal
from switch.journal.rrns import Rrns
from switch.journal.schema import MIGRATIONS, analyze_young, ensure_partitions, migrate
from switch.refused import SchemaNotCurrent

# A day partition is analyzed by the journal once this many rows changed (then autovacuum takes over).
YOUNG_ROWS = 200
log = logging.getLogger("paysw.journal")


class Moved(NamedTuple):
    """A transaction the journal moved, as those who count payments need it (``risk``)."""

    state: str
    rrn: str
    txn_type: str
    pan_hash: bytes
    terminal_id: str
    merchant_id: str
    amount_fen: int


MovesObserver = Callable[[list[Moved]], None]


class RiskHit(Protocol):
    """A risk rule that fired (``risk.engine.Hit``)."""

    rule_id: str
    action: str
    mode: str
    code: str


class TxnKey(NamedTuple):
    """Invariant 2: a terminal + STAN + field 7 is one transaction (``tx_date`` is field 7's date)."""

    tx_date: dt.date
    terminal_id: str
    stan: str
    transmitted: str


class NewTxn(NamedTuple):
    """A row as written ahead; a NamedTuple so that a batch turns into columns without copies."""

    tx_date: dt.date
    terminal_id: str
    stan: str
    transmitted: str
    rrn: str
    txn_type: str  # machine.PURCHASE, VOID or REFUND
    mti: str
    processing_code: str
    merchant_id: str
    amount_fen: int
    currency: str
    local_time: str
    local_date: str
    entry_mode: str
    pan_masked: str
    pan_hash: bytes
    channel: str
    out_trade_no: str
    request_hash: bytes
    received_at: dt.datetime  # also the order time the channel is told
    next_check_at: dt.datetime  # when the resolver may take it should its front end vanish (counted from the commit)
    expires_at: dt.datetime | None = None  # a QR order's: when its code lapses (closed unpaid)

    @property
    def key(self) -> TxnKey:
        return TxnKey(self.tx_date, self.terminal_id, self.stan, self.transmitted)


class Report(NamedTuple):
    """What a writer learned about a transaction: the event, and what to record with it. The
    state it moves to is the machine's to decide."""

    tx_date: dt.date
    terminal_id: str
    stan: str
    transmitted: str
    event: str  # an Event
    answer: str | None  # field 39 the terminal is told now, or a resend will get; None: unchanged
    auth_id: str | None  # None: unchanged
    channel_code: str  # "": unchanged (likewise the two below)
    channel_message: str
    channel_txn_id: str
    asked: dt.datetime | None  # if it stays open: when the resolver looks again
    # The front end's own answer to the request: it moves the row only while no resolver has
    # taken it (``checks``). A resolver that took a purchase nobody had answered acts on the
    # promise it read then, "told nothing", and may be cancelling the payment: the front end,
    # past its deadline, then replays what the journal holds rather than telling 00.
    first: bool = False

    @property
    def key(self) -> TxnKey:
        return TxnKey(self.tx_date, self.terminal_id, self.stan, self.transmitted)


class OpenTxn(NamedTuple):
    """A transaction not final yet, as the resolver claims it."""

    tx_date: dt.date
    terminal_id: str
    stan: str
    transmitted: str
    rrn: str
    state: str
    channel: str
    out_trade_no: str
    merchant_id: str
    amount_fen: int
    response_code: str | None
    channel_txn_id: str | None
    received_at: dt.datetime
    checks: int
    txn_type: str
    original_rrn: str | None
    expires_at: dt.datetime | None  # a QR order: until when the customer may pay it
    retried_at: dt.datetime | None  # when a person last handed it back to the resolver
    checks_at_retry: int
    reversal_requested: bool

    @property
    def key(self) -> TxnKey:
        return TxnKey(self.tx_date, self.terminal_id, self.stan, self.transmitted)

    @property
    def tries(self) -> int:
        """The resolver's tries at it, since a person last handed it back."""
        return self.checks - self.checks_at_retry

    @property
    def trying_since(self) -> dt.datetime:
        return self.retried_at or self.received_at


class Original(NamedTuple):
    """The purchase a void or refund undoes, as the channel call needs it."""

    tx_date: dt.date
    terminal_id: str
    stan: str
    transmitted: str
    rrn: str
    state: str
    channel: str
    out_trade_no: str
    merchant_id: str
    amount_fen: int
    reserved_fen: int
    refunded_fen: int
    channel_txn_id: str | None
    received_at: dt.datetime
    pan_masked: str
    pan_hash: bytes
    reversal_requested: bool

    @property
    def key(self) -> TxnKey:
        return TxnKey(self.tx_date, self.terminal_id, self.stan, self.transmitted)


class StoredTxn(NamedTuple):
    rrn: str
    state: str
    request_hash: bytes
    response_code: str | None
    auth_id: str | None
    channel_txn_id: str | None
    channel: str
    reversing: bool  # its reversal acknowledged (its money goes back, or went back)


_NEW_COLUMNS = list(NewTxn._fields)
_TYPES = {
    "tx_date": "date",
    "amount_fen": "int8",
    "pan_hash": "bytea",
    "request_hash": "bytea",
    "received_at": "timestamptz",
    "next_check_at": "timestamptz",
    "expires_at": "timestamptz",
}
# When the resolver may take a row is read on the database's clock, which every resolver shares:
# a front end's wait (``next_check_at - received_at``: its deadline and the grace) is counted
# from the write (``statement_timestamp()``: a refund's after its wait for its purchase's lock),
# so a front end whose clock runs behind never has a purchase it is still answering taken (and
# its answer barred, ``Report.first``).
_NEW_VALUES = ", ".join(
    "statement_timestamp() + (u.next_check_at - u.received_at)" if c == "next_check_at" else f"u.{c}"
    for c in _NEW_COLUMNS
)
_INSERT_SQL = (
    f"INSERT INTO txn ({', '.join(_NEW_COLUMNS)}, state) "
    f"SELECT {_NEW_VALUES}, '{BORN}' FROM unnest("
    + ", ".join(f"${i}::{_TYPES.get(c, 'text')}[]" for i, c in enumerate(_NEW_COLUMNS, start=1))
    + f") AS u({', '.join(_NEW_COLUMNS)}) "
    f"WHERE u.tx_date = ${len(_NEW_COLUMNS) + 1}::date "  # the round's day (see _rounds)
    # An original whose reversal arrived first is never written, so never sent. One lookup a row
    # on the reversal's key: reading the day's reversals once a batch was cheaper, but a terminal
    # can add reversals of unknown originals at will, and every write-ahead would then read them.
    "AND NOT EXISTS (SELECT 1 FROM reversal r WHERE r.orig_tx_date = u.tx_date AND r.terminal_id = u.terminal_id "
    "AND r.orig_stan = u.stan AND r.orig_transmitted = u.transmitted) "
    # Only the key is a duplicate: another clash (an RRN) is an error, never taken for a retransmission.
    "ON CONFLICT (tx_date, terminal_id, stan, transmitted) DO NOTHING RETURNING rrn"
)
_REPORT_COLUMNS = list(Report._fields)
_KEY_COLUMNS = ("tx_date", "terminal_id", "stan", "transmitted")
_REPORT_TYPES = {"tx_date": "date", "asked": "timestamptz", "first": "boolean"}
_KEPT_UNLESS_GIVEN = ("channel_code", "channel_message", "channel_txn_id")
# The authorisation code goes with an approval: kept while the answer stays 00 (the record of what
# a reversed original was told), gone with any other answer.
_AUTH_ID_SQL = (
    f"CASE WHEN coalesce(u.answer, t.response_code) = '{rc.APPROVED}' THEN coalesce(nullif(u.auth_id, ''), t.auth_id) "
    "ELSE nullif(u.auth_id, '') END"
)
# The machine's move for each report: the row's state, the event and the promise (computed on the
# locked row, so a reversal recorded meanwhile is seen) pick the new state; a report with no move
# from the row's state (final already, say) changes nothing and returns no row. A moved row
# returns its report's place in the batch (``n``) and its new state.
_MOVE_SQL = (
    f"UPDATE txn t SET state = {MOVE_SQL}, response_code = coalesce(u.answer, t.response_code), "
    f"auth_id = {_AUTH_ID_SQL}, "
    + ", ".join(f"{c} = coalesce(nullif(u.{c}, ''), t.{c})" for c in _KEPT_UNLESS_GIVEN)
    + f", next_check_at = {NEXT_CHECK_SQL} FROM unnest("
    + ", ".join(f"${i}::{_REPORT_TYPES.get(c, 'text')}[]" for i, c in enumerate(_REPORT_COLUMNS, start=1))
    + f") WITH ORDINALITY AS u({', '.join(_REPORT_COLUMNS)}, n) WHERE "
    + " AND ".join(f"t.{c} = u.{c}" for c in _KEY_COLUMNS)
    + f" AND t.tx_date = ${len(_REPORT_COLUMNS) + 1}::date"  # the round's day: its partition alone is scanned
    + f" AND {MOVE_SQL} IS NOT NULL AND (NOT u.first OR t.checks = 0) RETURNING u.n, t.state, "
    + ", ".join(f"t.{c}" for c in Moved._fields if c != "state")
)
_FIND_SQL = (
    "SELECT rrn, state, request_hash, response_code, auth_id, channel_txn_id, channel, "
    "reversal_requested_at IS NOT NULL FROM txn "
    "WHERE tx_date = $1 AND terminal_id = $2 AND stan = $3 AND transmitted = $4"
)

_EXISTS_SQL = (
    "SELECT EXISTS (SELECT 1 FROM txn WHERE tx_date = $1 AND terminal_id = $2 AND stan = $3 AND transmitted = $4)"
)

# A purchase written ahead that no resolver has taken yet: its front end's to answer
# (``Report.first``) until its deadline; nothing hands it to a resolver sooner.
_IN_HANDS_SQL = f"(state = '{State.RECEIVED}' AND checks = 0)"
_DUE_NOW_UNLESS_IN_HANDS = f"next_check_at = CASE WHEN {_IN_HANDS_SQL} THEN next_check_at ELSE now() END"

_OPEN_TXN_COLUMNS = [f"t.{c}" for c in OpenTxn._fields if c != "reversal_requested"]


def _due_in(queue: str) -> str:
    return (
        f"SELECT tx_date, terminal_id, stan, transmitted, next_check_at FROM txn WHERE {queue} "
        "AND next_check_at <= now() AND channel = ANY($3) AND (leased_until IS NULL OR leased_until <= now()) "
        "ORDER BY next_check_at LIMIT $1 FOR UPDATE SKIP LOCKED"
    )


# The most overdue of both queues, each read in order from its own index: an ordered index scan
# marks the entries of rows that have left its queue dead as it passes them, and no claim reads
# them again. One statement over both (an OR) was planned as a bitmap scan, which never marks
# them: every claim read every row finished since the last vacuum, a growing share of the day.
# Rows a queue's LIMIT locked and the outer one cut stay due, for the next claim. The UPDATE returns
# its rows in its join's order (a hash join's: the heap's), so they are sorted again, the most
# overdue first: the order the resolver gives them lanes in (in the heap's, a newer one could take
# a lane while the most overdue waited behind it).
_CLAIM_SQL = (
    f"WITH open AS ({_due_in(OPEN_SQL)}), reversing AS ({_due_in(REVERSING_SQL)}), "
    "due AS (SELECT * FROM open UNION ALL SELECT * FROM reversing ORDER BY next_check_at LIMIT $1), "
    "claimed AS (UPDATE txn t SET next_check_at = now() + make_interval(secs => $2), "
    "leased_until = now() + make_interval(secs => $2), checks = t.checks + 1 FROM due "
    "WHERE (t.tx_date, t.terminal_id, t.stan, t.transmitted) = "
    "(due.tx_date, due.terminal_id, due.stan, due.transmitted) "
    "RETURNING due.next_check_at AS due_at, "
    + ", ".join(_OPEN_TXN_COLUMNS)
    + ", t.reversal_requested_at IS NOT NULL AS reversal_requested) "
    "SELECT " + ", ".join(OpenTxn._fields) + " FROM claimed ORDER BY due_at"
)
# A claim leaves next_check_at equal to its lease's end (and renewing keeps them so): one that
# differs was set by a hand to the resolver (a reversal, a notification) while the claim held it.
_KEY_AND_CLAIM = "tx_date = $1 AND terminal_id = $2 AND stan = $3 AND transmitted = $4 AND checks = $5"
# The claim's "look again in", ending its lease: nothing for a claim another has taken since, and
# no later than what was asked for meanwhile.
_DEFER_SQL = (
    "UPDATE txn SET next_check_at = CASE WHEN next_check_at <> leased_until "
    "THEN least(next_check_at, now() + make_interval(secs => $6)) ELSE now() + make_interval(secs => $6) END, "
    f"leased_until = NULL WHERE {DUE_SQL} "
    f"AND {_KEY_AND_CLAIM}"
)
# A claim still the transaction's: no later claim has taken it, it is still in the resolver's
# queues, and no person has it (a dead letter's next_check_at is NULL).
_HELD_SQL = f"{_KEY_AND_CLAIM} AND leased_until IS NOT NULL AND {DUE_SQL} AND next_check_at IS NOT NULL"
# Renewing returns the row as it is now: a lane that waited for a slot works from what was asked
# for meanwhile (a reversal) and from its own claim's count, not from its claim's snapshot. A lane
# that works from it (``$7``) has seen what a hand to the resolver asked: the mark of it goes.
_RENEW_SQL = (
    "UPDATE txn t SET next_check_at = CASE WHEN $7 OR next_check_at = leased_until "
    "THEN now() + make_interval(secs => $6) ELSE next_check_at END, "
    f"leased_until = now() + make_interval(secs => $6) WHERE {_HELD_SQL} "
    "RETURNING " + ", ".join(_OPEN_TXN_COLUMNS) + ", t.reversal_requested_at IS NOT NULL"
)
# A person's from now on, only when the claim that gives it up is still the transaction's. A
# transaction given up on before and handed back to the resolver since (a reversal of it, say)
# reopens its letter: what is wrong now, and what was before and what a person did about it (a
# refund by hand must not be made twice).
_DEAD_LETTER_SQL = (
    f"WITH held AS (UPDATE txn SET next_check_at = NULL, leased_until = NULL WHERE {_HELD_SQL} "
    "RETURNING tx_date, terminal_id, stan, transmitted, rrn, channel, state) "
    "INSERT INTO dead_letter (tx_date, terminal_id, stan, transmitted, rrn, channel, state, reason) "
    "SELECT *, $6 FROM held ON CONFLICT (tx_date, terminal_id, stan, transmitted) DO UPDATE SET "
    "state = excluded.state, reopened_at = now(), resolved_at = NULL, resolution = NULL, "
    "reason = excluded.reason || ' (given up on before, at ' || dead_letter.state || ': ' || dead_letter.reason "
    "|| coalesce('; resolved ' || dead_letter.resolved_at || coalesce(': ' || dead_letter.resolution, ''), '') "
    "|| ')' RETURNING true"
)
_RELEASE_SQL = f"UPDATE txn SET leased_until = NULL WHERE {_KEY_AND_CLAIM} AND leased_until IS NOT NULL"

_ORIGINAL_SQL = (
    "SELECT "
    + ", ".join(c for c in Original._fields if c != "reversal_requested")
    + ", reversal_requested_at IS NOT NULL FROM txn WHERE rrn = $1 AND merchant_id = $2 "
    f"AND txn_type = '{PURCHASE}' "
    "ORDER BY tx_date DESC LIMIT 1"
)

# A void's or refund's write-ahead and a 0400 naming its key take this lock first, so that the
# later one sees what the earlier committed: a 0400 in between neither saw would be answered 25
# ("not found") while its refund is sent, and a cashier refunds again under another STAN. (The
# two-number form keeps these keys apart from the one-number locks of migrations and settings.)
_KEY_LOCK_SQL = (
    "SELECT pg_advisory_xact_lock(x'6b657973'::int, hashtext(concat_ws(' ', $1::date, $2::text, $3::text, $4::text)))"
)
_DECISION_SQL = (
    "INSERT INTO risk_decision (tx_date, rrn, rule_id, action, mode, code, merchant_id, terminal_id, channel, "
    "amount_fen) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING"
)

BatchObserver = Callable[[str, int, float], None]


def _decision_rows(decisions: Sequence[tuple[NewTxn, Sequence[RiskHit]]]) -> list[tuple]:
    return [
        (txn.tx_date, txn.rrn, hit.rule_id, hit.action, hit.mode, hit.code, txn.merchant_id, txn.terminal_id,
         txn.channel, txn.amount_fen)
        for txn, hits in decisions
        for hit in hits
    ]  # fmt: skip


def _named(pool: str) -> dict[str, str]:
    """A pool's backends named in ``pg_stat_activity`` by the pool and the process: which front
    end, and which of its writers, holds a lock or a long query."""
    return {"application_name": f"paysw {pool} {os.getpid()}"}


def _columns(rows: Sequence[tuple]) -> list[list]:
    return [list(col) for col in zip(*rows, strict=True)]


async def _keep_session(_: asyncpg.Connection) -> None:
    """The pool's reset on release, after asyncpg's own (which rolls back a transaction left
    open). The default also unlocks advisory locks, closes cursors, UNLISTENs and RESETs ALL:
    a round trip on every release, for session state the journal never keeps (its locks are per
    transaction)."""


def _rounds(items: Sequence[NewTxn] | Sequence[Report]) -> list[tuple[dt.date, list[int]]]:
    """Split item positions into rounds of one transaction day in which no key repeats: one
    statement cannot meaningfully write the same row twice, and a statement told its day is
    planned for that day's partition alone (planning all of them cost more than the writes)."""
    rounds: list[tuple[dt.date, set[TxnKey], list[int]]] = []
    for pos, item in enumerate(items):
        key = item.key
        for day, keys, positions in rounds:
            if day == key.tx_date and key not in keys:
                keys.add(key)
                positions.append(pos)
                break
        else:
            rounds.append((key.tx_date, {key}, [pos]))
    return [(day, positions) for day, _, positions in rounds]


# Each group commit has connections of its own, planned for its one statement. The outcome's joins
# a batch to ``txn`` on its key: the planner would pick a hash join over a scan of every partition
# whenever its statistics lag (a young day's partition, before autovacuum's first analyze; the
# plan then stays cached): measured, that made PostgreSQL the switch's costliest part. So it is
# planned for each batch, to look keys up. The write-ahead joins nothing that grows with the day:
# planned once per connection (planning it for each batch cost more than running it).
# And a writer gives up on a row lock held longer than WRITER_LOCK_WAIT_MS (a person's open
# transaction, say), rather than hold up every write of its front end behind it: the batch is then
# written one by one, and a row that still cannot be moved is the resolver's, as after any failure.
WRITER_LOCK_WAIT_MS = 5000
CLOSE_S = 5.0  # Journal.close: how long its last batches and the server's end of its connections may take
_KEY_LOOKUPS_ONLY = {"plan_cache_mode": "force_custom_plan"}
_PLANNED_ONCE = {"plan_cache_mode": "force_generic_plan"}


class Journal:
    def __init__(
        self,
        pool: asyncpg.Pool,
        inserters: asyncpg.Pool,
        movers: asyncpg.Pool,
        max_batch: int,
        on_batch: BatchObserver | None = None,
        linger_s: float = 0.0,
    ) -> None:
        self._pool = pool
        self._inserters = inserters
        self._movers = movers
        self._inserts = GroupCommit(
            "write_ahead", self._flush_inserts, max_batch, inserters.get_max_size(), on_batch, linger_s
        )
        self._updates = GroupCommit(
            "outcome", self._flush_updates, max_batch, movers.get_max_size(), on_batch, linger_s
        )
        self._decisions = GroupCommit("risk", self._flush_decisions, max_batch, 1, on_batch)
        self.on_moved: MovesObserver | None = None  # told of every move this journal makes, once committed
        self._rrns = Rrns(self._rrn_blocks)

    @classmethod
    async def open(
        cls,
        url: str,
        pool_size: int,
        max_batch: int,
        on_batch: BatchObserver | None = None,
        ahead_days: int = 7,
        writers: int = 1,
        linger_s: float = 0.0,
    ) -> Journal:
        """``pool_size`` connections for lookups, and ``writers`` more for each group commit (the
        write-ahead's and the outcome's batches committing at once), whose batches linger under
        load up to ``linger_s`` (``GroupCommit``)."""
        pool = await asyncpg.create_pool(
            url, min_size=2, max_size=pool_size, command_timeout=30, reset=_keep_session,
            server_settings=_named("lookups"),
        )  # fmt: skip
        try:
            async with pool.acquire() as conn:
                await _ready(conn)
        except BaseException:
            await pool.close()
            raise

        async def writing(name: str, settings: dict[str, str]) -> asyncpg.Pool:
            return await asyncpg.create_pool(
                url,
                min_size=writers,
                max_size=writers,
                command_timeout=30,
                reset=_keep_session,
                server_settings={**settings, **_named(name), "lock_timeout": str(WRITER_LOCK_WAIT_MS)},
            )

        inserters, movers = await writing("write_ahead", _PLANNED_ONCE), await writing("outcome", _KEY_LOOKUPS_ONLY)
        journal = cls(pool, inserters, movers, max_batch, on_batch, linger_s)
        await journal.ensure_partitions(ahead_days=ahead_days)
        return journal

    async def close(self) -> None:
        """The batches under way finished, then the pools closed; past ``CLOSE_S`` the connections
        are cut and what is still under way fails at once, as after a crash. (A server that no
        longer answers held each statement to its timeout, a failed batch retried row by row, and
        each graceful close of a connection to a timeout too.)"""
        self._rrns.close()
        pools = (self._inserters, self._movers, self._pool)
        cut = asyncio.get_running_loop().call_later(CLOSE_S, _cut, pools)
        try:
            for commits in (self._inserts, self._updates, self._decisions):
                await commits.close()
            for result in await asyncio.gather(*(pool.close() for pool in pools), return_exceptions=True):
                if isinstance(result, BaseException):  # once every pool is closed or cut
                    raise result
        finally:
            cut.cancel()

    @property
    def pool(self) -> asyncpg.Pool:
        return self._pool

    @property
    def queued(self) -> int:
        return self._inserts.queued + self._updates.queued

    async def ensure_partitions(self, ahead_days: int, today: dt.date | None = None) -> list[str]:
        today = today or dt.datetime.now(dt.UTC).date()
        async with self._pool.acquire() as conn:
            return await ensure_partitions(conn, today - dt.timedelta(days=2), today + dt.timedelta(days=ahead_days))

    async def analyze_young(self, min_rows: int = YOUNG_ROWS, today: dt.date | None = None) -> list[str]:
        """ANALYZE the partitions of the days in use (yesterday, today and tomorrow, as field 7
        may date a transaction) that are young: ``schema.analyze_young``."""
        today = today or dt.datetime.now(dt.UTC).date()
        days = [today + dt.timedelta(days=n) for n in (-1, 0, 1)]
        async with self._pool.acquire() as conn:
            return await analyze_young(conn, days, min_rows)

    async def next_rrn(self) -> str:
        """A 12-digit RRN unique across all front ends (``switch.journal.rrns``)."""
        return await self._rrns.next()

    async def _rrn_blocks(self, n: int) -> list[int]:
        return [
            block
            for (block,) in await self._pool.fetch("SELECT nextval('rrn_block_seq') FROM generate_series(1, $1)", n)
        ]

    async def write_ahead(self, txn: NewTxn) -> bool:
        """Insert and commit the RECEIVED row. False when the key already exists."""
        return await self._inserts.submit(txn)

    async def record(self, report: Report) -> State | None:
        """Move the transaction by the report's event and commit it: the state it is now in, or
        None when the machine has no such move from its state (or there is no such row)."""
        return await self._updates.submit(report)

    async def record_decision(self, txn: NewTxn, hits: Sequence[RiskHit]) -> None:
        """The risk rules that fired on ``txn`` (before its channel call, and before its answer)."""
        await self._decisions.submit((txn, hits))

    async def risk_decline(self, tx_date: dt.date, rrn: str) -> tuple[str, str] | None:
        """(rule id, code) of an enforced decline journaled for the transaction, if any: it was
        never sent (the decision is journaled before the channel call)."""
        row = await self._pool.fetchrow(
            "SELECT rule_id, code FROM risk_decision WHERE tx_date = $1 AND rrn = $2 AND mode = 'enforce' "
            "AND action = 'decline' ORDER BY decided_at, rule_id LIMIT 1",
            tx_date,
            rrn,
        )
        return (row["rule_id"], row["code"]) if row else None

    async def find(self, key: TxnKey) -> StoredTxn | None:
        row = await self._pool.fetchrow(_FIND_SQL, key.tx_date, key.terminal_id, key.stan, key.transmitted)
        return StoredTxn(*row) if row else None

    async def refused_since(
        self, terminal_id: str, channel_code: str, answer: str, since: dt.datetime, limit: int
    ) -> dict[tuple[str, str], dt.datetime]:
        """The terminal's latest ``limit`` transactions read since ``since`` and refused with
        ``channel_code`` and ``answer``, by any front end: (STAN, field 7): when read."""
        # field 7's day is the terminal's: a day either side of the switch's. Days as a list, each
        # a partition's primary key lookup on (tx_date, terminal_id); a range would scan them.
        first = since.date() - dt.timedelta(days=1)
        days = [first + dt.timedelta(days=n) for n in range((dt.datetime.now(dt.UTC).date() - first).days + 2)]
        rows = await self._pool.fetch(
            "SELECT stan, transmitted, received_at FROM txn WHERE tx_date = ANY($2::date[]) AND terminal_id = $1 "
            "AND channel_code = $3 AND response_code = $4 AND received_at > $5 ORDER BY received_at DESC LIMIT $6",
            terminal_id,
            days,
            channel_code,
            answer,
            since,
            limit,
        )
        return {(row["stan"], row["transmitted"]): row["received_at"] for row in rows}

    async def find_by_rrn(self, rrn: str, merchant_id: str) -> tuple[str, int, bool] | None:
        """State and amount of the transaction ``rrn`` of ``merchant_id`` (another merchant's is
        not found: a terminal learns nothing of other merchants' transactions), and whether its
        reversal was acknowledged (its money goes back, whatever its state says yet)."""
        row = await self._pool.fetchrow(
            "SELECT state, amount_fen, reversal_requested_at IS NOT NULL AS reversing FROM txn "
            "WHERE rrn = $1 AND merchant_id = $2 ORDER BY tx_date DESC LIMIT 1",
            rrn,
            merchant_id,
        )
        return (row["state"], row["amount_fen"], row["reversing"]) if row else None

    async def claim_due(self, limit: int, lease_s: float, channels: list[str]) -> list[OpenTxn]:
        """Take up to ``limit`` open transactions of ``channels`` whose time has come, the most
        overdue first, leased for ``lease_s`` (several resolvers never take the same one, even when
        a reversal or a notification makes it due while leased; a resolver that dies lets its
        lease lapse; a front end takes only the channels it serves)."""
        rows = await self._pool.fetch(_CLAIM_SQL, limit, lease_s, channels)
        return [OpenTxn(*row) for row in rows]

    async def defer(self, key: TxnKey, checks: int, seconds: float) -> None:
        """End the claim that counted ``checks`` and look at the transaction again in ``seconds``
        (sooner if something asked for it meanwhile; nothing if another claim has taken it)."""
        await self._pool.execute(_DEFER_SQL, *key, checks, seconds)

    async def taken_since(self, key: TxnKey, checks: int) -> bool:
        """Whether a claim after the one that counted ``checks`` has taken the transaction."""
        return bool(await self._pool.fetchval(
            "SELECT checks <> $5 FROM txn WHERE tx_date = $1 AND terminal_id = $2 AND stan = $3 AND transmitted = $4",
            *key, checks,
        ))  # fmt: skip

    async def renew(self, key: TxnKey, checks: int, lease_s: float, seen: bool = False) -> OpenTxn | None:
        """Hold the claim that counted ``checks`` for ``lease_s`` more, and the transaction as it is
        now; None when the claim is no longer the transaction's (another claim took it once its
        lease lapsed, its holder let it go, or the transaction left the resolver's queues).
        ``seen``: the holder works from what this returns, so what was asked for until now (a
        reversal, a notification) no longer keeps the transaction due past its ``defer``."""
        row = await self._pool.fetchrow(_RENEW_SQL, *key, checks, lease_s, seen)
        return OpenTxn(*row) if row else None

    async def release(self, key: TxnKey, checks: int) -> None:
        """End the lease of the claim that counted ``checks``: the transaction is any resolver's
        once it is due (its own move may have left it due: a reversal to carry out)."""
        await self._pool.execute(_RELEASE_SQL, *key, checks)

    async def open_count(self) -> int:
        """Transactions the resolver is still settling (open, or approved with a reversal to carry
        out); dead letters, waiting for a person, are not counted."""
        return await self._pool.fetchval(f"SELECT count(*) FROM txn WHERE {DUE_SQL} AND next_check_at IS NOT NULL")

    async def open_by_queue(self) -> list[tuple[str, str, int]]:
        """(channel, queue, count) of what the resolver is settling: RECEIVED (orphans: past their
        front end's deadline, or claimed already; not those in flight), PENDING, UNKNOWN, and
        REVERSAL (the store-and-forward queue of reversals to carry out)."""
        rows = await self._pool.fetch(
            "SELECT channel, CASE WHEN reversal_requested_at IS NOT NULL THEN 'REVERSAL' ELSE state END AS queue, "
            f"count(*) AS n FROM txn WHERE {DUE_SQL} AND next_check_at IS NOT NULL "
            f"AND (NOT {_IN_HANDS_SQL} OR reversal_requested_at IS NOT NULL OR next_check_at <= now()) GROUP BY 1, 2"
        )
        return [(r["channel"], r["queue"], r["n"]) for r in rows]

    async def open_dead_letters(self) -> list[tuple[str, int]]:
        """(channel, count) of the dead letters no person has resolved yet."""
        rows = await self._pool.fetch(
            "SELECT channel, count(*) AS n FROM dead_letter WHERE resolved_at IS NULL GROUP BY channel"
        )
        return [(r["channel"], r["n"]) for r in rows]

    async def request_reversal(
        self, original: TxnKey, stan: str, transmitted: str, amount_fen: int, rrn: str
    ) -> tuple[str, str]:
        """Record a 0400 and flag its original (the promise becomes "reverse"), committed before
        the answer; a void's or refund's write-ahead under way on the key is waited for. Returns
        the RRN of the answer (the first one's, for a retransmission) and its field 39
        (``switch.journal.machine.reversal_answer``)."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(_KEY_LOCK_SQL, *original)
            answer_rrn = await conn.fetchval(
                "INSERT INTO reversal (orig_tx_date, terminal_id, orig_stan, orig_transmitted, stan, transmitted, "
                "amount_fen, rrn) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING RETURNING rrn",
                *original,
                stan,
                transmitted,
                amount_fen,
                rrn,
            ) or await conn.fetchval(
                "SELECT rrn FROM reversal WHERE orig_tx_date = $1 AND terminal_id = $2 AND orig_stan = $3 "
                "AND orig_transmitted = $4",
                *original,
            )
            row = await conn.fetchrow(  # a purchase is reversed; a void or refund named is answered, not reversed
                "SELECT state, reserved_fen + refunded_fen > 0 AS touched, amount_fen, "
                f"txn_type <> '{PURCHASE}' AS undo FROM txn WHERE tx_date = $1 "
                "AND terminal_id = $2 AND stan = $3 AND transmitted = $4 FOR UPDATE",
                *original,
            )
            code = reversal_answer(
                row and row["state"],
                bool(row and row["touched"]),
                bool(row and row["amount_fen"] != amount_fen),
                bool(row and row["undo"]),
            )
            await conn.execute(
                "UPDATE reversal SET code = $5 WHERE orig_tx_date = $1 AND terminal_id = $2 AND orig_stan = $3 "
                "AND orig_transmitted = $4",
                *original,
                code,
            )
            if code == rc.APPROVED and row["state"] in OPEN | KEPT:
                await conn.execute(
                    "UPDATE txn SET reversal_requested_at = coalesce(reversal_requested_at, now()), "
                    # Under way in a front end: its move makes the row due when it ends.
                    f"{_DUE_NOW_UNLESS_IN_HANDS} "
                    "WHERE tx_date = $1 AND terminal_id = $2 AND stan = $3 AND transmitted = $4",
                    *original,
                )
        return answer_rrn, code

    async def flag_overtaken_originals(self, within_s: float) -> int:
        """Flag for reversal the purchases whose 0400 came in the last ``within_s`` seconds and was
        answered "original not found": the original's write-ahead was under way at that instant
        (neither saw the other's uncommitted row), so it was sent. Its reversal stands: the money
        goes back. Returns how many were flagged."""
        done = await self._pool.execute(
            f"UPDATE txn t SET reversal_requested_at = r.received_at, {_DUE_NOW_UNLESS_IN_HANDS} FROM reversal r "
            f"WHERE r.code = '{rc.ORIGINAL_NOT_FOUND}' AND r.received_at > now() - make_interval(secs => $1) "
            "AND (t.tx_date, t.terminal_id, t.stan, t.transmitted) "
            "= (r.orig_tx_date, r.terminal_id, r.orig_stan, r.orig_transmitted) "
            f"AND t.txn_type = '{PURCHASE}' AND t.reversal_requested_at IS NULL "
            f"AND t.reserved_fen = 0 AND t.refunded_fen = 0 AND t.state IN {sql_set(OPEN | KEPT)}",
            within_s,
        )
        return int(done.split()[-1])

    async def reversed_before_arrival(self, key: TxnKey) -> bool:
        return await self._pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM reversal WHERE orig_tx_date = $1 AND terminal_id = $2 AND orig_stan = $3 "
            "AND orig_transmitted = $4)",
            *key,
        )

    async def original(self, rrn: str, merchant_id: str) -> Original | None:
        row = await self._pool.fetchrow(_ORIGINAL_SQL, rrn, merchant_id)
        return Original(*row) if row else None

    async def write_ahead_undo(
        self,
        txn: NewTxn,
        original: Original,
        hits: Sequence[RiskHit] = (),
        refused: Report | None = None,
        *,
        refund_days: int,
    ) -> UndoRefusal | None:
        """Write a void or refund ahead, with the risk rules that fired on it (``hits``), and
        reserve what it takes of its purchase, in one transaction, the purchase locked meanwhile
        and checked again (``machine.undo_refusal``, a refund within its channel's ``refund_days``
        of the purchase's receipt); one ``refused`` before its channel (by
        risk, a suspension, the channel's limits) is recorded so at once, and reserves nothing.
        Returns why the purchase's check refused it, or None once written. (A
        resolver sends the undos it finds open: one refused is never found so.)"""
        moved: list[Moved] = []
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(_KEY_LOCK_SQL, *txn.key)
            row = await conn.fetchrow(_ORIGINAL_SQL + " FOR UPDATE", original.rrn, original.merchant_id)
            locked = Original(*row)
            refusal = undo_refusal(
                txn.txn_type, txn.amount_fen, txn.tx_date, locked.state, locked.tx_date, locked.amount_fen,
                locked.reserved_fen, locked.refunded_fen, locked.reversal_requested,
                txn.received_at - locked.received_at, refund_days,
            )  # fmt: skip
            if refusal is not None:
                if await conn.fetchval(_EXISTS_SQL, *txn.key):
                    # Written by another front end while this one waited on the lock (the caller's
                    # look-up came before): its reservation is this one's, to replay, not a refusal.
                    raise asyncpg.UniqueViolationError("void or refund written twice")
                return refusal
            if refused is None:
                await conn.execute(
                    "UPDATE txn SET reserved_fen = reserved_fen + $5 WHERE tx_date = $1 AND terminal_id = $2 "
                    "AND stan = $3 AND transmitted = $4",
                    *locked.key,
                    taken_fen(txn.txn_type, txn.amount_fen, locked.amount_fen),
                )
            if not await conn.fetch(_INSERT_SQL, *_columns([txn]), txn.tx_date):
                raise asyncpg.UniqueViolationError("void or refund written twice")  # since the caller looked
            await conn.execute(
                "UPDATE txn SET original_rrn = $5 WHERE tx_date = $1 AND terminal_id = $2 AND stan = $3 "
                "AND transmitted = $4",
                *txn.key,
                locked.rrn,
            )
            if hits:
                await conn.executemany(_DECISION_SQL, _decision_rows([(txn, hits)]))
            if refused is not None:
                await record_in(conn, [refused], moved)
        self._tell(moved)
        return None

    async def record_undo(self, report: Report, txn_type: str, amount_fen: int, original: Original) -> State | None:
        """Move a void or refund by its report, once; when that finishes it, move its purchase
        in the same transaction: what it reserved is released, and, if accepted, an accepted
        refund's amount counts as refunded and an accepted void voids the purchase. Returns the
        void's or refund's state, or None when it was final already (a lapsed lease: never
        release or void twice)."""
        moved: list[Moved] = []
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                state = (await record_in(conn, [report], moved))[0]
                if state is None or state in OPEN:
                    return state
                if state is State.APPROVED and txn_type == VOID:
                    await record_in(conn, [Report(*original.key, Event.VOIDED, None, None, "", "", "", None)], moved)
                refunded = state is State.APPROVED and txn_type == REFUND
                await conn.execute(
                    "UPDATE txn SET reserved_fen = reserved_fen - $5, refunded_fen = refunded_fen + $6 "
                    "WHERE tx_date = $1 AND terminal_id = $2 AND stan = $3 AND transmitted = $4",
                    *original.key,
                    taken_fen(txn_type, amount_fen, original.amount_fen),
                    amount_fen if refunded else 0,
                )
            self._tell(moved)  # committed (and told before the connection's release takes a round trip)
        return state

    async def record_late(self, key: TxnKey, op: str, outcome: str, channel_code: str, channel_txn_id: str) -> None:
        await self._pool.execute(
            "INSERT INTO late_answer (tx_date, terminal_id, stan, transmitted, op, outcome, channel_code, "
            "channel_txn_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            *key,
            op,
            outcome,
            channel_code,
            channel_txn_id,
        )

    async def dead_letter(self, key: TxnKey, checks: int, reason: str) -> bool:
        """Hand a transaction to a person: recorded in ``dead_letter``, no longer taken by the
        resolver, its journal row kept as it is. Only by the claim that counted ``checks`` while it
        is still the transaction's (False otherwise: a lane stuck past its lease does not take
        from a person's queue what another resolver is settling)."""
        return bool(await self._pool.fetchval(_DEAD_LETTER_SQL, *key, checks, reason))

    async def _flush_inserts(self, txns: Sequence[NewTxn]) -> list[bool]:
        """Whether each was written (False: its key was there already, or its reversal was)."""
        done = [False] * len(txns)
        async with self._inserters.acquire() as conn:
            for positions, rows in await _in_rounds(conn, txns, _INSERT_SQL):
                written = {rrn for (rrn,) in rows}  # an RRN is one row's (its unique index)
                for p in positions:
                    done[p] = txns[p].rrn in written
        return done

    async def _flush_decisions(self, decisions: Sequence[tuple[NewTxn, Sequence[RiskHit]]]) -> list[None]:
        await self._pool.executemany(_DECISION_SQL, _decision_rows(decisions))
        return [None] * len(decisions)

    async def _flush_updates(self, reports: Sequence[Report]) -> list[State | None]:
        moved: list[Moved] = []
        async with self._movers.acquire() as conn:
            states = await record_in(conn, reports, moved)
            self._tell(moved)  # committed (and told before the connection's release takes a round trip)
        return states

    def _tell(self, moved: list[Moved]) -> None:
        if moved and self.on_moved is not None:
            try:
                self.on_moved(moved)
            except Exception:  # whoever counts moves is told on a best-effort basis
                log.exception("a move observer failed")


def _cut(pools: Sequence[asyncpg.Pool]) -> None:
    log.warning(
        "the journal's connections are cut: its server did not see them closed in time", extra={"seconds": CLOSE_S}
    )
    for pool in pools:
        pool.terminate()


async def _ready(conn: asyncpg.Connection) -> None:
    """The journal as this release needs it, before the switch starts: migrated (by this role if
    it owns the journal, with a warning that it could also switch the guards off), and this role
    granted this release's part (``SchemaNotCurrent`` if not: an earlier release's grants)."""
    version = await migrate(conn)
    if await owns_journal(conn):
        log.warning(
            "the switch connects to the journal as its owner (or a superuser), whose credentials can switch "
            "its guards off: give it a role of its own (`paysw journal migrate`)"
        )
        return
    if version > len(MIGRATIONS):  # a later release's journal, and grants: that release's to give
        return
    missing = await lacking(conn)
    if missing:
        raise SchemaNotCurrent(
            f"role {await conn.fetchval('SELECT current_user')} may not {', '.join(missing[:6])}"
            f"{' ...' if len(missing) > 6 else ''}: run this release's `paysw journal migrate` as the journal's owner"
        )


def taken_fen(txn_type: str, amount_fen: int, purchase_fen: int) -> int:
    """What a void or refund takes of its purchase: a void all of it."""
    return purchase_fen if txn_type == VOID else amount_fen


async def record_in(
    conn: asyncpg.Connection, reports: Sequence[Report], moved: list[Moved] | None = None
) -> list[State | None]:
    """``Journal.record`` on a connection the caller holds (in its own transaction, say): the
    state each report moved its transaction to, None where the machine had no move. Each move
    is added to ``moved`` when given."""
    done: list[State | None] = [None] * len(reports)
    for positions, rows in await _in_rounds(conn, reports, _MOVE_SQL):
        for n, state, *facts in rows:
            done[positions[n - 1]] = State(state)
            if moved is not None:
                moved.append(Moved(state, *facts))
    return done


async def resolve_dead_letter(conn: asyncpg.Connection, rrn: str, resolution: str) -> bool:
    """A person's account of an open dead letter (the transaction ``rrn``'s): what was done about
    it, at the channel or by hand; False when it has none open. Kept should the resolver give up
    on the transaction again (``_DEAD_LETTER_SQL``). The journal row is not moved: its state is
    what the switch knows."""
    done = await conn.execute(
        "UPDATE dead_letter SET resolved_at = now(), resolution = $2 WHERE rrn = $1 AND resolved_at IS NULL",
        rrn,
        resolution,
    )
    return done == "UPDATE 1"


# The letter locked first (a person resolving it at the same moment waits, then finds it closed),
# the transaction handed back only while a person's (given up on, unleased, not final since), and
# the letter closed with it: all in one statement, or nothing.
_RETRY_SQL = (
    "WITH letter AS (SELECT tx_date, terminal_id, stan, transmitted FROM dead_letter "
    "WHERE rrn = $1 AND resolved_at IS NULL FOR UPDATE), "
    "back AS (UPDATE txn t SET next_check_at = now(), retried_at = now(), checks_at_retry = t.checks FROM letter l "
    "WHERE (t.tx_date, t.terminal_id, t.stan, t.transmitted) = (l.tx_date, l.terminal_id, l.stan, l.transmitted) "
    f"AND {DUE_SQL} AND t.next_check_at IS NULL AND t.leased_until IS NULL "
    "RETURNING t.tx_date, t.terminal_id, t.stan, t.transmitted) "
    "UPDATE dead_letter d SET resolved_at = now(), resolution = $2 FROM back b "
    "WHERE (d.tx_date, d.terminal_id, d.stan, d.transmitted) = (b.tx_date, b.terminal_id, b.stan, b.transmitted) "
    "RETURNING true"
)


async def retry_dead_letter(conn: asyncpg.Connection, rrn: str, resolution: str) -> bool:
    """Hand a transaction the resolver gave up on back to it, due now, its tries and days counted
    afresh (a person has put right what stopped it: a channel's configuration, say), its letter
    resolved so (``resolution``); False, and nothing changed, when it has no open letter or is not
    the resolver's to settle any more (final since)."""
    return bool(await conn.fetchval(_RETRY_SQL, rrn, resolution))


async def hand_to_resolver(conn: asyncpg.Connection, key: TxnKey) -> bool:
    """Make a transaction the resolver still owes an outcome due now; False when it is not due
    at all (finished meanwhile). One still in its front end's hands (written ahead, never taken)
    is left due at its deadline, and counts as handed: a resolver taking it sooner would bar the
    front end's answer (``Report.first``)."""
    done = await conn.execute(
        f"UPDATE txn SET {_DUE_NOW_UNLESS_IN_HANDS} WHERE {DUE_SQL} "
        "AND tx_date = $1 AND terminal_id = $2 AND stan = $3 AND transmitted = $4",
        *key,
    )
    return done == "UPDATE 1"


async def _in_rounds(
    conn: asyncpg.Connection, items: Sequence[NewTxn] | Sequence[Report], sql: str
) -> list[tuple[list[int], list[asyncpg.Record]]]:
    """Run ``sql`` over ``items`` in rounds (see ``_rounds``): each round's item positions and the
    rows it returned."""
    return [
        (positions, await conn.fetch(sql, *_columns([items[p] for p in positions]), day))
        for day, positions in _rounds(items)
    ]
