"""The one state machine: its data, the database's copy of it, the promise rule in SQL against
the same rule in Python, and that no writer outside the journal moves a transaction."""

from __future__ import annotations

import datetime as dt
import itertools
import re
import uuid
from pathlib import Path

from switch.journal import Event, Journal, NewTxn, Report, State
from switch.journal.machine import FINAL, MOVE_SQL, MOVES, OPEN, PAIRS, PROMISE_SQL, TOLD_KEEP, Promise, promise
from tests.conftest import run

ROOT = Path(__file__).resolve().parent.parent
TODAY = dt.datetime.now(dt.UTC).date()


def test_every_state_is_reached_and_final_states_are_left_only_for_a_reversal_or_a_void():
    reached = {State.RECEIVED} | {m.to for m in MOVES}
    assert reached == set(State)
    out_of_final = {(m.state, m.event, m.promise) for m in MOVES if m.state in FINAL}
    assert out_of_final == {
        (State.APPROVED, Event.CANCELLED, Promise.REVERSE),
        (State.APPROVED, Event.REFUSED, Promise.REVERSE),
        (State.APPROVED, Event.VOIDED, Promise.KEEP),
    }
    # One move at most for each state, event and promise.
    assert len({(m.state, m.event, m.promise) for m in MOVES}) == len(MOVES)


def test_money_is_kept_only_where_the_terminal_was_promised_it():
    for move in MOVES:
        if move.to is State.APPROVED:
            assert move.promise is Promise.KEEP, move
        if move.promise is Promise.REVERSE and move.to in FINAL:
            assert move.to in (State.REVERSED, State.VOIDED), move


def test_the_promise_in_sql_is_the_promise_in_python(database_url):
    import asyncpg

    async def scenario():
        conn = await asyncpg.connect(database_url)
        try:
            txn_types, told = ["purchase", "refund", "void"], [None, *TOLD_KEEP, "91", "05"]
            answers = [None, "00", "91"]
            cases = list(itertools.product(txn_types, told, answers, [False, True], [False, True]))
            rows = await conn.fetch(
                f"SELECT {PROMISE_SQL} AS promise "
                "FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[], $5::bool[]) "
                "WITH ORDINALITY AS c(txn_type, response_code, answer, reversal, qr, n) "
                "CROSS JOIN LATERAL (SELECT c.txn_type, c.response_code, "
                "CASE WHEN c.reversal THEN now() END AS reversal_requested_at, "
                "CASE WHEN c.qr THEN now() END AS expires_at) t "
                "CROSS JOIN LATERAL (SELECT c.answer) u ORDER BY n",
                *map(list, zip(*cases, strict=True)),
            )
        finally:
            await conn.close()
        for (txn_type, told, answer, reversal, qr), row in zip(cases, rows, strict=True):
            expected = promise(txn_type, told if told is not None else answer, reversal, qr)
            assert row["promise"] == expected, (txn_type, told, answer, reversal, qr)

    run(scenario())


def test_the_database_holds_the_machine_written_from_the_code(database_url):
    async def scenario():
        journal = await Journal.open(database_url, pool_size=4, max_batch=64)
        try:
            final = {r["state"] for r in await journal.pool.fetch("SELECT state FROM txn_state WHERE final")}
            pairs = {tuple(r) for r in await journal.pool.fetch("SELECT from_state, to_state FROM txn_state_move")}
        finally:
            await journal.close()
        assert final == set(FINAL)
        assert pairs == set(PAIRS)

    run(scenario())


def test_the_moves_in_sql_are_the_moves_in_python(database_url):
    """``MOVE_SQL``, by which the journal's updates move rows, against ``MOVES``: for every state,
    event and promise, the same new state, or none where the machine has no move."""
    import asyncpg

    async def scenario():
        conn = await asyncpg.connect(database_url)
        try:
            promised = [("purchase", "00", False, False), ("purchase", "91", False, False),
                        ("refund", None, False, False), ("purchase", "00", True, False),
                        ("purchase", None, False, True)]  # (type, told, reversal, qr)  # fmt: skip
            cases = [(s, e, *p) for s, e, p in itertools.product(State, Event, promised)]
            rows = await conn.fetch(
                f"SELECT {MOVE_SQL} AS to_state "
                "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bool[], $6::bool[]) "
                "WITH ORDINALITY AS c(state, event, txn_type, response_code, reversal, qr, n) "
                "CROSS JOIN LATERAL (SELECT c.state, c.txn_type, c.response_code, "
                "CASE WHEN c.reversal THEN now() END AS reversal_requested_at, "
                "CASE WHEN c.qr THEN now() END AS expires_at) t "
                "CROSS JOIN LATERAL (SELECT c.event, NULL::text AS answer) u ORDER BY n",
                *map(list, zip(*cases, strict=True)),
            )
        finally:
            await conn.close()
        assert {promise(txn_type, told, reversal, qr) for _, _, txn_type, told, reversal, qr in cases} == set(Promise)
        moves = {(m.state, m.event, m.promise): m.to for m in MOVES}
        for (state, event, txn_type, told, reversal, qr), row in zip(cases, rows, strict=True):
            expected = moves.get((state, event, promise(txn_type, told, reversal, qr)))
            assert row["to_state"] == expected, (state, event, txn_type, told, reversal, qr)

    run(scenario())


