"""Reversals (0400): answered once committed, carried out at the channel by the resolver until it
confirms, idempotent, and honoured even when they overtake their original."""

from __future__ import annotations

import asyncio
import contextlib
import re

import asyncpg

from bench.client import IsoClient
from bench.simulators.control import set_fault
from bench.simulators.faults import NO_FAULT, Fault
from bench.traffic import inquiry, refund, reversal
from tests.conftest import run
from tests.support import (
    STANS,
    connected,
    journal_row,
    new_purchase,
    out_trade_no,
    sim_ledger,
    wait_for_state,
)


def test_reversal_of_an_approved_purchase_returns_the_money_once(switch, simulators, database_url):
    async def scenario():
        purchase = new_purchase("wechat")
        async with connected(switch) as client:
            approved = await client.request(purchase)
            reversal_request = reversal(purchase, STANS.next(purchase["41"]))
            answer = await client.request(reversal_request)
            again = await client.request(dict(reversal_request))  # the terminal resends it
            resent = await client.request(dict(purchase))  # and the original: no longer paid
        assert approved["39"] == "00"
        assert (answer["t"], answer["39"]) == ("0410", "00")
        assert (again["39"], again["37"]) == ("00", answer["37"])
        assert (resent["39"], resent["37"]) == ("05", approved["37"])
        row = await wait_for_state(database_url, approved["37"], {"REVERSED"})
        assert row["response_code"] == "00"  # the record of what it was told
        assert sim_ledger(simulators, "wechat")[out_trade_no(approved["37"])]["status"] == "REVERSED"

    run(scenario())


def test_reversal_of_a_declined_purchase_needs_no_channel_call(switch, simulators, database_url):
    async def scenario():
        purchase = new_purchase("ecny", "51")
        async with connected(switch) as client:
            declined = await client.request(purchase)
            answer = await client.request(reversal(purchase, STANS.next(purchase["41"])))
        assert (declined["39"], answer["39"]) == ("51", "00")
        await asyncio.sleep(1.5)
        row = await journal_row(database_url, declined["37"])
        assert row["state"] == "DECLINED"
        assert sim_ledger(simulators, "ecny")[out_trade_no(declined["37"])]["status"] == "FAILED"

    run(scenario())


def test_reversal_that_overtakes_its_original_is_honoured(switch, simulators, database_url):
    async def scenario():
        purchase = new_purchase("inbank")
        async with connected(switch) as client:
            early = await client.request(reversal(purchase, STANS.next(purchase["41"])))
            late_original = await client.request(purchase)
        assert early["39"] == "25"  # spec: the original is unknown (yet)
        assert late_original["39"] == "05"  # refused: never sent to the channel
        assert await journal_row(database_url, late_original["37"]) is None
        assert out_trade_no(late_original["37"]) not in sim_ledger(simulators, "inbank")

    run(scenario())


def test_reversal_while_the_original_is_under_way(switch, simulators, database_url):
    async def scenario():
        purchase = new_purchase("alipay", "98")  # the channel takes 3 s to answer
        async with connected(switch) as paying, connected(switch) as reversing:
            original = asyncio.ensure_future(paying.request(purchase))
            await asyncio.sleep(0.5)
            answer = await asyncio.wait_for(reversing.request(reversal(purchase, STANS.next(purchase["41"]))), 2)
            approved = await original
        assert answer["39"] == "00"  # answered at once, not after the original
        assert approved["39"] == "00"
        await wait_for_state(database_url, approved["37"], {"REVERSED"})
        assert sim_ledger(simulators, "alipay")[out_trade_no(approved["37"])]["status"] == "REVERSED"

    run(scenario())


def test_reversal_of_a_payment_the_customer_is_still_confirming(switch, simulators, database_url):
    async def scenario():
        purchase = new_purchase("wechat", "08")
        async with connected(switch) as client:
            waiting = await client.request(purchase)
            answer = await client.request(reversal(purchase, STANS.next(purchase["41"])))
        assert (waiting["39"], answer["39"]) == ("09", "00")
        await wait_for_state(database_url, waiting["37"], {"REVERSED"})
        assert sim_ledger(simulators, "wechat")[out_trade_no(waiting["37"])]["status"] == "CLOSED"

    run(scenario())


