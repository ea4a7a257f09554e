"""One channel's failure never starves another: each fault is injected into one channel's simulator
at run time, while the other channels carry traffic; the sick channel's circuit opens (91 at
once, nothing sent), nothing is lost, and it recovers by itself once the fault clears."""

from __future__ import annotations

import asyncio
import json
import re
import time

import pytest

from bench.simulators.control import set_fault
from bench.simulators.faults import NO_FAULT, Fault
from switch.operator import request as admin_request
from tests.conftest import DEADLINE_MS, WECHAT_TIMEOUT_MS, run
from tests.support import connected, journal_row, new_purchase, out_trade_no, sim_audit, sim_ledger, wait_for_state

OPEN_FINAL = {"APPROVED", "DECLINED", "CANCELLED", "REVERSED"}
CONSECUTIVE_FAILURES = 3  # the demo configuration's breaker: this many failing in a row open a quiet circuit


def fault(ports, channel: str, **settings) -> None:
    set_fault(f"127.0.0.1:{ports.controls[channel]}", Fault(**settings) if settings else NO_FAULT)


def channels(switch) -> dict:
    status, body = switch.get("/channels")
    assert status == 200, body
    return json.loads(body)


def metric(switch, name: str) -> float:
    _, body = switch.get("/metrics")
    match = re.search(rf"(?m)^{name} (\S+)$", body)
    assert match, f"no metric {name}"
    return float(match.group(1))


async def wait_for_circuit(switch, channel: str, state: str, timeout: float = 15.0) -> float:
    started = time.monotonic()
    while channels(switch)[channel]["circuit"] != state:
        assert time.monotonic() - started < timeout, f"{channel}'s circuit not {state} after {timeout}s"
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def timed(client, message) -> tuple[dict, float]:
    started = time.monotonic()
    answer = await client.request(message)
    return answer, time.monotonic() - started


async def wait_until_approved(client, channel: str, timeout: float) -> float:
    """Seconds until a fresh purchase on ``channel`` is approved again."""
    started = time.monotonic()
    while (await client.request(new_purchase(channel)))["39"] != "00":
        assert time.monotonic() - started < timeout, f"{channel} not approving {timeout}s after the fault cleared"
        await asyncio.sleep(0.2)
    return time.monotonic() - started


@pytest.fixture
def healthy_afterwards(switch, ports):
    """Whatever a test does to a channel, the next test finds every channel healthy."""
    yield
    for name in ports.controls:
        fault(ports, name)
    for name in ports.controls:
        admin_request(f"127.0.0.1:{switch.admin}", f"/channels/{name}/close-circuit", switch.token, post=True)


def test_a_hung_channel_costs_the_others_nothing(switch, ports, database_url, healthy_afterwards):
    async def scenario():
        tasks_before = metric(switch, "paysw_event_loop_tasks")
        memory_before = metric(switch, "process_resident_memory_bytes")
        fault(ports, "wechat", hang=True)
        async with connected(switch) as terminal:
            hung = [asyncio.ensure_future(timed(terminal, new_purchase("wechat"))) for _ in range(40)]
            await asyncio.sleep(0.2)
            # Fewer at once than Alipay's connections: a burst past its pool would wait for a free
            # connection (91 past queue_wait_ms on a slow machine), which is not the hang's doing.
            at_once = asyncio.Semaphore(16)

            async def other() -> tuple[dict, float]:
                async with at_once:
                    return await timed(terminal, new_purchase("alipay"))

            others = await asyncio.gather(*(other() for _ in range(100)))
            hung_answers = await asyncio.gather(*hung)
            # Calls of a hung channel fail (time out): its circuit opens; new purchases get 91 at
            # once and are never sent.
            await wait_for_circuit(switch, "wechat", "open")
            refused = await asyncio.gather(*(timed(terminal, new_purchase("wechat")) for _ in range(20)))
            fault(ports, "wechat")
            recovered_in = await wait_until_approved(terminal, "wechat", timeout=10)
        refusals = [(a["39"], (await journal_row(database_url, a["37"]) or {}).get("channel_code")) for a, _ in others]
        assert [code for code, _ in refusals] == ["00"] * 100, [r for r in refusals if r[0] != "00"]
        # WeChat's calls wait its timeout before failing: an Alipay purchase that waited behind one
        # would take that long at least.
        assert max(seconds for _, seconds in others) < WECHAT_TIMEOUT_MS / 1000
        assert all(a["39"] == "91" and seconds < 5.0 for a, seconds in hung_answers)  # within the deadline
        assert all(a["39"] == "91" and seconds < 0.5 for a, seconds in refused)
        for answer, _ in refused:
            row = await journal_row(database_url, answer["37"])
            assert (row["state"], row["channel_code"]) == ("DECLINED", "CIRCUIT_OPEN")
            assert sim_audit_is_empty(ports, "wechat", answer["37"])
        assert recovered_in < 10
        # The hung payments never reached the channel's books: the resolver closes them.
        for answer, _ in hung_answers:
            row = await wait_for_state(database_url, answer["37"], {"CANCELLED", "DECLINED"}, timeout=30)
            assert row["response_code"] == "91"
        # Memory and tasks come back down: nothing piles up behind the hung channel.
        assert metric(switch, "paysw_event_loop_tasks") <= tasks_before + 20
        assert metric(switch, "process_resident_memory_bytes") < memory_before + 64 * 2**20

    run(scenario())