def _purchase(rrn: str) -> NewTxn:
    """A purchase on a channel no switch serves: the resolver of a test switch on the same journal
    would otherwise claim it, due, before the test reads it (seen once, at 3e34c16)."""
    now = dt.datetime.now(dt.UTC)
    return NewTxn(
        TODAY, f"M{uuid.uuid4().hex[:7].upper()}", "000001", f"{TODAY:%m%d}120000", rrn, "purchase", "0200", "000000",
        "898310048990001", 500, "156", "120000", f"{TODAY:%m%d}", "031", "134567******6700", b"h", "machine-test",
        f"{TODAY:%Y%m%d}{rrn}", b"r", now, now + dt.timedelta(hours=1),
    )  # fmt: skip


def test_a_reversal_acknowledged_while_under_way_is_never_settled_as_kept(database_url):
    """The front end's own approval, and a statement's, of a purchase whose 0400 was answered
    meanwhile: it stays open and due at once, for the resolver to cancel."""

    async def scenario():
        journal = await Journal.open(database_url, pool_size=4, max_batch=64)
        try:
            kept, reversed_ = _purchase(await journal.next_rrn()), _purchase(await journal.next_rrn())
            for txn in (kept, reversed_):
                assert await journal.write_ahead(txn)
            _, code = await journal.request_reversal(reversed_.key, "000002", reversed_.transmitted, 500,
                                                      await journal.next_rrn())  # fmt: skip
            assert code == "00"
            later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
            states = [await journal.record(Report(*t.key, Event.ACCEPTED, "00", "", "", "", "", later))
                      for t in (kept, reversed_)]  # fmt: skip
            due = await journal.pool.fetchval("SELECT next_check_at <= now() FROM txn WHERE rrn = $1", reversed_.rrn)
            told_failure = _purchase(await journal.next_rrn())
            assert await journal.write_ahead(told_failure)
            failed = await journal.record(Report(*told_failure.key, Event.ACCEPTED, "91", "", "", "", "", later))
        finally:
            await journal.close()
        assert states == [State.APPROVED, State.UNKNOWN] and due
        assert failed is State.UNKNOWN  # paid at the channel, told it failed: the money goes back

    run(scenario())


def test_no_transaction_is_moved_outside_the_journal():
    """One place decides a state: no ``UPDATE txn`` or state literal written outside the journal."""
    offenders = []
    for path in [*ROOT.glob("switch/**/*.py"), *ROOT.glob("actors/**/*.py"), *ROOT.glob("bench/**/*.py")]:
        if path.parent.name == "journal":
            continue
        text = path.read_text()
        if re.search(r"UPDATE\s+txn\b", text, re.IGNORECASE):
            offenders.append(f"{path.relative_to(ROOT)}: UPDATE txn")
        if re.search(rf"state\s*(=|IN|<>)\s*\(?'({'|'.join(State)})'", text):
            offenders.append(f"{path.relative_to(ROOT)}: a state literal in SQL")
    assert offenders == []
    assert OPEN.isdisjoint(FINAL)


def test_a_purchase_whose_reversal_is_owed_is_matched_as_open(database_url):
    """Reconciliation's match step: a purchase still APPROVED in the journal but with a reversal
    acknowledged is not money kept: against a paid statement row it is a STATUS difference (for
    the resolver), never MATCHED (and so never settled to the merchant)."""
    import asyncpg

    from switch.recon.batch import _MATCH_PAYMENTS

    async def scenario():
        journal = await Journal.open(database_url, pool_size=4, max_batch=64)  # migrated
        await journal.close()
        conn = await asyncpg.connect(database_url)
        try:
            async with conn.transaction():
                batch = await conn.fetchval(
                    "INSERT INTO recon_batch (channel, day, hour, step) VALUES ('machine-test', $1, 3, 'match') "
                    "RETURNING id",
                    TODAY,
                )
                for order, reversing in (("KEPT1", False), ("OWED1", True)):
                    await conn.execute(
                        "INSERT INTO recon_statement_row VALUES ($1, 'PAY', $2, '', 'X', 'SUCCESS', 500, 3, now())",
                        batch,
                        order,
                    )
                    await conn.execute(
                        "INSERT INTO recon_journal_row (batch_id, txn_type, out_trade_no, rrn, state, amount_fen, "
                        "reversing) VALUES ($1, 'purchase', $2, $2, 'APPROVED', 500, $3)",
                        batch,
                        order,
                        reversing,
                    )
                await conn.execute(_MATCH_PAYMENTS, batch)
                items = await conn.fetch("SELECT out_trade_no, class FROM recon_item WHERE batch_id = $1", batch)
                classes = {r["out_trade_no"]: r["class"] for r in items}
                raise _Rollback(classes)
        except _Rollback as done:
            return done.args[0]
        finally:
            await conn.close()

    assert run(scenario()) == {"KEPT1": "MATCHED", "OWED1": "STATUS"}


class _Rollback(Exception):
    """Leaves the test's rows behind in no table."""


def test_a_qr_orders_payment_is_kept_whatever_its_merchant_was_told():
    """Never told (its front end stopped after the channel created it) or told "unknown", a QR
    order paid by the customer is the merchant's money; a terminal's purchase so told is not."""
    for told in (None, "91", "96"):
        assert promise("purchase", told, False, qr=True) is Promise.KEEP
        assert promise("purchase", told, False) is Promise.RETURN
    assert promise("purchase", None, True, qr=True) is Promise.REVERSE
