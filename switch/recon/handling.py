"""Automatic error handling (差错处理): the differences a rule can fix safely, each fixed at most
once (the action and the item's new status commit together, and only OPEN items are looked
at), within a threshold of count and amount per batch past which the automation stops and
leaves the rest to a person.

Rules:
- ``approve_paid``: the journal still has it open and the statement shows it paid, for the same
  amount: asked again (a statement is a file, no signed answer), and if paid, reported to the
  journal as accepted at the channel. The state machine approves it when
  the terminal's promise lets the money be kept; otherwise (told it failed, never told, or a
  reversal acknowledged) it stays open and due now, and the resolver gives the money back.
- ``resolve_open``: open in the journal and absent from the statement, or a purchase whose reversal
  is still owed: handed to the resolver now.
- ``reverse_long``: an order only the channel has: asked again; if paid, reversed at the channel
  (nothing was sold for it); if the channel now says it is closed, nothing to do; if it says it
  has no such order (which its statement shows paid), a person's.
- ``journal_elsewhere``: a LONG order, or a refund done that only the statement has, that the
  journal has outside the batch's window, keeping the same amount on the same channel (paid or
  refunded on either side of an hour), and that no other statement of the channel (of the same
  kind: hour or day) has too: nothing to do at the channel, and the item carries the journal's
  RRN for settlement; the item of the journal's side in the batch of its arrival (SHORT, or a
  refund the statement lacked) of the same kind of batch (hour or day), if it ran first and is
  still open, is closed with it (if it runs later, ``statement_elsewhere`` closes it). It moves
  nothing at the channel and takes nothing of the threshold. One the journal has otherwise (not
  kept, another amount, a refund still in progress, on two statements) is left to a person.
- ``statement_elsewhere``: the journal's side only (a SHORT, or a refund the statement lacked) of
  what another batch of the same kind (hour, or day), run first, adopted by ``journal_elsewhere``
  for the same amount, while the journal still keeps it as the match read it: closed, nothing
  asked of the channel, no money moved, nothing of the threshold (settlement pays it once, from
  either item). Never across kinds: a day's batch that lacks what an hour's statement listed is
  a contradiction, not a moment.
- ``confirm_short``: approved in the journal, absent from the statement: asked again; fixed if
  the channel says it is paid (its statement missed it), else left to a person.
- ``agrees_now``: in an hour's batch, paid on the statement and made final with no money kept
  (cancelled, reversed, voided, declined) after the batch asked for the statement (``txn_move``
  against the batch's ``fetched_at``): a batch fetches the statement before it reads the
  journal. Asked again; if the channel now reports it closed, the statement was cut before the
  move: nothing to do. Still paid (a reversal or void the channel did not carry out, a decline it
  charged), no such order, or made final before the statement was asked for (the statement then
  contradicts the journal, and asking the channel again would only repeat what the journal was
  told): a person's. A day's statement is what the channel settles by, so its batch leaves these
  to a person too (the reversal's money comes back on a later day's file).
AMOUNT and other REFUND differences, and anything a rule cannot resolve, are left to a person.
"""

from __future__ import annotations

import datetime as dt
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from protocols.messages import CANCEL, NOT_FOUND, QUERY, ChannelRequest, ChannelResult, Outcome
from protocols.statements import PAID
from switch.journal import Event, Report, State, TxnKey, hand_to_resolver, record_in
from switch.journal.machine import KEPT, OPEN, PURCHASE, REFUND, sql_set

Caller = Callable[[ChannelRequest], Awaitable[ChannelResult]]
_keys = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Threshold:
    max_count: int
    max_fen: int


@dataclass(frozen=True, slots=True)
class Handled:
    fixed: int
    left: int
    stopped: bool  # the threshold stopped the automation