def test_a_channel_silent_past_the_deadline_is_answered_by_the_front_end_at_the_deadline(
    switch, ports, database_url, healthy_afterwards
):
    """Alipay's own timeout (10 s) is past the terminal's deadline (5 s): the front end does not
    wait for the actor, it answers 91 by the deadline and journals the call UNKNOWN (DEADLINE)
    for the resolver to settle from the channel's side."""

    async def scenario():
        fault(ports, "alipay", hang=True)
        try:
            async with connected(switch) as terminal:
                answer, seconds = await timed(terminal, new_purchase("alipay"))
        finally:
            fault(ports, "alipay")
        # At the deadline (its calls end ANSWER_MARGIN_S before it, then the outcome is recorded),
        # never at the actor's 10 s: a second's slack for a loaded machine, half the difference.
        assert answer["39"] == "91" and seconds < DEADLINE_MS / 1000 + 1.0
        row = await journal_row(database_url, answer["37"])
        assert row["channel_code"] == "DEADLINE"

    run(scenario())


def test_a_hung_channel_at_a_quiet_till_costs_only_the_first_customers_the_timeout(
    switch, ports, database_url, healthy_afterwards
):
    """A small bank at night: payments one or two at a time never fill the breaker's window, yet
    once a few customers have waited out the hung channel's timeout, the next get 91 at once."""
    timeout_s = WECHAT_TIMEOUT_MS / 1000

    async def scenario():
        fault(ports, "wechat", hang=True)
        hung, others = [], []
        async with connected(switch) as till:
            for _ in range(CONSECUTIVE_FAILURES + 3):  # one WeChat Pay customer at a time, an Alipay one beside
                answer, other = await asyncio.gather(
                    timed(till, new_purchase("wechat")), till.request(new_purchase("alipay"))
                )
                hung.append(answer)
                others.append(other)
                await asyncio.sleep(0.2)
            fault(ports, "wechat")
            recovered_in = await wait_until_approved(till, "wechat", timeout=15)
            started = time.monotonic()
            while channels(switch)["wechat"]["circuit"] != "closed":  # the probes pass
                assert time.monotonic() - started < 10, "wechat's circuit did not close after the fault cleared"
                await till.request(new_purchase("wechat"))
        seconds = [round(s, 2) for _, s in hung]
        assert all(a["39"] == "91" for a, _ in hung)
        # The first customers wait out the timeout (the resolver's queries of their payments, also
        # failing, may make them fewer than CONSECUTIVE_FAILURES); everyone after is answered well
        # before the timeout would have been reached.
        waited = [s for s in seconds if s >= timeout_s / 2]
        assert 1 <= len(waited) <= CONSECUTIVE_FAILURES and seconds[: len(waited)] == waited, seconds
        for answer, _ in hung[len(waited) :]:
            row = await journal_row(database_url, answer["37"])
            assert (row["state"], row["channel_code"]) == ("DECLINED", "CIRCUIT_OPEN")
            assert sim_audit_is_empty(ports, "wechat", answer["37"])
        assert [a["39"] for a in others] == ["00"] * len(others)
        assert recovered_in < 15
        for answer, _ in hung[: len(waited)]:  # sent, never answered: the resolver closes them
            await wait_for_state(database_url, answer["37"], {"CANCELLED", "DECLINED"}, timeout=30)

    run(scenario())


