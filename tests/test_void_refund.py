"""Voids and refunds: each a transaction of its own, found by the purchase's RRN, carried out at
the purchase's channel in its own API, applied at most once whatever is retried or raced."""

from __future__ import annotations

import asyncio
import datetime as dt
import re

from bench.client import IsoClient
from bench.traffic import refund, void
from tests.conftest import ALIPAY_REFUND_DAYS, run
from tests.support import (
    STANS,
    connected,
    journal_row,
    new_purchase,
    out_trade_no,
    reading_nothing,
    received_ago,
    row_after_refusals,
    sim_ledger,
    wait_for_state,
)


def stan(request: dict[str, str]) -> str:
    return STANS.next(request["41"])


def test_void_of_a_same_day_purchase(switch, simulators, database_url):
    async def scenario():
        purchase = new_purchase("alipay", amount=2500)
        async with connected(switch) as client:
            paid = await client.request(purchase)
            void_request = void(purchase, paid["37"], stan(purchase))
            voided = await client.request(void_request)
            again = await client.request(dict(void_request))  # resent: the same answer
            second = await client.request(void(purchase, paid["37"], stan(purchase)))  # a new void of it
            resent = await client.request(dict(purchase))  # the purchase resent: its money went back
        assert paid["39"] == "00"
        assert (resent["39"], resent["37"]) == ("05", paid["37"])
        assert (voided["39"], len(voided["38"])) == ("00", 6) and voided["37"] != paid["37"]
        assert (again["39"], again["37"]) == ("00", voided["37"])
        assert second["39"] == "12"  # already voided
        original = await journal_row(database_url, paid["37"])
        # Voided: the whole amount went back, and no refund (refunded_fen counts refunds alone).
        assert (original["state"], original["reserved_fen"], original["refunded_fen"]) == ("VOIDED", 0, 0)
        row = await journal_row(database_url, voided["37"])
        assert (row["txn_type"], row["state"], row["original_rrn"], row["amount_fen"]) == (
            "void",
            "APPROVED",
            paid["37"],
            2500,
        )
        assert sim_ledger(simulators, "alipay")[out_trade_no(paid["37"])]["status"] == "REVERSED"

    run(scenario())


def test_voids_that_are_not_allowed(switch):
    async def scenario():
        paid_request, declined_request = new_purchase("wechat", amount=700), new_purchase("wechat", "51")
        async with connected(switch) as client:
            paid = await client.request(paid_request)
            declined = await client.request(declined_request)
            wrong_amount = await client.request(
                void(paid_request, paid["37"], stan(paid_request)) | {"4": f"{699:012d}"}
            )
            not_approved = await client.request(void(declined_request, declined["37"], stan(declined_request)))
            unknown = await client.request(void(paid_request, "999999999998", stan(paid_request)))
        assert (wrong_amount["39"], not_approved["39"], unknown["39"]) == ("64", "12", "25")

    run(scenario())


def test_partial_refunds_up_to_the_original_amount(switch, simulators, database_url):
    async def scenario():
        purchase = new_purchase("unionpay", amount=1000)
        async with connected(switch) as client:
            paid = await client.request(purchase)
            first = await client.request(refund(purchase, paid["37"], 600, stan(purchase)))
            over = await client.request(refund(purchase, paid["37"], 401, stan(purchase)))
            rest_request = refund(purchase, paid["37"], 400, stan(purchase))
            rest = await client.request(rest_request)
            rest_again = await client.request(dict(rest_request))
            void_after = await client.request(void(purchase, paid["37"], stan(purchase)))
        assert [a["39"] for a in (first, over, rest, rest_again, void_after)] == ["00", "64", "00", "00", "12"]
        assert rest_again["37"] == rest["37"]
        original = await journal_row(database_url, paid["37"])
        assert (original["state"], original["refunded_fen"]) == ("APPROVED", 1000)
        entry = sim_ledger(simulators, "unionpay")[out_trade_no(paid["37"])]
        assert (entry["status"], entry["refunded_fen"]) == ("PAID", 1000)  # refunded once, not twice

    run(scenario())


def test_refund_of_a_failed_purchase_is_12(switch):
    async def scenario():
        purchase = new_purchase("inbank", "05")
        async with connected(switch) as client:
            failed = await client.request(purchase)
            answer = await client.request(refund(purchase, failed["37"], 100, stan(purchase)))
        assert (failed["39"], answer["39"]) == ("05", "12")

    run(scenario())