def test_malformed_reversals(switch):
    async def scenario():
        purchase = new_purchase("unionpay")
        async with connected(switch) as client:
            bad_mti = reversal(purchase, STANS.next(purchase["41"]))
            bad_mti["90"] = "0100" + bad_mti["90"][4:]
            no_90 = {k: v for k, v in reversal(purchase, STANS.next(purchase["41"])).items() if k != "90"}
            unknown_terminal = reversal(purchase, STANS.next("X0000009")) | {"41": "X0000009"}
            answers = [await client.request(m) for m in (bad_mti, no_90, unknown_terminal)]
        assert [a["39"] for a in answers] == ["30", "30", "03"]
        assert all(a["t"] == "0410" and len(a["37"]) == 12 for a in answers)

    run(scenario())


def test_a_reversal_the_channel_refuses_goes_to_a_person_and_is_never_dropped(switch, simulators, database_url):
    async def scenario():
        import asyncpg

        purchase = new_purchase("unionpay", "07")  # the channel charges, and refuses any cancel
        async with connected(switch) as client:
            approved = await client.request(purchase)
            answer = await client.request(reversal(purchase, STANS.next(purchase["41"])))
        assert (approved["39"], answer["39"]) == ("00", "00")
        conn = await asyncpg.connect(database_url)
        try:
            for _ in range(60):
                letter = await conn.fetchrow("SELECT * FROM dead_letter WHERE rrn = $1", approved["37"])
                if letter:
                    break
                await asyncio.sleep(0.25)
        finally:
            await conn.close()
        assert letter is not None and "refused to cancel" in letter["reason"]
        row = await journal_row(database_url, approved["37"])
        assert row["state"] == "APPROVED" and row["reversal_requested_at"] is not None  # kept as it is
        assert row["next_check_at"] is None  # no longer retried by the resolver, waiting for a person
        assert sim_ledger(simulators, "unionpay")[out_trade_no(approved["37"])]["status"] == "PAID"
        _, metrics = switch.get("/metrics")
        assert 'paysw_dead_letters_total{channel="unionpay"}' in metrics
        for _ in range(60):  # and open, while no person has resolved it (read every 5 s), for the alert
            metrics = switch.get("/metrics")[1]
            waiting = re.search(r'^paysw_dead_letters_open\{channel="unionpay"\} (\S+)$', metrics, re.M)
            if waiting and float(waiting[1]) >= 1:
                break
            await asyncio.sleep(0.25)
        else:
            raise AssertionError("paysw_dead_letters_open never counted the open letter")

    run(scenario())


def test_a_reversal_that_raced_its_originals_write_ahead_is_carried_out(switch, database_url, simulators):
    """A 0400 answered ``25`` in the very instant its original was being written ahead (neither
    saw the other's uncommitted row): the original went to the channel. The resolver finds it and
    carries the reversal out. One answered ``12`` (refused) is left alone."""

    async def race_lost(conn: asyncpg.Connection, answer: dict, code: str) -> None:
        # As the 0400 left it: recorded and answered, its original not flagged.
        await conn.execute(
            "INSERT INTO reversal (orig_tx_date, terminal_id, orig_stan, orig_transmitted, stan, transmitted, "
            "amount_fen, rrn, code) SELECT tx_date, terminal_id, stan, transmitted, stan, transmitted, amount_fen, "
            "$2, $3 FROM txn WHERE rrn = $1",
            answer["37"],
            f"8{answer['37'][1:]}",
            code,
        )

    async def scenario():
        async with connected(switch) as terminal:
            raced = await terminal.request(new_purchase("alipay"))
            refused = await terminal.request(new_purchase("alipay"))
        assert raced["39"] == refused["39"] == "00"
        conn = await asyncpg.connect(database_url)
        try:
            await race_lost(conn, raced, "25")
            await race_lost(conn, refused, "12")
        finally:
            await conn.close()
        reversed_ = await wait_for_state(database_url, raced["37"], {"REVERSED"}, timeout=45)
        kept = await journal_row(database_url, refused["37"])
        return raced, reversed_, kept

    raced, reversed_, kept = run(scenario())
    assert reversed_["state"] == "REVERSED"
    assert sim_ledger(simulators, "alipay")[out_trade_no(raced["37"])]["status"] == "REVERSED"
    assert (kept["state"], kept["reversal_requested_at"]) == ("APPROVED", None)