def test_calls_hanging_past_the_slow_threshold_open_a_quiet_circuit_before_they_time_out(
    switch, ports, database_url, healthy_afterwards
):
    """Alipay's calls time out after 10 s, but each counts as failing once outstanding past 3 s
    (the breaker's slow_call_ms): three hanging at once open the circuit while all three are
    still under way, and the next customer gets 91 at once."""

    async def scenario():
        fault(ports, "alipay", hang=True)
        async with connected(switch) as till, connected(switch) as other_till:
            first = [asyncio.ensure_future(till.request(new_purchase("alipay"))) for _ in range(2)]
            await asyncio.sleep(1.0)
            first.append(asyncio.ensure_future(other_till.request(new_purchase("alipay"))))
            await wait_for_circuit(switch, "alipay", "open", timeout=20)
            still_under_way = channels(switch)["alipay"]["in_flight"]
            next_customer, seconds = await timed(other_till, new_purchase("alipay"))
            fault(ports, "alipay")
            hung = await asyncio.gather(*first)
            recovered_in = await wait_until_approved(other_till, "alipay", timeout=20)
        assert still_under_way >= 3  # opened before the first of them timed out
        assert next_customer["39"] == "91" and seconds < 1.0
        assert (await journal_row(database_url, next_customer["37"]))["channel_code"] == "CIRCUIT_OPEN"
        assert {a["39"] for a in hung} == {"91"}  # at the switch's deadline (5 s)
        assert recovered_in < 20
        for answer in hung:  # sent, never answered: the resolver closes them
            await wait_for_state(database_url, answer["37"], {"CANCELLED", "DECLINED"}, timeout=40)

    run(scenario())


def sim_audit_is_empty(ports, channel: str, rrn: str) -> bool:
    return sim_audit(ports.channels, channel, out_trade_no(rrn)) == []


def test_refused_connections_open_the_circuit_and_it_recovers(switch, ports, database_url, healthy_afterwards):
    async def scenario():
        fault(ports, "ecny", refuse=True)
        async with connected(switch) as terminal:
            first = await asyncio.gather(*(terminal.request(new_purchase("ecny")) for _ in range(30)))
            await wait_for_circuit(switch, "ecny", "open")
            others = await asyncio.gather(*(terminal.request(new_purchase("inbank")) for _ in range(30)))
            fault(ports, "ecny")
            recovered_in = await wait_until_approved(terminal, "ecny", timeout=10)
        assert {a["39"] for a in first} == {"91"}
        assert {a["39"] for a in others} == {"00"}
        assert recovered_in < 10
        for answer in first:  # not one reached the channel: certainly not charged, closed as declined
            row = await journal_row(database_url, answer["37"])
            assert row["state"] == "DECLINED"
            assert out_trade_no(answer["37"]) not in sim_ledger(ports.channels, "ecny")

    run(scenario())


def test_answers_cut_mid_body_are_resolved_from_the_channels_books(switch, ports, database_url, healthy_afterwards):
    """Charged, but every answer cut off: UNKNOWN, and the circuit opens. The resolver's queries
    cannot be sent while it is open; that is no answer (taking it for "closed at the channel"
    would leave the money with the channel), so it asks again until the channel can tell."""

    async def scenario():
        fault(ports, "inbank", partial=True)
        async with connected(switch) as terminal:
            cut = await asyncio.gather(*(terminal.request(new_purchase("inbank")) for _ in range(30)))
            await wait_for_circuit(switch, "inbank", "open")
            unaffected = await asyncio.gather(*(terminal.request(new_purchase("unionpay")) for _ in range(10)))
        await asyncio.sleep(1.0)
        fault(ports, "inbank")
        assert {a["39"] for a in cut} == {"91"}  # charged, but the terminal was told it failed
        assert {a["39"] for a in unaffected} == {"00"}
        ledger = sim_ledger(ports.channels, "inbank")
        # The channel acted on those sent; the circuit may open (CONSECUTIVE_FAILURES cut answers)
        # before the last of the 30 are, and those are refused, never sent.
        reached = [a for a in cut if out_trade_no(a["37"]) in ledger]
        assert len(reached) >= CONSECUTIVE_FAILURES
        for answer in cut:
            if answer not in reached:
                assert (await journal_row(database_url, answer["37"]))["state"] == "DECLINED"
        for answer in reached:
            await wait_for_state(database_url, answer["37"], {"CANCELLED"}, timeout=40)
        ledger = sim_ledger(ports.channels, "inbank")
        assert all(ledger[out_trade_no(a["37"])]["status"] != "PAID" for a in reached)  # the money went back

    run(scenario())