def window_refusals(switch, channel: str) -> float:
    """``paysw_refused_total`` of ``channel``'s refunds past its refund window."""
    _, body = switch.get("/metrics")
    found = re.search(rf'(?m)^paysw_refused_total{{channel="{channel}",reason="REFUND_WINDOW"}} (\S+)$', body)
    return float(found.group(1)) if found else 0.0


def test_a_refund_past_its_channels_refund_window_is_12_and_never_sent(switch, simulators, database_url):
    """Each channel's refund window (``refund_days``) is its own: WeChat Pay takes refunds for a
    year after the payment (the default), the tests' Alipay contract for 90 days. A refund later is
    refused by the switch, reserving nothing, and never reaches the channel; one inside is carried
    out."""

    async def scenario():
        aged = {
            ("wechat", dt.timedelta(days=365, hours=1)): "12",
            ("alipay", dt.timedelta(days=ALIPAY_REFUND_DAYS, hours=1)): "12",
            ("wechat", dt.timedelta(days=364)): "00",
            ("alipay", dt.timedelta(days=ALIPAY_REFUND_DAYS - 1)): "00",
        }
        before = {channel: window_refusals(switch, channel) for channel in ("wechat", "alipay")}
        answers = {}
        async with connected(switch) as client:
            for channel, ago in aged:
                purchase = new_purchase(channel, amount=800)
                paid = await client.request(purchase)
                assert paid["39"] == "00"
                await received_ago(database_url, paid["37"], ago)
                answered = await client.request(refund(purchase, paid["37"], 100, stan(purchase)))
                answers[channel, ago] = (paid["37"], answered["39"])
        assert {key: code for key, (_, code) in answers.items()} == aged
        for (channel, _), (rrn, code) in answers.items():
            original = await journal_row(database_url, rrn)
            taken = 0 if code == "12" else 100
            assert (original["state"], original["reserved_fen"], original["refunded_fen"]) == ("APPROVED", 0, taken)
            assert sim_ledger(simulators, channel)[out_trade_no(rrn)]["refunded_fen"] == taken  # 12: never sent
        assert {channel: window_refusals(switch, channel) - n for channel, n in before.items()} == {
            "wechat": 1,
            "alipay": 1,
        }

    run(scenario())


def test_racing_refunds_never_exceed_the_original(switch, simulators, database_url):
    async def scenario():
        purchase = new_purchase("ecny", amount=1000)
        async with connected(switch) as client:
            paid = await client.request(purchase)
        clients = [await IsoClient.connect(switch.host, switch.port) for _ in range(5)]
        try:
            answers = await asyncio.gather(
                *(c.request(refund(purchase, paid["37"], 400, stan(purchase))) for c in clients)
            )
        finally:
            for c in clients:
                await c.close()
        assert sorted(a["39"] for a in answers) == ["00", "00", "64", "64", "64"]
        assert (await journal_row(database_url, paid["37"]))["refunded_fen"] == 800
        assert sim_ledger(simulators, "ecny")[out_trade_no(paid["37"])]["refunded_fen"] == 800

    run(scenario())


def test_refund_with_an_unknown_outcome_is_completed_once(switch, simulators, database_url):
    async def scenario():
        purchase = new_purchase("wechat", "06", amount=900)  # the channel garbles its first refund answer
        async with connected(switch) as client:
            paid = await client.request(purchase)
            answer = await client.request(refund(purchase, paid["37"], 300, stan(purchase)))
        assert (paid["39"], answer["39"]) == ("00", "09")  # in progress
        await wait_for_state(database_url, answer["37"], {"APPROVED"})
        entry = sim_ledger(simulators, "wechat")[out_trade_no(paid["37"])]
        assert entry["refunded_fen"] == 300  # sent again, refunded once
        assert (await journal_row(database_url, paid["37"]))["refunded_fen"] == 300

    run(scenario())


def test_a_refund_retried_while_the_channel_reads_no_request_is_completed_once(switch, simulators, ports, database_url):
    """The channel refunded but garbled its answer (09, in progress); the resolver's retries are
    then refused unread (our signature no longer accepted, say). A refusal of the retry says
    nothing of the first attempt: the refund stays in progress, never recorded refused while the
    channel has paid it back, and is completed, once, when the channel reads requests again."""

    async def scenario():
        purchase = new_purchase("wechat", "06", amount=900)  # the channel garbles its first refund answer
        async with connected(switch) as client:
            paid = await client.request(purchase)
            answer = await client.request(refund(purchase, paid["37"], 300, stan(purchase)))
        assert (paid["39"], answer["39"]) == ("00", "09")
        with reading_nothing(ports, "wechat"):  # before the resolver's first retry, RETRY_S later
            meanwhile = await row_after_refusals(database_url, simulators, "wechat", answer["37"])
        assert meanwhile["state"] == "UNKNOWN"
        settled = await wait_for_state(database_url, answer["37"], {"APPROVED"}, timeout=45)
        return paid, settled

    paid, settled = run(scenario())
    assert settled["response_code"] == "00"
    assert sim_ledger(simulators, "wechat")[out_trade_no(paid["37"])]["refunded_fen"] == 300  # refunded once
    assert run(journal_row(database_url, paid["37"]))["refunded_fen"] == 300