# An item's money, as the threshold counts it: the larger of the statement's and the journal's (a
# statement row may understate what a fix moves).
_MONEY_SQL = "greatest(abs(coalesce(i.channel_fen, 0)), abs(coalesce(i.journal_fen, 0)))"
# The open items with what a rule needs: the statement's row, the journal's by RRN, and for a
# LONG one or a refund only the statement has (no RRN) the journal's row of the same number,
# should it have one outside the batch's window (on any channel, as anything: numbers are unique).
_CANDIDATES = f"""
SELECT i.id, i.batch_id, i.entry, i.class, i.out_trade_no, i.rrn, i.journal_state, i.journal_fen,
       i.channel_status, i.channel_fen,
       {_MONEY_SQL} AS money,
       s.channel_txn_id, s.at, t.tx_date, t.terminal_id, t.stan, t.transmitted, t.received_at,
       t.reversal_requested_at IS NOT NULL AS reversing, b.channel, b.hour = -1 AS whole_day,
       b.hour BETWEEN 0 AND 23 AND EXISTS (  -- an hour's batch (not a day's), and moved since the fetch
           SELECT 1 FROM txn_move m
           WHERE m.rrn = t.rrn AND m.tx_date = t.tx_date AND m.to_state = t.state AND m.moved_at >= b.fetched_at
       ) AS final_since_fetch,
       adopted.id AS adopted_id, adopted.batch_id AS adopted_batch,
       e.rrn AS elsewhere_rrn, e.state AS elsewhere_state, e.amount_fen AS elsewhere_fen,
       e.txn_type = CASE i.entry WHEN 'PAY' THEN '{PURCHASE}' ELSE '{REFUND}' END AND e.state IN {sql_set(KEPT)}
           AND e.reversal_requested_at IS NULL AND e.channel = b.channel AND e.amount_fen = i.channel_fen
           AND (i.entry = 'PAY' OR i.channel_status = '{PAID}')  -- a refund done, not one in progress
           AND NOT EXISTS (  -- on another statement of the channel too: done twice, a person's
               SELECT 1 FROM recon_item d JOIN recon_batch db ON db.id = d.batch_id
               WHERE d.entry = i.entry AND d.out_trade_no = i.out_trade_no AND d.id <> i.id
                 AND d.channel_status IS NOT NULL AND db.channel = b.channel AND (db.hour = -1) = (b.hour = -1)
           ) AS kept_elsewhere
FROM recon_item i
JOIN recon_batch b ON b.id = i.batch_id
LEFT JOIN recon_statement_row s ON s.batch_id = i.batch_id AND s.entry = 'PAY' AND s.out_trade_no = i.out_trade_no
LEFT JOIN txn t ON t.rrn = i.rrn AND t.out_trade_no = i.out_trade_no
LEFT JOIN LATERAL (
    SELECT * FROM txn x WHERE (i.class = 'LONG' OR (i.entry = 'REFUND' AND i.rrn IS NULL))
        AND x.out_trade_no = i.out_trade_no ORDER BY x.tx_date DESC LIMIT 1
) e ON true
LEFT JOIN LATERAL (  -- the journal's side only, which another hour's statement had and its batch adopted
    SELECT a.id, a.batch_id FROM recon_item a
    JOIN recon_batch ab ON ab.id = a.batch_id AND ab.channel = b.channel AND (ab.hour = -1) = (b.hour = -1)
    JOIN recon_action r ON r.item_id = a.id AND r.rule = 'journal_elsewhere'
    WHERE i.channel_status IS NULL AND i.class IN ('SHORT', 'REFUND') AND t.state IN {sql_set(KEPT)}
      AND t.reversal_requested_at IS NULL
      AND a.out_trade_no = i.out_trade_no AND a.entry = i.entry AND a.rrn = i.rrn AND a.id <> i.id
      AND a.status = 'FIXED' AND a.channel_status IS NOT NULL AND a.channel_fen = i.journal_fen
    ORDER BY a.id LIMIT 1
) adopted ON true
WHERE i.batch_id = $1 AND i.status = 'OPEN'
ORDER BY i.id
"""
# The journal's side of a ``journal_elsewhere`` item, open in the batch of its arrival (SHORT, or a
# refund the statement lacked): explained by the statement of another hour, closed with it. Only in
# a batch of the same kind: hours never overlap, but a day holds its hours, and a day's file (what
# the channel settles by) that lacks what an hour's listed contradicts it.
_OTHER_SIDE = """
UPDATE recon_item o SET status = 'FIXED', note = $6 FROM recon_batch b
WHERE b.id = o.batch_id AND b.channel = $3 AND o.out_trade_no = $1 AND o.entry = $2 AND o.rrn = $4 AND o.id <> $5
  AND (b.hour = -1) = $7 AND o.status = 'OPEN' AND o.channel_status IS NULL AND o.class IN ('SHORT', 'REFUND')
RETURNING o.id
"""
# Rules that move no money, and so take nothing of the threshold: a payment on either side of an
# hour is no reason to stop the automation, however many an hour has.
_NO_MONEY = frozenset({"journal_elsewhere", "statement_elsewhere"})
# What the batch's fixes so far took of the threshold: a run after a failure (the step is run
# again) goes on from there, not from nothing.
_TAKEN = f"""
SELECT count(*), coalesce(sum({_MONEY_SQL}), 0)
FROM recon_action a JOIN recon_item i ON i.id = a.item_id WHERE i.batch_id = $1 AND a.rule <> ALL($2::text[])
"""


