"""Every transaction ends in exactly one known outcome: payments the customer is still
confirming, unknown outcomes and channel timeouts are resolved against the channel, and the
journal ends up agreeing with the channel's own ledger."""

from __future__ import annotations

import pytest

from bench.traffic import CODE_SHAPES, inquiry
from tests.conftest import PAYMENT_WINDOW_MS, run
from tests.support import (
    CHANNEL_ONLY_PREFIX,
    MERCHANT,
    STANS,
    TERMINAL,
    connected,
    journal_row,
    new_purchase,
    out_trade_no,
    reading_nothing,
    row_after_refusals,
    sim_ledger,
    wait_for_state,
)


@pytest.mark.parametrize("channel", list(CODE_SHAPES))
def test_unknown_outcome_is_reversed_at_the_channel(switch, simulators, database_url, channel):
    """The channel charged but answered "system error": the terminal was told 91, so the money
    goes back."""

    async def scenario():
        async with connected(switch) as client:
            answer = await client.request(new_purchase(channel, "96"))
        assert answer["39"] == "91"
        row = await wait_for_state(database_url, answer["37"], {"CANCELLED"})
        assert row["response_code"] == "91"
        assert sim_ledger(simulators, channel)[out_trade_no(answer["37"])]["status"] == "REVERSED"

    run(scenario())


def test_channel_timeout_after_charging_is_reversed(switch, simulators, database_url):
    async def scenario():
        async with connected(switch) as client:
            answer = await client.request(new_purchase("wechat", "98"))  # answered after the channel timeout
        assert answer["39"] == "91"
        await wait_for_state(database_url, answer["37"], {"CANCELLED"})
        assert sim_ledger(simulators, "wechat")[out_trade_no(answer["37"])]["status"] == "REVERSED"

    run(scenario())


@pytest.mark.parametrize("channel", list(CODE_SHAPES))
def test_customer_confirming_within_the_deadline_is_approved(switch, simulators, database_url, channel):
    async def scenario():
        async with connected(switch) as client:
            answer = await client.request(new_purchase(channel, "09"))
        assert answer["39"] == "00" and len(answer["38"]) == 6
        row = await journal_row(database_url, answer["37"])
        assert (row["state"], row["response_code"]) == ("APPROVED", "00")
        assert sim_ledger(simulators, channel)[out_trade_no(answer["37"])]["status"] == "PAID"

    run(scenario())


@pytest.mark.parametrize("channel", ["wechat", "alipay"])
def test_customer_who_never_confirms_is_cancelled_when_the_window_closes(switch, simulators, database_url, channel):
    async def scenario():
        request = new_purchase(channel, "08")
        async with connected(switch) as client:
            answer = await client.request(request)
        assert answer["39"] == "09"
        row = await wait_for_state(database_url, answer["37"], {"CANCELLED"}, timeout=PAYMENT_WINDOW_MS / 1000 + 15)
        assert row["response_code"] == "05"
        assert sim_ledger(simulators, channel)[out_trade_no(answer["37"])]["status"] == "CLOSED"
        async with connected(switch) as client:  # the terminal resends: it now learns the outcome
            again = await client.request(dict(request))
        assert (again["39"], again["37"]) == ("05", answer["37"])

    run(scenario())


def test_a_query_refused_unread_leaves_the_payment_open_until_the_channel_reads_again(
    switch, simulators, ports, database_url
):
    """The channel charged and the switch gave up waiting (UNKNOWN); then the channel refuses every
    request unread (our signature no longer accepted, say). A query so refused says nothing about
    the order: the payment stays open, never recorded closed while the channel holds the money.
    Once the channel reads requests again, the resolver returns the money."""
    import asyncio

    async def scenario():
        async with connected(switch) as client:
            paying = asyncio.ensure_future(client.request(new_purchase("wechat", "98")))  # charged, answered late
            await asyncio.sleep(0.3)
            with reading_nothing(ports, "wechat"):
                answer = await paying
                assert answer["39"] == "91"
                meanwhile = await row_after_refusals(database_url, simulators, "wechat", answer["37"])
        assert (meanwhile["state"], meanwhile["response_code"]) == ("UNKNOWN", "91")
        settled = await wait_for_state(database_url, answer["37"], {"CANCELLED"}, timeout=45)
        return answer, settled

    answer, settled = run(scenario())
    assert settled["response_code"] == "91"
    assert sim_ledger(simulators, "wechat")[out_trade_no(answer["37"])]["status"] == "REVERSED"