def test_error_answers_open_the_circuit(switch, ports, database_url, healthy_afterwards):
    async def scenario():
        fault(ports, "unionpay", error_rate=1.0)
        async with connected(switch) as terminal:
            failed = await asyncio.gather(*(terminal.request(new_purchase("unionpay")) for _ in range(30)))
            await wait_for_circuit(switch, "unionpay", "open")
            refused = await terminal.request(new_purchase("unionpay"))
            fault(ports, "unionpay")
            recovered_in = await wait_until_approved(terminal, "unionpay", timeout=10)
        assert {a["39"] for a in failed} == {"91"}
        assert refused["39"] == "91"
        assert (await journal_row(database_url, refused["37"]))["channel_code"] == "CIRCUIT_OPEN"
        assert recovered_in < 10
        for answer in failed:  # the channel never acted on them: the resolver closes them
            await wait_for_state(database_url, answer["37"], {"CANCELLED", "DECLINED"}, timeout=30)

    run(scenario())


def test_a_crashed_actor_is_restarted_and_its_calls_resolved(switch, ports, database_url, healthy_afterwards):
    admin = f"127.0.0.1:{switch.admin}"

    async def scenario():
        restarts_before = channels(switch)["alipay"]["shards"][0]["restarts"]
        async with connected(switch) as terminal:
            # Slow payments (answered after 3 s) are at the channel when the actor dies.
            in_flight = [asyncio.ensure_future(terminal.request(new_purchase("alipay", "98"))) for _ in range(5)]
            await asyncio.sleep(0.5)
            admin_request(admin, "/channels/alipay/crash?shard=0", switch.token, post=True)
            others = await asyncio.gather(*(terminal.request(new_purchase("unionpay")) for _ in range(20)))
            crashed = await asyncio.gather(*in_flight)
            recovered_in = await wait_until_approved(terminal, "alipay", timeout=30)
        assert {a["39"] for a in others} == {"00"}
        assert {a["39"] for a in crashed} == {"91"}
        assert recovered_in < 30
        started = time.monotonic()
        while channels(switch)["alipay"]["shards"][0]["restarts"] == restarts_before:
            assert time.monotonic() - started < 10, "the restart was not noticed"
            await asyncio.sleep(0.2)
        # The channel charged them; the terminal was told 91: the resolver gives the money back.
        for answer in crashed:
            row = await wait_for_state(database_url, answer["37"], {"CANCELLED"}, timeout=40)
            assert row["response_code"] == "91"
            assert len(sim_audit(ports.channels, "alipay", out_trade_no(answer["37"]))) == 1  # sent once

    run(scenario())


def test_an_operator_switches_a_channel_off_and_on(switch, database_url, healthy_afterwards):
    from switch.cli import main as cli

    operator = switch.operator_options()

    async def scenario():
        from bench.traffic import void
        from tests.support import STANS, TERMINAL

        async with connected(switch) as terminal:
            paid_message = new_purchase("inbank")
            paid = await terminal.request(paid_message)
            assert cli(["channel", "disable", "inbank", *operator]) == 0
            assert channels(switch)["inbank"]["enabled"] is False
            off = await terminal.request(new_purchase("inbank"))
            refused_void = await terminal.request(void(paid_message, paid["37"], STANS.next(TERMINAL)))
            other = await terminal.request(new_purchase("ecny"))
            assert cli(["channel", "enable", "inbank", *operator]) == 0
            on = await terminal.request(new_purchase("inbank"))
            # The refused void held nothing back: the purchase can still be voided, once.
            voided = await terminal.request(void(paid_message, paid["37"], STANS.next(TERMINAL)))
        assert (paid["39"], off["39"], refused_void["39"], other["39"], on["39"]) == ("00", "91", "91", "00", "00")
        assert voided["39"] == "00"
        assert (await journal_row(database_url, refused_void["37"]))["channel_code"] == "DISABLED"
        assert (await journal_row(database_url, off["37"]))["channel_code"] == "DISABLED"
        assert cli(["channel", "list", *operator]) == 0
        assert cli(["channel", "disable", "nosuch", *operator]) == 1

    run(scenario())


