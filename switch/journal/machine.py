"""The transaction state machine, as data: states, events, what the terminal was promised, and
the moves between them. The journal applies it (``switch.journal.store``), and nothing else moves
a transaction: the expression the journal's updates pick the new state with (``MOVE_SQL``) is
generated from ``MOVES``, and the database's guard (``txn_state_move``) is written from it by
the journal's owner at any start that finds it otherwise (``schema.migrate``).

A move is chosen by (state, event, promise):

- the **state** the row is in;
- the **event**: what the channel established, or what the switch did there;
- the **promise**: what the terminal was told, which decides what the money may then do. A
  purchase answered approved or "in progress" (``00`` / ``09``) may keep its money (``keep``);
  one answered anything else, or nothing at all (a crash before the answer), must not
  (``return``); one whose reversal (0400) was acknowledged must go back as a reversal
  (``reverse``), whatever it was told before. Voids and refunds keep what the channel did.

So a writer that learns "the channel has the money" (the lifecycle, the resolver, or
reconciliation reading a statement) reports ``accepted``; the machine makes it APPROVED only when
the promise lets the money be kept, and otherwise leaves it open and due, for the resolver to
cancel. No writer can forget a reversal, because no writer decides the state.

Sub-states are columns the journal alone writes: ``reversal_requested_at`` (the promise
``reverse``), ``reserved_fen`` (held by voids and refunds under way) and ``refunded_fen`` (given
back by refunds the channel accepted). A void the channel accepted makes its purchase VOIDED: the
whole amount went back, and ``refunded_fen`` stays 0. ``REFUNDED`` is not a state: a purchase partly
or wholly refunded stays APPROVED (its payment row at the channel stands; refunds are rows of
their own), with ``refunded_fen`` saying how much went back.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from protocols import response_codes as rc
from protocols.messages import Outcome


class State(StrEnum):
    RECEIVED = "RECEIVED"
    PENDING = "PENDING"
    UNKNOWN = "UNKNOWN"
    APPROVED = "APPROVED"
    DECLINED = "DECLINED"
    CANCELLED = "CANCELLED"
    REVERSED = "REVERSED"
    VOIDED = "VOIDED"


DESCRIPTIONS = {
    State.RECEIVED: "written ahead; the channel has not answered yet",
    State.PENDING: "the customer is still confirming at the channel",
    State.UNKNOWN: "not known at the channel: to be resolved by query (and cancelled if the money may not be kept)",
    State.APPROVED: "the channel took the money, and may keep it",
    State.DECLINED: "the channel refused it, or certainly never received it",
    State.CANCELLED: "closed or cancelled at the channel: the channel keeps no money",
    State.REVERSED: "reversed at the terminal's request: the channel keeps no money",
    State.VOIDED: "voided the same day: the channel keeps no money",
}
BORN = State.RECEIVED  # the state a transaction is written in (the write-ahead's); any other comes by a move
OPEN = frozenset({State.RECEIVED, State.PENDING, State.UNKNOWN})
FINAL = frozenset(State) - OPEN
KEPT = frozenset({State.APPROVED})  # the channel holds the payment (for a purchase) or did the void / refund


class Event(StrEnum):
    ACCEPTED = "accepted"  # the channel did what was asked: took the payment, or did the void / refund
    PAYING = "paying"  # the customer is still confirming
    UNSURE = "unsure"  # no answer that can be trusted: ask again
    REFUSED = "refused"  # refused, closed or failed at the channel: it keeps no money
    CANCELLED = "cancelled"  # the switch closed or cancelled the payment at the channel
    VOIDED = "voided"  # a void of this purchase went through


class Promise(StrEnum):
    KEEP = "keep"
    RETURN = "return"
    REVERSE = "reverse"


EVENT_OF_OUTCOME = {
    Outcome.APPROVED: Event.ACCEPTED,
    Outcome.PENDING: Event.PAYING,
    Outcome.UNKNOWN: Event.UNSURE,
    Outcome.DECLINED: Event.REFUSED,
}
TOLD_KEEP = (rc.APPROVED, rc.IN_PROGRESS)  # answers after which a purchase's money may be kept
PURCHASE, VOID, REFUND = "purchase", "void", "refund"  # the transaction types (column txn_type)


def promise(txn_type: str, told: str | None, reversal_requested: bool, qr: bool = False) -> Promise:
    """The one rule: what the terminal was told, and so what the money may do. A QR order's
    payment is kept whatever its merchant was told, or if never told (its front end stopped after
    the channel created it): the customer can pay only a code the channel made for the merchant's
    order, and the merchant closes or refunds an order it no longer wants."""
    if reversal_requested:
        return Promise.REVERSE
    if txn_type != PURCHASE or qr or told in TOLD_KEEP:
        return Promise.KEEP
    return Promise.RETURN


# The same rule over a ``txn`` row ``t`` (a QR order's has ``expires_at``) and the answer recorded
# with the move, ``u.answer`` (the front end's own, for a row it had not answered yet). Tested
# against ``promise``.
PROMISE_SQL = (
    f"CASE WHEN t.reversal_requested_at IS NOT NULL THEN '{Promise.REVERSE}' "
    f"WHEN t.txn_type <> '{PURCHASE}' OR t.expires_at IS NOT NULL OR coalesce(t.response_code, u.answer) IN "
    f"({', '.join(repr(c) for c in TOLD_KEEP)}) THEN '{Promise.KEEP}' ELSE '{Promise.RETURN}' END"
)


@dataclass(frozen=True, slots=True)
class Move:
    state: State
    event: Event
    promise: Promise
    to: State


def _moves() -> tuple[Move, ...]:
    moves = []
    for state in sorted(OPEN):
        for promised in Promise:
            reversing = promised is Promise.REVERSE
            moves += [
                # Money the terminal was not promised stays open and due: the resolver cancels it.
                Move(state, Event.ACCEPTED, promised, State.APPROVED if promised is Promise.KEEP else State.UNKNOWN),
                Move(state, Event.PAYING, promised, State.PENDING),
                Move(state, Event.UNSURE, promised, State.UNKNOWN),
                Move(state, Event.REFUSED, promised, State.REVERSED if reversing else State.DECLINED),
                Move(state, Event.CANCELLED, promised, State.REVERSED if reversing else State.CANCELLED),
            ]
    moves += [
        # An approved purchase whose reversal was acknowledged afterwards: cancelled, or found closed.
        Move(State.APPROVED, Event.CANCELLED, Promise.REVERSE, State.REVERSED),
        Move(State.APPROVED, Event.REFUSED, Promise.REVERSE, State.REVERSED),
        Move(State.APPROVED, Event.VOIDED, Promise.KEEP, State.VOIDED),
    ]
    return tuple(moves)


MOVES = _moves()
# Where a payment kept moves when its money goes back to the payer (a void, a reversal carried out):
# never out again, as no state the money never came in (declined, cancelled) is left either.
GONE_BACK = frozenset(m.to for m in MOVES if m.state in KEPT and m.to not in KEPT)
PAIRS = sorted({(m.state, m.to) for m in MOVES if m.state != m.to})  # the database guard's table


def sql_set(states: frozenset[State]) -> str:
    """``('A', 'B')`` for SQL that reads states through these definitions."""
    return "(" + ", ".join(f"'{s}'" for s in sorted(states)) + ")"


def _move_sql() -> str:
    """``MOVES`` as one SQL expression over a ``txn`` row ``t`` and a report ``u`` (its event in
    ``u.event``): the state the row moves to, or NULL where the machine has no move. The moves are
    one constant, by promise, then event, then state, read with three lookups: a row costs no
    table read, and the statement little to plan (nested CASEs of every move, which the outcome's
    update repeats four times, took two thirds of its planning, and it is planned for each batch)."""
    table: dict[str, dict[str, dict[str, str]]] = {}
    for m in MOVES:
        table.setdefault(m.promise, {}).setdefault(m.event, {})[m.state] = m.to
    moves = json.dumps(table, sort_keys=True, separators=(",", ":"))
    return f"('{moves}'::jsonb -> ({PROMISE_SQL}) -> u.event ->> t.state)"


MOVE_SQL = _move_sql()

# A row is due for the resolver while open, or while kept with a reversal still to carry out:
# two queues, each with its partial index on next_check_at (txn_due, txn_reversal_due, whose
# predicates name these states: a state added here needs its index changed too).
OPEN_SQL = f"state IN {sql_set(OPEN)}"
REVERSING_SQL = f"state IN {sql_set(KEPT)} AND reversal_requested_at IS NOT NULL"
DUE_SQL = f"({OPEN_SQL} OR ({REVERSING_SQL}))"
# When the resolver looks at a row after its move (to ``MOVE_SQL``): at once while a reversal is
# to be carried out, never once final, else when the writer asked (``u.asked``).
# (Each row takes one branch, so the move is worked out once here.)
NEXT_CHECK_SQL = (
    f"CASE WHEN t.reversal_requested_at IS NOT NULL THEN CASE WHEN {MOVE_SQL} IN {sql_set(OPEN | KEPT)} THEN now() END "
    f"WHEN {MOVE_SQL} IN {sql_set(FINAL)} THEN NULL ELSE u.asked END"
)


# -- what may happen next, given the sub-states -------------------------------------------------


# The longest refund window a channel may be given (``ChannelSection.refund_days``): WeChat Pay's
# own, a year from the payment. The journal's retention keeps a day longer than this at the least
# (``archive.MIN_KEEP_DAYS``), so a refund the channel would take always finds its purchase.
REFUND_DAYS_MAX = 365


class UndoRefusal(NamedTuple):
    """Why a void or refund is refused before its channel: field 39, and a word for the metric's
    label and the log (a bounded set: ``ORIGINAL_NOT_APPROVED``, ``NOT_SAME_DAY``, ``TAKEN``,
    ``AMOUNT``, ``REFUND_WINDOW``)."""

    code: str
    reason: str


def undo_refusal(
    txn_type: str, amount_fen: int, tx_date: dt.date, state: str, original_date: dt.date,
    original_fen: int, reserved_fen: int, refunded_fen: int, reversal_requested: bool,
    age: dt.timedelta, refund_days: int,
) -> UndoRefusal | None:  # fmt: skip
    """Why a void (same day, whole amount) or a refund (within its channel's ``refund_days`` of
    the purchase, ``age`` ago) of a purchase is refused, or None when it may go ahead. Amounts
    under way count as taken: never over."""
    if state != State.APPROVED or reversal_requested:
        # a refund of a failed or reversed purchase, a void of one not approved
        return UndoRefusal(rc.INVALID_TRANSACTION, "ORIGINAL_NOT_APPROVED")
    taken = reserved_fen + refunded_fen
    if txn_type == VOID:
        if original_date != tx_date:
            return UndoRefusal(rc.INVALID_TRANSACTION, "NOT_SAME_DAY")
        if taken:
            return UndoRefusal(rc.INVALID_TRANSACTION, "TAKEN")  # voided or refunded already, or under way
        if amount_fen != original_fen:
            return UndoRefusal(rc.ORIGINAL_AMOUNT_INCORRECT, "AMOUNT")
    # Past the channel's window it would refuse it; with none (0 days) not even at once, whatever
    # two front ends' clocks say of the age.
    elif refund_days == 0 or age > dt.timedelta(days=refund_days):
        return UndoRefusal(rc.INVALID_TRANSACTION, "REFUND_WINDOW")
    elif taken + amount_fen > original_fen:
        return UndoRefusal(rc.ORIGINAL_AMOUNT_INCORRECT, "AMOUNT")
    return None


def reversal_answer(state: str | None, touched_by_undo: bool, amount_differs: bool, undo: bool = False) -> str:
    """Field 39 of a 0410: ``25`` for an unknown original; ``12`` for a void or refund (``undo``:
    neither is reversed, it ends at its channel as any other; the terminal resends it to learn how,
    and is never told "not found", which would have it refunded again); ``64`` for one whose
    amount is not the reversal's (a reversal undoes the whole purchase: it is never taken for a
    partial one); ``12`` for an approved one that a refund or void has taken from (cancelling it
    would return that part twice); else ``00``."""
    if state is None:
        return rc.ORIGINAL_NOT_FOUND
    if undo:
        return rc.INVALID_TRANSACTION
    if amount_differs:
        return rc.ORIGINAL_AMOUNT_INCORRECT
    if state == State.APPROVED and touched_by_undo:
        return rc.INVALID_TRANSACTION
    return rc.APPROVED