def test_void_with_an_unknown_outcome_is_completed_once(switch, simulators, database_url):
    async def scenario():
        purchase = new_purchase("alipay", "06", amount=450)
        async with connected(switch) as client:
            paid = await client.request(purchase)
            answer = await client.request(void(purchase, paid["37"], stan(purchase)))
        assert answer["39"] == "09"
        await wait_for_state(database_url, answer["37"], {"APPROVED"})
        assert (await journal_row(database_url, paid["37"]))["state"] == "VOIDED"
        assert sim_ledger(simulators, "alipay")[out_trade_no(paid["37"])]["status"] == "REVERSED"

    run(scenario())


def test_money_goes_back_once_between_reversals_and_refunds(switch, simulators, database_url):
    """A reversed purchase takes no refund, and a partly refunded one takes no reversal: either
    would return the same money twice."""

    async def scenario():
        from bench.traffic import reversal

        reversed_purchase, refunded_purchase = new_purchase("wechat", amount=800), new_purchase("alipay", amount=800)
        async with connected(switch) as client:
            first = await client.request(reversed_purchase)
            assert (await client.request(reversal(reversed_purchase, stan(reversed_purchase))))["39"] == "00"
            refund_after_reversal = await client.request(
                refund(reversed_purchase, first["37"], 100, stan(reversed_purchase))
            )
            second = await client.request(refunded_purchase)
            assert (await client.request(refund(refunded_purchase, second["37"], 300, stan(refunded_purchase))))[
                "39"
            ] == "00"
            reversal_after_refund = await client.request(reversal(refunded_purchase, stan(refunded_purchase)))
        assert refund_after_reversal["39"] == "12"
        assert reversal_after_refund["39"] == "12"
        await wait_for_state(database_url, first["37"], {"REVERSED"})
        row = await journal_row(database_url, second["37"])
        assert (row["state"], row["refunded_fen"], row["reversal_requested_at"]) == ("APPROVED", 300, None)
        entry = sim_ledger(simulators, "alipay")[out_trade_no(second["37"])]
        assert (entry["status"], entry["refunded_fen"]) == ("PAID", 300)

    run(scenario())


def test_a_refund_whose_outcome_could_not_be_recorded_is_in_progress_and_completed_once(
    switch, simulators, database_url
):
    """The channel refunded, but the journal could not record it: the merchant is told "in
    progress" (09), not a failure it would answer by refunding again under a new STAN, and the
    resolver completes the refund from the channel's side, once."""
    import asyncpg

    async def scenario():
        async with connected(switch) as terminal:
            paid_request = new_purchase("inbank", amount=5000)
            paid = await terminal.request(paid_request)
            assert paid["39"] == "00"
            conn = await asyncpg.connect(database_url)
            try:  # the journal refuses to record the outcome of refunds of 7.77 yuan, for now
                await conn.execute(
                    "ALTER TABLE txn ADD CONSTRAINT test_no_refund_outcome "
                    "CHECK (txn_type <> 'refund' OR amount_fen <> 777 OR state = 'RECEIVED')"
                )
                try:
                    back = await terminal.request(refund(paid_request, paid["37"], 777, STANS.next(paid_request["41"])))
                finally:
                    await conn.execute("ALTER TABLE txn DROP CONSTRAINT test_no_refund_outcome")
            finally:
                await conn.close()
        settled = await wait_for_state(database_url, back["37"], {"APPROVED"}, timeout=40)
        purchase = await journal_row(database_url, paid["37"])
        return back, settled, purchase, paid

    back, settled, purchase, paid = run(scenario())
    assert back["39"] == "09"
    assert settled["state"] == "APPROVED"
    assert (purchase["reserved_fen"], purchase["refunded_fen"]) == (0, 777)
    assert sim_ledger(simulators, "inbank")[out_trade_no(paid["37"])]["refunded_fen"] == 777  # refunded once