def refused_before_channel(switch, channel: str) -> float:
    """``paysw_refused_total`` of ``channel``, all reasons."""
    total = 0.0
    for line in switch.get("/metrics")[1].splitlines():
        if line.startswith("paysw_refused_total{") and f'channel="{channel}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_refund_resent_while_its_channel_is_off_gets_its_first_answer(switch, database_url, healthy_afterwards):
    """A void or refund in the journal already gets its first answer before it is judged again:
    resent while its channel is switched off, a finished refund is answered as it was (not 91),
    and the resend is no refusal (nothing counted, no quota taken)."""
    from bench.traffic import refund
    from switch.cli import main as cli
    from tests.support import STANS, TERMINAL

    operator = switch.operator_options()

    async def scenario():
        async with connected(switch) as terminal:
            purchase = new_purchase("inbank")
            paid = await terminal.request(purchase)
            asked = refund(purchase, paid["37"], 100, STANS.next(TERMINAL))
            first = await terminal.request(asked)
            assert cli(["channel", "disable", "inbank", *operator]) == 0
            try:
                refused = refused_before_channel(switch, "inbank")
                again = await terminal.request(asked)
                assert refused_before_channel(switch, "inbank") == refused
                new = await terminal.request(refund(purchase, paid["37"], 100, STANS.next(TERMINAL)))
            finally:
                assert cli(["channel", "enable", "inbank", *operator]) == 0
        assert (paid["39"], first["39"], again["39"], again["37"], new["39"]) == ("00", "00", "00", first["37"], "91")
        assert refused_before_channel(switch, "inbank") == refused + 1  # the new one, refused
        row = await journal_row(database_url, new["37"])
        assert (row["state"], row["channel_code"]) == ("DECLINED", "DISABLED")
        bought = await journal_row(database_url, paid["37"])
        assert (bought["reserved_fen"], bought["refunded_fen"]) == (0, 100)

    run(scenario())


def test_a_merchant_over_its_channel_quota_gets_91(switch, database_url):
    async def scenario():
        async with connected(switch) as terminal:  # the kiosk's Alipay quota: 5 a second
            answers = await asyncio.gather(
                *(
                    terminal.request(new_purchase("alipay", terminal="K0000001", merchant="898310048990002"))
                    for _ in range(15)
                )
            )
            other_merchant = await terminal.request(new_purchase("alipay"))
        codes = [a["39"] for a in answers]
        assert codes.count("00") <= 6 and codes.count("91") >= 9, codes
        limited = [a for a in answers if a["39"] == "91"]
        assert (await journal_row(database_url, limited[0]["37"]))["channel_code"] == "MERCHANT_RATE_LIMIT"
        assert other_merchant["39"] == "00"

    run(scenario())


def test_faults_from_the_command_line(simulators, ports, config_dir, healthy_afterwards):
    from switch.cli import main as cli

    config = str(config_dir / "simulators.toml")
    assert cli(["sim", "fault", "ecny", "--latency", "1.5s", "--error-rate", "0.25", "--config", config]) == 0
    shown = set_fault(f"127.0.0.1:{ports.controls['ecny']}", None)
    assert (shown.latency_ms, shown.error_rate, shown.hang) == (1500.0, 0.25, False)
    assert cli(["sim", "fault", "ecny", "--clear", "--config", config]) == 0
    assert set_fault(f"127.0.0.1:{ports.controls['ecny']}", None) == NO_FAULT
    assert cli(["sim", "fault", "ecny", "--latency", "2 fortnights", "--config", config]) == 2
    assert cli(["sim", "fault", "nosuch", "--hang", "--config", config]) == 2
    assert cli(["sim", "fault", "ecny", "--clear", "--hang", "--config", config]) == 2


def test_reset_connections_leave_nothing_charged_and_nothing_open(switch, ports, database_url, healthy_afterwards):
    """The channel closes each connection as soon as a request arrives: sent, so UNKNOWN (91);
    once it answers again the resolver finds no such order and closes them."""

    async def scenario():
        fault(ports, "ecny", reset=True)
        async with connected(switch) as terminal:
            reset = await asyncio.gather(*(terminal.request(new_purchase("ecny")) for _ in range(3)))
            other = await terminal.request(new_purchase("inbank"))
        fault(ports, "ecny")
        assert {a["39"] for a in reset} == {"91"} and other["39"] == "00"
        for answer in reset:
            await wait_for_state(database_url, answer["37"], {"CANCELLED", "DECLINED"}, timeout=30)
            # Never charged: no order, or the one the resolver's cancel closed (to bar a late pay).
            order = sim_ledger(ports.channels, "ecny").get(out_trade_no(answer["37"]))
            assert order is None or order["status"] != "PAID"

    run(scenario())