class Handler:
    def __init__(self, pool: asyncpg.Pool, call: Caller, threshold: Threshold) -> None:
        self._pool = pool
        self._call = call
        self._threshold = threshold

    async def handle(self, batch_id: int) -> Handled:
        fixed = left = 0
        # The fixes the threshold bounds (all but those that only agree with the journal), this
        # batch's earlier runs' included.
        counted, fen = await self._pool.fetchrow(_TAKEN, batch_id, list(_NO_MONEY))
        stopped = False
        for item in await self._pool.fetch(_CANDIDATES, batch_id):
            rule = _rule_for(item)
            money = item["money"]
            bounded = rule is not None and rule not in _NO_MONEY
            if bounded and not stopped:
                stopped = counted + 1 > self._threshold.max_count or fen + money > self._threshold.max_fen
            if rule is None or (bounded and stopped) or not await getattr(self, "_" + rule)(item):
                left += 1
                continue
            fixed += 1
            if bounded:
                counted, fen = counted + 1, fen + money
        if stopped:  # everything left for a person, refunds' differences included
            left = await self._pool.fetchval(
                "SELECT count(*) FROM recon_item WHERE batch_id = $1 AND status = 'OPEN'", batch_id
            )
        return Handled(fixed, left, stopped)

    async def _approve_paid(self, item: asyncpg.Record) -> bool:
        """The statement has paid what the journal has open: asked again of the channel first,
        as the other rules do (the statement, a file, is no signed answer of the channel's)."""
        if (await self._ask(QUERY, item)).outcome is not Outcome.APPROVED:
            return False

        async def accepted(conn: asyncpg.Connection) -> str:
            now = dt.datetime.now(dt.UTC)
            report = Report(*_key(item), Event.ACCEPTED, None, None, "", "", item["channel_txn_id"] or "", now)
            state = (await record_in(conn, [report]))[0]
            if state is State.APPROVED:
                return "approved: the statement shows it paid"
            if state is None:
                raise _JournalMoved
            return "paid at the channel, but the terminal was promised no payment: handed to the resolver"

        return await self._record(item, "approve_paid", accepted)

    async def _resolve_open(self, item: asyncpg.Record) -> bool:
        async def handed(conn: asyncpg.Connection) -> str:
            if not await hand_to_resolver(conn, _key(item)):
                raise _JournalMoved
            if item["reversing"]:
                return "a reversal is owed: handed to the resolver"
            return "not on the statement: handed to the resolver"

        return await self._record(item, "resolve_open", handed)

    async def _reverse_long(self, item: asyncpg.Record) -> bool:
        """Paid at the channel, in no journal row of ours (``_rule_for``)."""
        asked = await self._ask(QUERY, item)
        if asked.outcome is Outcome.DECLINED and asked.sent and asked.channel_code != NOT_FOUND:
            return await self._record(item, "reverse_long", _said("the channel now reports it closed: nothing to do"))
        if asked.outcome is not Outcome.APPROVED:
            return False
        cancelled = await self._ask(CANCEL, item)
        if cancelled.outcome is not Outcome.APPROVED:
            return False
        reversed_ = _said("paid at the channel, unknown here: reversed, money returned")
        return await self._record(item, "reverse_long", reversed_)

    async def _journal_elsewhere(self, item: asyncpg.Record) -> bool:
        """A LONG payment, or a refund only the statement has, that the journal keeps, on the
        batch's channel, for the same amount, from an arrival outside the batch's window: nothing
        to do at the channel. The item takes the journal's RRN, so that settlement pays it from
        here should the batch of its arrival never take it (an hour that never ran, a terminal
        dated a day ahead); once, whichever comes first. The batch of its arrival found it on the
        journal's side only: that item, still open, is explained and closed with it."""

        async def adopted(conn: asyncpg.Connection) -> str:
            await _still_kept(conn, item["elsewhere_rrn"], item["out_trade_no"], item["elsewhere_state"])
            await conn.execute(
                "UPDATE recon_item SET rrn = $2, journal_state = $3, journal_fen = $4 WHERE id = $1",
                item["id"], item["elsewhere_rrn"], item["elsewhere_state"], item["elsewhere_fen"],
            )  # fmt: skip
            note = f"on the statement of batch {item['batch_id']} (item {item['id']}): either side of an hour"
            for other in await conn.fetch(_OTHER_SIDE, item["out_trade_no"], item["entry"], item["channel"],
                                          item["elsewhere_rrn"], item["id"], note, item["whole_day"]):  # fmt: skip
                await conn.execute(
                    "INSERT INTO recon_action (item_id, rule, detail) VALUES ($1, 'journal_elsewhere', $2)",
                    other[0],
                    note,
                )
            done = "paid" if item["entry"] == "PAY" else "refunded"
            return f"{done} on either side of an hour: the journal keeps it, from an arrival outside this batch"

        return await self._record(item, "journal_elsewhere", adopted)

    async def _statement_elsewhere(self, item: asyncpg.Record) -> bool:
        """The journal's side only (a SHORT, or a refund the statement lacked) of what the statement
        of another hour has and its batch, run first, adopted (``journal_elsewhere``): the mirror of
        that rule's closing of this side, when the batches ran the other way round (a rerun hour).
        The journal still keeps it as then: nothing to ask of the channel, no money moved."""

        async def explained(conn: asyncpg.Connection) -> str:
            await _still_kept(conn, item["rrn"], item["out_trade_no"], item["journal_state"])
            adopted = "SELECT true FROM recon_item WHERE id = $1 AND status = 'FIXED' FOR SHARE"
            if not await conn.fetchval(adopted, item["adopted_id"]):  # its batch deleted, to be run afresh
                raise _JournalMoved
            return (
                f"on the statement of batch {item['adopted_batch']} (item {item['adopted_id']}): either side of an hour"
            )

        return await self._record(item, "statement_elsewhere", explained)

    async def _confirm_short(self, item: asyncpg.Record) -> bool:
        asked = await self._ask(QUERY, item)
        if asked.outcome is not Outcome.APPROVED:
            return False
        return await self._record(item, "confirm_short", _said("the channel confirms it paid: its statement missed it"))

    async def _agrees_now(self, item: asyncpg.Record) -> bool:
        """Made final with no money kept after the batch asked for the statement, which shows it
        paid (``_rule_for``): if the channel, asked again, reports the order closed, it agrees
        with the journal and the difference was only the statement's moment (a final state has no
        move out, so the journal cannot have moved since). Still paid or no such order: a person's."""
        asked = await self._ask(QUERY, item)
        if asked.outcome is not Outcome.DECLINED or not asked.sent or asked.channel_code == NOT_FOUND:
            return False
        now = "the channel now reports it closed, as the journal has it"
        return await self._record(item, "agrees_now", _said(f"{now} {item['journal_state']} since the statement"))

    async def _ask(self, op: str, item: asyncpg.Record) -> ChannelResult:
        # The order time the channel was told: the write-ahead's (UnionPay names an order by its
        # number and that time together); for an order the journal does not have, the statement's.
        sent = item["received_at"] or item["at"]
        created = sent.timestamp() if sent is not None else time.time()
        request = ChannelRequest(
            next(_keys),
            op,
            item["out_trade_no"],
            item["channel_fen"] or item["journal_fen"] or 0,
            "",
            "",
            "",
            time.time() + 30,
            created,
            item["channel_txn_id"] or "",
        )
        return await self._call(request)

    async def _record(self, item: asyncpg.Record, rule: str, act: Action) -> bool:
        """The item claimed, the journal's change (``act``, which says what it did) and the action
        recorded, together or not at all."""
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                claimed = await conn.execute(
                    "UPDATE recon_item SET status = 'FIXED' WHERE id = $1 AND status = 'OPEN'", item["id"]
                )
                if claimed != "UPDATE 1":
                    return False
                detail = await act(conn)
                await conn.execute("UPDATE recon_item SET note = $2 WHERE id = $1", item["id"], detail)
                await conn.execute(
                    "INSERT INTO recon_action (item_id, rule, detail) VALUES ($1, $2, $3)", item["id"], rule, detail
                )
        except _JournalMoved:
            # The journal moved on since the match (the resolver finished it): nothing is fixed here,
            # the claim rolls back and the item stays open for a person.
            return False
        return True