def test_a_reversal_for_another_amount_reverses_nothing(switch, simulators, database_url):
    """A reversal undoes the whole purchase, so one naming another amount is refused ``64`` and
    the money stays; the terminal's proper reversal then goes through."""

    async def scenario():
        purchase = new_purchase("inbank", amount=5000)
        async with connected(switch) as client:
            approved = await client.request(purchase)
            partial = reversal(purchase, STANS.next(purchase["41"])) | {"4": f"{1000:012d}"}
            refused = await client.request(partial)
            untouched = await journal_row(database_url, approved["37"])
            proper = await client.request(reversal(purchase, STANS.next(purchase["41"])))
        reversed_ = await wait_for_state(database_url, approved["37"], {"REVERSED"})
        return approved, refused, untouched, proper, reversed_

    approved, refused, untouched, proper, reversed_ = run(scenario())
    assert (approved["39"], refused["39"], proper["39"]) == ("00", "64", "00")
    assert (untouched["state"], untouched["reversal_requested_at"]) == ("APPROVED", None)
    assert reversed_["state"] == "REVERSED"
    assert sim_ledger(simulators, "inbank")[out_trade_no(approved["37"])]["status"] == "REVERSED"


def test_a_reversal_of_a_refund_is_12_never_not_found(switch, simulators, database_url):
    """A refund is not reversed (its money is on its way back at the channel): a 0400 naming one
    the journal holds is answered 12, resent or not, so the terminal asks how it ended (0100) and
    never takes "not found" for "not refunded" and refunds again; the refund stands, once."""

    async def scenario():
        purchase = new_purchase("unionpay", amount=1000)
        async with connected(switch) as client:
            paid = await client.request(purchase)
            refund_request = refund(purchase, paid["37"], 300, STANS.next(purchase["41"]))
            refunded = await client.request(refund_request)
            # A 0400 needs field 2: the terminal's copy of the card or code the refund was for.
            named = refund_request | {"2": purchase["2"]}
            reversal_request = reversal(named, STANS.next(purchase["41"]))
            answer = await client.request(reversal_request)
            again = await client.request(dict(reversal_request))
            other_amount = await client.request(  # a void or refund is never reversed, whatever the amount
                reversal(named | {"4": f"{299:012d}"}, STANS.next(purchase["41"])) | {"90": reversal_request["90"]}
            )
            asked = await client.request(dict(refund_request))  # resent unchanged: how it ended
            never_sent = named | {"11": STANS.next(purchase["41"])}
            unknown = await client.request(reversal(never_sent, STANS.next(purchase["41"])))
        assert [a["39"] for a in (paid, refunded, answer, again, unknown)] == ["00", "00", "12", "12", "25"]
        assert again["37"] == answer["37"] and other_amount["39"] == "12"
        assert (asked["39"], asked["37"]) == ("00", refunded["37"])
        await asyncio.sleep(1.0)  # a resolver that took the refund for reversed would have acted by now
        row = await journal_row(database_url, refunded["37"])
        assert (row["state"], row["reversal_requested_at"]) == ("APPROVED", None)
        original = await journal_row(database_url, paid["37"])
        assert (original["state"], original["refunded_fen"]) == ("APPROVED", 300)
        assert sim_ledger(simulators, "unionpay")[out_trade_no(paid["37"])]["refunded_fen"] == 300

    run(scenario())


def test_an_inquiry_after_an_acknowledged_reversal_is_05_before_the_channel_gives_the_money_back(
    switch, simulators, ports, database_url
):
    """The cashier asks (0100) after the terminal's reversal was acknowledged, while the channel
    hangs and the purchase is still APPROVED in the journal: 05, never "paid", so no goods leave
    for money on its way back. The reversal is carried out once the channel answers again."""

    async def scenario():
        purchase = new_purchase("inbank")
        async with connected(switch) as client:
            paid = await client.request(purchase)
            set_fault(f"127.0.0.1:{ports.controls['inbank']}", Fault(hang=True))
            try:
                reversed_ = await client.request(reversal(purchase, STANS.next(purchase["41"])))
                asked = await client.request(
                    inquiry(purchase["41"], purchase["42"], paid["37"], STANS.next(purchase["41"]))
                )
                row = await journal_row(database_url, paid["37"])
            finally:
                set_fault(f"127.0.0.1:{ports.controls['inbank']}", NO_FAULT)
        assert [a["39"] for a in (paid, reversed_, asked)] == ["00", "00", "05"]
        assert row["state"] == "APPROVED" and row["reversal_requested_at"] is not None  # not yet given back
        await wait_for_state(database_url, paid["37"], {"REVERSED"}, timeout=60)

    run(scenario())