def test_journal_agrees_with_every_channel_ledger(switch, simulators, database_url):
    """After all the tests above: every order a channel kept money for is APPROVED in the journal,
    and every APPROVED transaction is money the channel kept."""

    async def scenario():
        import asyncio

        import asyncpg

        conn = await asyncpg.connect(database_url)
        try:
            for _ in range(100):  # let the resolver finish what is open
                if not await conn.fetchval(
                    "SELECT count(*) FROM txn WHERE state IN ('RECEIVED','PENDING','UNKNOWN') AND channel = ANY($1)",
                    list(CODE_SHAPES),
                ):
                    break
                await asyncio.sleep(0.3)
            rows = await conn.fetch(
                "SELECT out_trade_no, channel, state FROM txn WHERE channel = ANY($1)", list(CODE_SHAPES)
            )
        finally:
            await conn.close()
        journal = {(r["channel"], r["out_trade_no"]): r["state"] for r in rows}
        for channel in CODE_SHAPES:
            for order, entry in sim_ledger(simulators, channel).items():
                if order.startswith(CHANNEL_ONLY_PREFIX):
                    continue
                state = journal.get((channel, order))
                assert state is not None, f"{channel} has order {order} the journal does not"
                assert (entry["status"] == "PAID") == (state == "APPROVED"), f"{channel} {order}: {entry} vs {state}"
        open_rows = [k for k, v in journal.items() if v in ("RECEIVED", "PENDING", "UNKNOWN")]
        assert not open_rows, f"left open: {open_rows[:5]}"

    run(scenario())


def test_inquiry_reports_the_original_state_and_amount(switch, database_url):

    async def scenario():
        async with connected(switch) as client:
            paid = await client.request(new_purchase("alipay", amount=4321))
            declined = await client.request(new_purchase("ecny", "51"))
            paying = await client.request(new_purchase("wechat", "08"))
            asked = {}
            for name, rrn in (
                ("paid", paid["37"]),
                ("declined", declined["37"]),
                ("paying", paying["37"]),
                ("unknown", "999999999999"),
            ):
                asked[name] = await client.request(inquiry(TERMINAL, MERCHANT, rrn, STANS.next(TERMINAL)))
            other_merchant = await client.request(
                inquiry("K0000001", "898310048990002", paid["37"], STANS.next("K0000001"))
            )
            unknown_terminal = await client.request(inquiry("X0000009", MERCHANT, paid["37"], STANS.next("X0000009")))
        assert (asked["paid"]["t"], asked["paid"]["39"], asked["paid"]["4"]) == ("0110", "00", f"{4321:012d}")
        assert asked["declined"]["39"] == "05"
        assert asked["paying"]["39"] == "09"
        assert asked["unknown"]["39"] == "25"
        assert other_merchant["39"] == "25"  # another merchant's transaction is not found
        assert unknown_terminal["39"] == "03"
        assert all(len(a["37"]) == 12 and a["37"] != paid["37"] for a in asked.values())
        await wait_for_state(database_url, paying["37"], {"CANCELLED"}, timeout=PAYMENT_WINDOW_MS / 1000 + 15)
        async with connected(switch) as client:
            later = await client.request(inquiry(TERMINAL, MERCHANT, paying["37"], STANS.next(TERMINAL)))
        assert later["39"] == "05"  # the window closed unpaid: closed

    run(scenario())


def test_late_channel_answer_is_journaled_and_settled_once(switch, simulators, database_url):
    """The channel answers after the switch's deadline: the terminal got 91, the late answer is
    kept against its transaction, and the resolver returns the money (one cancel, no other)."""

    async def scenario():
        import asyncio

        import asyncpg

        async with connected(switch) as client:
            answer = await client.request(new_purchase("unionpay", "98"))  # charged, answered after 6 s
        assert answer["39"] == "91"
        await wait_for_state(database_url, answer["37"], {"CANCELLED"}, timeout=30)
        row = await journal_row(database_url, answer["37"])
        conn = await asyncpg.connect(database_url)
        try:
            for _ in range(40):
                late = await conn.fetch(
                    "SELECT * FROM late_answer WHERE tx_date = $1 AND terminal_id = $2 "
                    "AND stan = $3 AND transmitted = $4",
                    row["tx_date"],
                    row["terminal_id"],
                    row["stan"],
                    row["transmitted"],
                )
                if late:
                    break
                await asyncio.sleep(0.25)
        finally:
            await conn.close()
        assert [(r["op"], r["outcome"]) for r in late] == [("pay", "APPROVED")]
        assert sim_ledger(simulators, "unionpay")[out_trade_no(answer["37"])]["status"] == "REVERSED"

    run(scenario())


@pytest.mark.parametrize("channel", ["wechat", "unionpay"])
def test_dropped_answer_is_unknown_and_the_money_goes_back(switch, simulators, database_url, channel):
    async def scenario():
        async with connected(switch) as client:
            answer = await client.request(new_purchase(channel, "03"))  # charged; the connection drops
        assert answer["39"] == "91"
        await wait_for_state(database_url, answer["37"], {"CANCELLED"})
        assert sim_ledger(simulators, channel)[out_trade_no(answer["37"])]["status"] == "REVERSED"

    run(scenario())