class _JournalMoved(Exception):
    pass


Action = Callable[[asyncpg.Connection], Awaitable[str]]


async def _still_kept(conn: asyncpg.Connection, rrn: str, out_trade_no: str, state: str) -> None:
    """The journal's row as the candidates read it, held while the item is closed: a void or a
    reversal since makes it a person's."""
    still = await conn.fetchval(
        "SELECT true FROM txn WHERE rrn = $1 AND out_trade_no = $2 AND state = $3 "
        "AND reversal_requested_at IS NULL FOR SHARE",
        rrn, out_trade_no, state,
    )  # fmt: skip
    if not still:
        raise _JournalMoved


def _said(detail: str) -> Action:
    """An action that changes nothing in the journal (the channel call was the fix)."""

    async def act(_: asyncpg.Connection) -> str:
        return detail

    return act


def _key(item: asyncpg.Record) -> TxnKey:
    return TxnKey(item["tx_date"], item["terminal_id"], item["stan"], item["transmitted"])


def _rule_for(item: asyncpg.Record) -> str | None:
    difference, state, status = item["class"], item["journal_state"], item["channel_status"]
    if item["adopted_id"] is not None:
        return "statement_elsewhere"
    if item["entry"] == "REFUND":  # of refunds, only one on either side of an hour is a rule's
        return "journal_elsewhere" if item["elsewhere_rrn"] is not None and item["kept_elsewhere"] else None
    owed = state in OPEN or (state in KEPT and item["reversing"])  # the resolver's (``DUE_SQL``)
    if difference == "STATUS" and owed and item["reversing"]:
        return "resolve_open"  # the money goes back whatever the statement says: the resolver's to do
    if difference == "STATUS" and owed:
        if status == "SUCCESS" and item["channel_fen"] == item["journal_fen"]:
            return "approve_paid"
        return "resolve_open" if status is None else None
    if difference == "STATUS" and state not in KEPT and item["final_since_fetch"]:
        return "agrees_now"
    if difference == "LONG" and item["elsewhere_rrn"] is not None:
        # The journal has it after all (the statement's time is the channel's, the window the
        # switch's arrival): kept as the statement says, nothing to do; otherwise a person's.
        return "journal_elsewhere" if item["kept_elsewhere"] else None
    if difference == "LONG":
        return "reverse_long"
    if difference == "SHORT":
        return "confirm_short"
    return None


async def resolve_by_hand(conn: asyncpg.Connection, item_id: int, reason: str) -> bool:
    """An open difference closed by a person with ``reason`` (``paysw recon errors --resolve``, the
    console), inside the caller's transaction; False when there is no open difference ``item_id``."""
    status = await conn.execute(
        "UPDATE recon_item SET status = 'RESOLVED', note = $2 WHERE id = $1 AND status = 'OPEN'", item_id, reason
    )
    if status != "UPDATE 1":
        return False
    await conn.execute("INSERT INTO recon_action (item_id, rule, detail) VALUES ($1, 'operator', $2)", item_id, reason)
    return True
