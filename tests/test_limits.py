"""Limits of a switch of its own, configured small: the channel's front-end bulkhead (past its
limit a new purchase is answered 91 at once, journaled, never sent, while an identical
retransmission of one under way still gets the original's answer), and load shedding of the switch
as a whole (91 at once before any work, recovering by itself)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import asyncpg
import pytest

from bench.traffic import payment_code, purchase
from switch.lifecycle import RESEND_LOOKUPS
from tests.conftest import run, switch_with
from tests.support import MERCHANT, RNG, STANS, TERMINAL, connected, journal_row, new_purchase, out_trade_no, sim_audit

SWITCH_IN_FLIGHT = 4  # financial requests under way in the whole switch
NOTICES_PER_S = 2  # WeChat Pay's notifications read a second


@pytest.fixture(scope="module")
def limited_switch(config_dir, database_url, simulators, tmp_path_factory):
    edits = [
        (r"(\[channels\.unionpay\]\n)", r"\1frontend_in_flight = 1\n"),
        (r"(?m)^max_in_flight = 10000$", f"max_in_flight = {SWITCH_IN_FLIGHT}"),
        (r"(\[channels\.inbank\]\n(?:.*\n)*?actor = \{ )", r"\1max_restarts = 0, "),
        # Alipay's slow purchases (..98, answered after 3 s) hold the places these tests fill. At the
        # breaker's 3 s they are slow calls too: were three still outstanding at a check for overdue
        # calls (a race a slow machine loses), Alipay's circuit would open and the next test's slow
        # purchases would be refused at once, holding nothing.
        (r"(\[channels\.alipay\]\n)", r"\1breaker = { slow_call_ms = 10000 }\n"),
        (r"(\[channels\.wechat\]\n(?:.*\n)*?)notices_per_s = 200 ", rf"\1notices_per_s = {NOTICES_PER_S} "),
        (r"(\[channels\.wechat\]\n(?:.*\n)*?)shards = 1\n", r"\1shards = 2\n"),  # notifications read in turn
    ]
    yield from switch_with(config_dir, database_url, tmp_path_factory.mktemp("limits"), "limits", edits)


def test_full_bulkhead_sheds_new_purchases_but_not_retransmissions(limited_switch, database_url, simulators):
    switch = limited_switch

    async def scenario():
        slow = new_purchase("unionpay", "98")  # holds the one place for about 6 s
        async with connected(switch) as first, connected(switch) as second:
            original = asyncio.ensure_future(first.request(slow))
            await asyncio.sleep(0.5)
            shed = await asyncio.wait_for(second.request(new_purchase("unionpay")), 5)
            held = not original.done()  # shed while the one place was still held, not queued behind it
            retransmission = asyncio.ensure_future(second.request(dict(slow)))
            other_channel = await second.request(new_purchase("wechat"))
            first_answer, again = await original, await retransmission
        assert shed["39"] == "91" and held
        assert (await journal_row(database_url, shed["37"]))["state"] == "DECLINED"
        assert sim_audit(simulators, "unionpay", out_trade_no(shed["37"])) == []  # never sent
        assert other_channel["39"] == "00"  # another channel is not affected
        assert {k: again.get(k) for k in ("37", "39")} == {k: first_answer.get(k) for k in ("37", "39")}
        assert len(sim_audit(simulators, "unionpay", out_trade_no(first_answer["37"]))) == 1

    run(scenario())


def test_over_capacity_the_switch_sheds_at_once_and_recovers(limited_switch, database_url):
    async def scenario():
        async with connected(limited_switch) as terminal, connected(limited_switch) as again:
            slow_messages = [new_purchase("alipay", "98") for _ in range(SWITCH_IN_FLIGHT)]  # 3 s each
            slow = [asyncio.ensure_future(terminal.request(m)) for m in slow_messages]
            await asyncio.sleep(0.3)
            shed = await asyncio.gather(*(terminal.request(new_purchase("ecny")) for _ in range(20)))
            under_way = not any(s.done() for s in slow)
            retransmission = await again.request(dict(slow_messages[0]))  # not shed: the original's answer
            admitted = await asyncio.gather(*slow)
            after = await terminal.request(new_purchase("ecny"))
        assert {a["39"] for a in shed} == {"91"}
        assert under_way  # answered while the slow ones were still under way, not after them
        for answer in shed:  # shed before any work: not even journaled
            assert await journal_row(database_url, answer["37"]) is None
        assert {a["39"] for a in admitted} == {"00"}
        assert (retransmission["39"], retransmission["37"]) == ("00", admitted[0]["37"])
        assert after["39"] == "00"

    run(scenario())


def _lookups(switch) -> dict[str, float]:
    """``paysw_resend_lookups_total`` by result."""
    text = switch.get("/metrics")[1]
    return {m[1]: float(m[2]) for m in re.finditer(r'(?m)^paysw_resend_lookups_total\{result="(\w+)"\} (\S+)$', text)}


def test_over_capacity_a_resend_of_a_finished_purchase_gets_its_answer_not_91(limited_switch, database_url):
    """The terminal did not hear the answer of a purchase the switch finished, and sends it again
    while the switch sheds: it must hear the approval, not 91 for a payment the channel took."""

    async def scenario():
        sent = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=10)  # its field 7: RESEND_AGE_S ago and more
        finished = purchase(TERMINAL, MERCHANT, payment_code("wechat", "00", RNG), 1234, STANS.next(TERMINAL), sent)
        async with connected(limited_switch) as terminal, connected(limited_switch) as again:
            first = await terminal.request(finished)
            slow = [
                asyncio.ensure_future(terminal.request(new_purchase("alipay", "98"))) for _ in range(SWITCH_IN_FLIGHT)
            ]
            await asyncio.sleep(0.3)
            before = await asyncio.to_thread(_lookups, limited_switch)
            newcomer = await again.request(new_purchase("wechat"))
            between = await asyncio.to_thread(_lookups, limited_switch)
            resent = await again.request(dict(finished))
            after = await asyncio.to_thread(_lookups, limited_switch)
            await asyncio.gather(*slow)
        assert first["39"] == "00"
        assert newcomer["39"] == "91"  # the switch was shedding
        assert between == before  # a new request is shed without a look-up
        assert (resent["39"], resent["37"]) == ("00", first["37"])
        assert after == {**before, "found": before.get("found", 0) + 1}

    run(scenario())


def test_over_capacity_a_resend_the_journal_cannot_look_up_in_time_is_shed_at_once(limited_switch, database_url):
    """The look-up is brief: while the journal cannot answer (here a lock holds its table), the
    resend is shed as it was before the look-up existed, rather than hold up the shedding."""

    async def scenario():
        sent = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=10)
        finished = purchase(TERMINAL, MERCHANT, payment_code("wechat", "00", RNG), 1234, STANS.next(TERMINAL), sent)
        blocker = await asyncpg.connect(database_url)
        try:
            async with connected(limited_switch) as terminal, connected(limited_switch) as again:
                assert (await terminal.request(finished))["39"] == "00"
                slow = [
                    asyncio.ensure_future(terminal.request(new_purchase("alipay", "98")))
                    for _ in range(SWITCH_IN_FLIGHT)
                ]
                await asyncio.sleep(0.3)
                before = await asyncio.to_thread(_lookups, limited_switch)
                released = asyncio.Event()

                async def hold_the_lock() -> None:
                    async with blocker.transaction():
                        await blocker.execute("LOCK TABLE txn IN ACCESS EXCLUSIVE MODE")  # reads wait behind it
                        locked.set()
                        await asyncio.sleep(2.0)
                    released.set()

                locked = asyncio.Event()
                holder = asyncio.ensure_future(hold_the_lock())
                await locked.wait()
                resent = await again.request(dict(finished))
                answered_while_locked = not released.is_set()
                await holder
                after = await asyncio.to_thread(_lookups, limited_switch)
                await asyncio.gather(*slow)
        finally:
            await blocker.close()
        assert resent["39"] == "91" and answered_while_locked
        assert after == {**before, "failed": before.get("failed", 0) + 1}

    run(scenario())


def test_over_capacity_resends_past_the_look_ups_at_once_are_shed_without_one(limited_switch, database_url):
    """At most ``RESEND_LOOKUPS`` look-ups run at once: while they wait on the journal (a lock
    holds its table), further resends are shed at once, counted busy, never queued behind them."""
    resends = RESEND_LOOKUPS + 2

    async def scenario():
        sent = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=10)
        finished = [
            purchase(TERMINAL, MERCHANT, payment_code("wechat", "00", RNG), 1234, STANS.next(TERMINAL), sent)
            for _ in range(resends)
        ]
        blocker = await asyncpg.connect(database_url)
        try:
            async with connected(limited_switch) as terminal, connected(limited_switch) as again:
                assert [(await terminal.request(f))["39"] for f in finished] == ["00"] * resends
                slow = [
                    asyncio.ensure_future(terminal.request(new_purchase("alipay", "98")))
                    for _ in range(SWITCH_IN_FLIGHT)
                ]
                await asyncio.sleep(0.3)
                before = await asyncio.to_thread(_lookups, limited_switch)
                async with blocker.transaction():
                    await blocker.execute("LOCK TABLE txn IN ACCESS EXCLUSIVE MODE")  # reads wait behind it
                    answers = await asyncio.gather(*(again.request(dict(f)) for f in finished))
                after = await asyncio.to_thread(_lookups, limited_switch)
                await asyncio.gather(*slow)
        finally:
            await blocker.close()
        assert [a["39"] for a in answers] == ["91"] * resends  # all answered while the lock held
        assert after == {
            **before,
            "failed": before.get("failed", 0) + RESEND_LOOKUPS,
            "busy": before.get("busy", 0) + resends - RESEND_LOOKUPS,
        }

    run(scenario())


def test_an_actor_ray_gave_up_on_is_restarted_by_the_operator(limited_switch):
    """With no Ray restarts left, a crashed actor stays dead: its circuit is held open (91 at once)
    until ``paysw channel restart`` starts a fresh one."""
    from switch.cli import main as cli

    operator = limited_switch.operator_options()

    def inbank() -> dict:
        return json.loads(limited_switch.get("/channels")[1])["inbank"]

    async def scenario():
        assert cli(["channel", "crash", "inbank", *operator]) == 0
        started = time.monotonic()
        while inbank()["shards"][0]["actor"] != "dead":
            assert time.monotonic() - started < 20, "the dead actor was not noticed"
            await asyncio.sleep(0.3)
        async with connected(limited_switch) as terminal:
            down = await terminal.request(new_purchase("inbank"))
            assert inbank()["circuit"] == "open"
            unread = notify(limited_switch, "inbank", b"{}")  # its actor cannot check it: not a 500
            assert cli(["channel", "restart", "inbank", *operator]) == 0
            up = await terminal.request(new_purchase("inbank"))
        assert (down["39"], up["39"]) == ("91", "00")
        assert unread[0] == 503
        assert notices_counted(limited_switch, "inbank", "unanswered") >= 1
        assert inbank()["shards"][0]["actor"] == "alive"

    run(scenario())


def notify(switch, channel: str, body: bytes) -> tuple[int, bytes, str]:
    """POST a notification as a channel would: (status, body, Retry-After)."""
    request = urllib.request.Request(f"http://127.0.0.1:{switch.merchant}/notify/{channel}", data=body)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read(), answer.headers.get("Retry-After", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Retry-After", "")


def notices_counted(switch, channel: str, result: str) -> float:
    metrics = switch.get("/metrics")[1]
    found = re.search(rf'^paysw_channel_notices_total{{channel="{channel}",result="{result}"}} (\S+)$', metrics, re.M)
    return float(found[1]) if found else 0.0


def notices_read(switch, channel: str) -> list[int]:
    """The notifications each of the channel's actors read, by its own count."""
    return [shard["notices_read"] for shard in json.loads(switch.get("/channels")[1])[channel]["shards"]]