def test_a_purchase_a_resolver_took_before_its_answer_was_written_is_never_told_approved(
    switch, simulators, database_url
):
    """The front end's commit of an approval is held up past its deadline (here: the database
    backend of its outcome writer is stopped). A resolver takes the purchase, reads that nobody
    was told anything, and cancels the payment at the channel. The front end's approval, written
    after the take, must not stand: the terminal is told 09 (ask again), or the resolver's 05 if
    that landed first, never 00; the purchase ends CANCELLED, and an inquiry says so. (Before: the
    approval was written after the cancel, the terminal told 00, the resolver's cancel moved
    nothing, and the money was gone.)"""

    async def scenario():
        import asyncio
        import os
        import signal

        import asyncpg

        async with connected(switch) as client:  # the writer's connection is fresh (the pool drops idle ones)
            assert (await client.request(new_purchase("inbank", "00")))["39"] == "00"
        conn = await asyncpg.connect(database_url)
        named = f"paysw outcome {switch.process.pid}"
        backends = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE application_name = $1", named)
        writers = [r["pid"] for r in backends]
        assert writers, "the switch's outcome writer has no database backend named as its"
        request = new_purchase("inbank", "00")
        loop = asyncio.get_running_loop()
        try:
            while await conn.fetchval(  # stopped between statements, never holding a lock
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1) AND state <> 'idle'", writers
            ):
                await asyncio.sleep(0.05)
            for pid in writers:
                os.kill(pid, signal.SIGSTOP)
            async with connected(switch) as client:
                answering = asyncio.ensure_future(client.request(request, timeout=60))
                deadline = loop.time() + 25  # the stopped write's own timeout is 30 s
                while True:  # until the resolver has cancelled the payment at the channel
                    row = await conn.fetchrow(
                        "SELECT rrn, out_trade_no FROM txn WHERE terminal_id = $1 AND stan = $2",
                        request["41"],
                        request["11"],
                    )
                    ledger = sim_ledger(simulators, "inbank")
                    if row and ledger.get(row["out_trade_no"], {}).get("status") == "REVERSED":
                        break
                    assert loop.time() < deadline, "the resolver never cancelled the payment"
                    await asyncio.sleep(0.2)
                assert not answering.done()  # the front end is still writing its answer
                for pid in writers:
                    os.kill(pid, signal.SIGCONT)
                answer = await answering
        finally:
            for pid in writers:
                os.kill(pid, signal.SIGCONT)
            await conn.close()
        assert answer["39"] in ("09", "05"), answer["39"]  # not 00: the money went back
        overtaken = [line for line in switch.get("/metrics")[1].splitlines()
                     if line.startswith('paysw_answers_overtaken_total{channel="inbank"}')]  # fmt: skip
        assert overtaken and float(overtaken[0].split()[-1]) >= 1, overtaken
        await wait_for_state(database_url, row["rrn"], {"CANCELLED"})
        async with connected(switch) as client:
            asked = await client.request(inquiry(TERMINAL, MERCHANT, row["rrn"], STANS.next(TERMINAL)))
        assert asked["39"] == "05", asked["39"]  # declined: nothing was kept

    run(scenario())


def test_an_approval_that_cannot_be_recorded_is_answered_09_and_its_money_returned(switch, simulators, database_url):
    """The channel approves, but the journal refuses the outcome (here: a trigger of the test's that
    fails this one purchase's move). The terminal is told 09 (ask again), never 00 with nothing
    recorded; the row stays RECEIVED, told nothing, and the resolver, once its deadline is past,
    finds the payment and returns it. An inquiry then says 05."""

    async def scenario():
        import uuid

        import asyncpg

        request = new_purchase("alipay", "00")
        name = f"refuse_{uuid.uuid4().hex[:8]}"
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute("SET lock_timeout = '10s'")  # (its trigger locks the journal's rows a moment)
            await conn.execute(
                f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF NEW.terminal_id = '{request['41']}' AND NEW.stan = '{request['11']}' "
                f"AND NEW.transmitted = '{request['7']}' AND NEW.state <> 'RECEIVED' "
                "THEN RAISE EXCEPTION 'the test refuses this outcome'; END IF; RETURN NEW; END $$"
            )
            await conn.execute(f"CREATE TRIGGER {name} BEFORE UPDATE ON txn FOR EACH ROW EXECUTE FUNCTION {name}()")
            try:
                async with connected(switch) as client:
                    answer = await client.request(request)
            finally:
                await conn.execute(f"DROP FUNCTION IF EXISTS {name}() CASCADE")  # and its trigger
        finally:
            await conn.close()
        assert answer["39"] == "09", answer["39"]
        row = await journal_row(database_url, answer["37"])
        assert (row["state"], row["response_code"], row["checks"]) == ("RECEIVED", None, 0)
        assert sim_ledger(simulators, "alipay")[out_trade_no(answer["37"])]["status"] == "PAID"
        await wait_for_state(database_url, answer["37"], {"CANCELLED"}, timeout=30)
        assert sim_ledger(simulators, "alipay")[out_trade_no(answer["37"])]["status"] == "REVERSED"
        async with connected(switch) as client:
            asked = await client.request(inquiry(TERMINAL, MERCHANT, answer["37"], STANS.next(TERMINAL)))
        assert asked["39"] == "05", asked["39"]

    run(scenario())