async def _ended_after_hanging_up(
    switch, database_url: str, purchase: dict[str, str], resent: bool = False
) -> asyncpg.Record:
    """Send ``purchase`` (to a channel that does not answer at once), and ``resent`` again on the
    same connection, close the connection before its answer, and return its journal row, found
    by its key, once final."""
    async with connected(switch) as client:
        sent = [asyncio.ensure_future(client.request(purchase))]
        await asyncio.sleep(0.5)
        if resent:
            sent.append(asyncio.ensure_future(client.request(dict(purchase))))
            await asyncio.sleep(0.3)
    for request in sent:  # (a resend's wait replaced the first's in the client: never answered)
        request.cancel()
    await asyncio.gather(*sent, return_exceptions=True)
    conn = await asyncpg.connect(database_url)
    try:
        for _ in range(40):
            row = await conn.fetchrow(
                "SELECT * FROM txn WHERE terminal_id = $1 AND stan = $2 AND transmitted = $3",
                purchase["41"],
                purchase["11"],
                purchase["7"],
            )
            if row is not None and row["state"] != "RECEIVED":
                break
            await asyncio.sleep(0.25)
    finally:
        await conn.close()
    assert row is not None
    return await wait_for_state(database_url, row["rrn"], {"CANCELLED", "APPROVED", "REVERSED", "DECLINED"})


def test_an_approval_whose_connection_closed_is_told_05_and_its_money_goes_back(switch, simulators, database_url):
    """The terminal hangs up while the channel is paid: nobody heard the approval, so it is
    recorded as a 05 and the money goes back at the channel, as for a purchase never answered;
    a resend and the terminal's 0400 agree."""

    async def scenario():
        purchase = new_purchase("alipay", "98")  # the channel takes 3 s to answer
        row = await _ended_after_hanging_up(switch, database_url, purchase)
        assert (row["state"], row["response_code"]) == ("CANCELLED", "05")
        assert sim_ledger(simulators, "alipay")[out_trade_no(row["rrn"])]["status"] != "PAID"
        async with connected(switch) as client:
            resent = await client.request(dict(purchase))
            reversed_ = await client.request(reversal(purchase, STANS.next(purchase["41"])))
        assert (resent["39"], resent["37"], reversed_["39"]) == ("05", row["rrn"], "00")
        _, metrics = switch.get("/metrics")
        assert re.search(r'paysw_undelivered_answers_total\{channel="alipay",outcome="APPROVED"\} [1-9]', metrics)

    run(scenario())


def test_an_approval_resent_on_the_connection_that_closed_is_told_05_too(switch, simulators, database_url):
    """The terminal resent the purchase on the same connection, then hung up: the resend waiting
    for the answer has nowhere to take it either."""

    async def scenario():
        purchase = new_purchase("alipay", "98")
        row = await _ended_after_hanging_up(switch, database_url, purchase, resent=True)
        assert (row["state"], row["response_code"]) == ("CANCELLED", "05")

    run(scenario())


def test_a_payment_still_confirming_whose_connection_closed_is_cancelled(switch, simulators, database_url):
    """The customer is still confirming when the switch's deadline draws near, and the terminal
    has hung up: nobody was told "in progress" (nor the RRN an inquiry needs), so it is recorded
    as a 05, which keeps no money should the customer confirm after all."""

    async def scenario():
        purchase = new_purchase("wechat", "08")  # the customer never confirms
        row = await _ended_after_hanging_up(switch, database_url, purchase)
        assert (row["state"], row["response_code"]) == ("CANCELLED", "05")

    run(scenario())


def test_an_approval_a_resend_waits_for_is_answered_there_and_kept(switch, simulators, database_url):
    """The terminal sent the purchase again on a second connection, then the first closed: the
    approval has somewhere to go, is answered there, and the money is kept."""

    async def scenario():
        purchase = new_purchase("alipay", "98")
        async with connected(switch) as second:
            first = await IsoClient.connect(switch.host, switch.port)
            sent = asyncio.ensure_future(first.request(purchase))
            await asyncio.sleep(0.5)
            resent = asyncio.ensure_future(second.request(dict(purchase)))
            await asyncio.sleep(0.3)
            await first.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await sent
            answered = await resent
        assert answered["39"] == "00"
        await asyncio.sleep(1.5)  # the resolver's time to carry out a reversal, were one owed
        row = await journal_row(database_url, answered["37"])
        assert (row["state"], row["response_code"], row["reversal_requested_at"]) == ("APPROVED", "00", None)
        assert sim_ledger(simulators, "alipay")[out_trade_no(answered["37"])]["status"] == "PAID"

    run(scenario())