def test_past_a_channels_notices_per_s_notifications_are_answered_503_unread(limited_switch):
    """Anyone may post to ``/notify``, and each notification read costs its channel's actor a
    signature check beside the channel's payments: past ``notices_per_s`` (2 here, a second's
    worth at once) they are answered 503 and never reach the actor, and the channel sends them
    again. Another channel's are read meanwhile, and WeChat Pay's again a second later."""
    junk = b"<xml><return_code><![CDATA[SUCCESS]]></return_code><sign>00</sign></xml>"
    before = {result: notices_counted(limited_switch, "wechat", result) for result in ("refused", "shed")}
    actor_before = notices_read(limited_switch, "wechat")
    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: notify(limited_switch, "wechat", junk), range(60)))
    took = time.monotonic() - started
    read = [a for a in answers if a[0] == 200]
    unread = [a for a in answers if a[0] == 503]
    assert len(read) + len(unread) == 60, {a[0] for a in answers}
    assert all(b"FAIL" in body for _, body, _ in read)  # read, and refused: the signature is junk
    assert {(body, retry) for _, body, retry in unread} <= {(b"not read: send it again", "1")}
    assert 1 <= len(read) <= NOTICES_PER_S * (1 + took) + 1, (len(read), took)  # a second's worth, then 2 a second
    assert notices_counted(limited_switch, "wechat", "refused") == before["refused"] + len(read)
    assert notices_counted(limited_switch, "wechat", "shed") == before["shed"] + len(unread)
    deadline = time.monotonic() + 10  # the actors' own counts, as their front end's watcher collects them each second
    while sum(actor_read := notices_read(limited_switch, "wechat")) < sum(actor_before) + len(read):
        assert time.monotonic() < deadline, (actor_read, actor_before, len(read))
        time.sleep(0.3)
    assert sum(actor_read) == sum(actor_before) + len(read)  # the 503s were never read
    by_shard = [after - before for before, after in zip(actor_before, actor_read, strict=True)]
    assert min(by_shard) >= len(read) // 2, by_shard  # the two shards in turn
    assert [notify(limited_switch, "alipay", b"sign=00")[0] for _ in range(5)] == [200] * 5  # its own quota
    time.sleep(1.2)
    assert notify(limited_switch, "wechat", junk)[0] == 200


def test_no_log_line_per_transaction_at_info(limited_switch):
    """At INFO (the default), traffic, refusals, reversals and resolution leave no line per
    transaction; the metrics count them instead. Every line is one JSON object."""
    from bench.traffic import reversal

    async def scenario():
        async with connected(limited_switch) as terminal:
            for _ in range(20):
                await terminal.request(new_purchase("ecny"))
            bad = new_purchase("ecny") | {"4": "00000000000A"}
            assert (await terminal.request(bad))["39"] in {"13", "30"}
            paid = new_purchase("ecny")
            await terminal.request(paid)
            from tests.support import STANS, TERMINAL

            assert (await terminal.request(reversal(paid, STANS.next(TERMINAL))))["39"] == "00"
        await asyncio.sleep(3)  # the resolver carries the reversal out

    run(scenario())
    lines = [line for line in limited_switch.log_path.read_text().splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]
    per_transaction = [r for r in records if r["level"] == "INFO" and ("rrn" in r or "stan" in r)]
    assert not per_transaction, per_transaction[:3]
