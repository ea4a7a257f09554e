"""End to end: real TCP into a real ``paysw run`` (local Ray, channel actors), real simulator
processes, a real PostgreSQL journal."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re

import pytest

from bench.client import IsoClient
from bench.traffic import CODE_SHAPES, inquiry, network, reversal
from protocols import validation
from protocols.iso8583 import encode, encode_body
from tests.conftest import WECHAT_TIMEOUT_MS, run
from tests.support import (
    SENT_PANS,
    STANS,
    TERMINAL,
    connected,
    journal_row,
    new_purchase,
    out_trade_no,
    sim_audit,
)


@pytest.mark.parametrize("channel", list(CODE_SHAPES))
def test_purchase_is_approved_and_journaled(switch, database_url, channel):
    async def scenario():
        async with connected(switch) as client:
            request = new_purchase(channel)
            answer = await client.request(request)
        assert answer["t"] == "0210" and answer["39"] == "00"
        for field in ("2", "3", "4", "7", "11", "12", "13", "41", "42", "49"):
            assert answer[field] == request[field], f"field {field} not echoed"
        assert re.fullmatch(r"\d{12}", answer["37"]) and len(answer["38"]) == 6 and answer["62"]
        row = await journal_row(database_url, answer["37"])
        assert row is not None
        assert (row["state"], row["response_code"], row["channel"]) == ("APPROVED", "00", channel)
        assert row["amount_fen"] == 1234 and row["auth_id"] == answer["38"]
        assert row["channel_txn_id"] == answer["62"]
        assert row["pan_masked"] == request["2"][:6] + "*" * (len(request["2"]) - 10) + request["2"][-4:]

    run(scenario())


# (payment code suffix, answer, journal states right after the answer: the resolver may already
# have moved an UNKNOWN one on)
DECLINES = [
    ("51", "51", {"DECLINED"}),
    ("54", "54", {"DECLINED"}),
    ("14", "14", {"DECLINED"}),
    ("05", "05", {"DECLINED"}),
    ("09", "00", {"APPROVED"}),  # the customer confirms within the deadline
    ("96", "91", {"UNKNOWN", "CANCELLED"}),
]


@pytest.mark.parametrize("channel", list(CODE_SHAPES))
def test_channel_outcomes_map_to_spec_codes_and_states(switch, database_url, channel):
    async def scenario():
        async with connected(switch) as client:
            answers = await asyncio.gather(*(client.request(new_purchase(channel, s)) for s, _, _ in DECLINES))
        for (suffix, code, state), answer in zip(DECLINES, answers, strict=True):
            assert answer["39"] == code, f"{channel} ..{suffix}"
            assert ("38" in answer) == (code == "00")
            row = await journal_row(database_url, answer["37"])
            assert row["state"] in state, f"{channel} ..{suffix}"

    run(scenario())


def test_channel_timeout_is_unknown_not_failed(switch, database_url):
    async def scenario():
        async with connected(switch) as client:
            started = asyncio.get_running_loop().time()
            answer = await client.request(new_purchase("wechat", "98"))  # the simulator answers after 3 s
            elapsed = asyncio.get_running_loop().time() - started
        assert answer["39"] == "91"
        assert elapsed < WECHAT_TIMEOUT_MS / 1000 + 1.5
        row = await journal_row(database_url, answer["37"])
        assert row["state"] in ("UNKNOWN", "CANCELLED")  # the resolver reverses it soon after

    run(scenario())


@pytest.mark.parametrize("channel", list(CODE_SHAPES))
def test_journal_row_is_committed_before_the_channel_sees_the_request(switch, simulators, channel):
    async def scenario():
        async with connected(switch) as client:
            answer = await client.request(new_purchase(channel))
        seen = sim_audit(simulators, channel, out_trade_no(answer["37"]))
        # The simulator looked the row up in the journal, over its own connection, on arrival.
        assert [s["journal_state"] for s in seen] == ["RECEIVED"]

    run(scenario())


def test_identical_retransmission_gets_the_original_answer_without_a_second_channel_call(switch, simulators):
    async def scenario():
        request = new_purchase("alipay")
        async with connected(switch) as client:
            first = await client.request(request)
        async with connected(switch) as client:  # a terminal that reconnected and resent
            again = await client.request(dict(request))
        assert first["39"] == "00"
        assert {k: again[k] for k in ("37", "38", "39", "62")} == {k: first[k] for k in ("37", "38", "39", "62")}
        assert len(sim_audit(simulators, "alipay", out_trade_no(first["37"]))) == 1

    run(scenario())


def test_pipelined_identical_requests_reach_the_channel_once(switch, simulators):
    async def scenario():
        request = new_purchase("wechat")
        async with connected(switch) as client:
            await client.send_raw(encode(request) + encode(request) + encode(request))
            answers = [await client.next_unmatched() for _ in range(3)]
        assert len({(a["37"], a["39"], a.get("38")) for a in answers}) == 1
        assert answers[0]["39"] == "00"
        assert len(sim_audit(simulators, "wechat", out_trade_no(answers[0]["37"]))) == 1

    run(scenario())


def test_retransmissions_waiting_for_their_original_hold_no_place_in_the_admission(switch):
    """The original of a slow purchase is at its channel; three retransmissions of it wait for its
    answer. None of them counts as waiting for a channel call (``switch.shedding``): a hung
    channel's retransmissions must not fill the limit and shed other channels' purchases."""

    def waiting() -> float:
        text = switch.get("/metrics")[1]
        return float(re.search(r"(?m)^paysw_admission_waiting (\S+)$", text).group(1))

    async def scenario():
        request = new_purchase("alipay", suffix="98")  # the simulator answers after slow_ms (3 s)
        async with connected(switch) as first, connected(switch) as a, connected(switch) as b, connected(switch) as c:
            original = asyncio.ensure_future(first.request(request))
            await asyncio.sleep(0.5)
            resent = [asyncio.ensure_future(again.request(dict(request))) for again in (a, b, c)]  # (one a connection)
            await asyncio.sleep(0.5)
            during = await asyncio.to_thread(waiting)
            answers = await asyncio.gather(original, *resent)
        assert during == 0
        assert len({(a["37"], a["39"]) for a in answers}) == 1 and answers[0]["39"] == "00"

    run(scenario())


def test_every_way_a_request_ends_gives_back_its_place_under_max_in_flight_and_the_admission(switch):
    """Approved, declined, replayed, 94, waiting on its original, reversed, inquired:
    once all are answered nothing is counted under way or waiting. A place kept by any of them
    would, request by request, bring the switch to shed everything."""

    def gauge(text: str, name: str) -> float:
        return float(re.search(rf"(?m)^{name} (\S+)$", text).group(1))

    async def scenario():
        slow, paid, refused = new_purchase("alipay", "98"), new_purchase("wechat"), new_purchase("wechat", "05")
        async with contextlib.AsyncExitStack() as stack:
            first, *others = [await stack.enter_async_context(connected(switch)) for _ in range(6)]
            original = asyncio.ensure_future(first.request(slow))
            await asyncio.sleep(0.5)
            resent = [asyncio.ensure_future(c.request(dict(slow))) for c in others]  # waiting on the original
            approved = await first.request(paid)
            answers = [
                approved,
                await first.request(refused),
                await first.request(dict(paid)),  # replayed from the journal
                await first.request({**paid, "4": "000000000001"}),  # 94
                await first.request(reversal(refused, STANS.next(TERMINAL))),
                await first.request(inquiry(TERMINAL, paid["42"], approved["37"], STANS.next(TERMINAL))),
            ]
            answers += await asyncio.gather(original, *resent)
        assert [a["39"] for a in answers[:6]] == ["00", "05", "00", "94", "00", "00"]
        assert len({(a["37"], a["39"]) for a in answers[6:]}) == 1 and answers[6]["39"] == "00"
        for _ in range(50):  # the answer leaves before the step that gives the place back ends
            text = (await asyncio.to_thread(switch.get, "/metrics"))[1]
            counted = tuple(gauge(text, g) for g in ("paysw_requests_in_flight", "paysw_admission_waiting",
                                                     "paysw_admission_peers"))  # fmt: skip
            if counted == (0, 0, 0):
                break
            await asyncio.sleep(0.1)
        assert counted == (0, 0, 0)

    run(scenario())


def test_conflicting_retransmission_is_94_and_changes_nothing(switch, database_url):
    async def scenario():
        request = new_purchase("unionpay", amount=500)
        async with connected(switch) as client:
            first = await client.request(request)
            conflicting = await client.request({**request, "4": f"{900:012d}"})
        assert (first["39"], conflicting["39"]) == ("00", "94")
        assert conflicting["37"] != first["37"]
        row = await journal_row(database_url, first["37"])
        assert (row["amount_fen"], row["state"]) == (500, "APPROVED")

    run(scenario())


def _far_date(request: dict[str, str]) -> dict[str, str]:
    far = dt.datetime.now(dt.UTC) - dt.timedelta(days=5)
    return {**request, "7": far.strftime("%m%d%H%M%S")}


BAD_INPUT = [
    ("missing field 4", lambda r: {k: v for k, v in r.items() if k != "4"}, "30"),
    ("missing field 25", lambda r: {k: v for k, v in r.items() if k != "25"}, "30"),
    ("amount zero", lambda r: {**r, "4": "000000000000"}, "13"),
    ("amount not numeric", lambda r: {**r, "4": "00000000012X"}, "13"),
    ("no route", lambda r: {**r, "2": "99" + r["2"][2:]}, "14"),
    ("wrong length", lambda r: {**r, "2": r["2"][:-1]}, "14"),
    ("unsupported processing code", lambda r: {**r, "3": "310000"}, "12"),
    ("void of an unknown original", lambda r: {**r, "3": "020000", "37": "000000000001"}, "25"),
    ("unknown terminal", lambda r: {**r, "41": "X9999999"}, "03"),
    ("terminal of another merchant", lambda r: {**r, "42": "898310048990002"}, "03"),
    ("suspended merchant", lambda r: {**r, "41": "S0000001", "42": "898310048990003"}, "57"),
    ("channel not enabled for the merchant", lambda r: {**r, "41": "K0000001", "42": "898310048990002"}, "57"),
    ("field 7 days away", _far_date, "30"),
    ("currency not CNY", lambda r: {**r, "49": "840"}, "30"),
]


def test_bad_input_gets_spec_codes_and_the_connection_survives(switch):
    async def scenario():
        async with connected(switch) as client:
            for what, spoil, code in BAD_INPUT:
                request = spoil(new_purchase("unionpay"))
                answer = await client.request(request)
                assert answer["39"] == code, what
                assert answer["t"] == "0210" and re.fullmatch(r"\d{12}", answer["37"]), what
                assert answer["11"] == request["11"] and answer["41"] == request["41"], what
            echo = await client.request(network(TERMINAL, STANS.next(TERMINAL), "301"))
            assert echo["39"] == "00"

    run(scenario())


def test_partially_decodable_message_is_answered_30(switch):
    async def scenario():
        body = encode_body(new_purchase("ecny"))[:-12]  # cut inside field 42
        async with connected(switch) as client:
            await client.send_raw(len(body).to_bytes(2, "big") + body)
            answer = await client.next_unmatched()
            assert (answer["t"], answer["39"], answer["41"]) == ("0210", "30", TERMINAL)
            assert (await client.request(network(TERMINAL, STANS.next(TERMINAL))))["39"] == "00"

    run(scenario())


@pytest.mark.parametrize("poison", [b"\x00\x05\x01\x02garb", (5000).to_bytes(2, "big") + b"x" * 10])
def test_unparseable_or_oversized_frame_closes_only_its_connection(switch, poison):
    async def scenario():
        async with connected(switch) as healthy, connected(switch) as poisoned:
            await poisoned.send_raw(poison)
            await asyncio.wait_for(poisoned.closed.wait(), 10)
            answer = await healthy.request(new_purchase("inbank"))
            assert answer["39"] == "00"

    run(scenario())


def test_stalled_partial_frame_closes_the_connection(switch):
    async def scenario():
        async with connected(switch) as client:
            frame = encode(new_purchase("wechat"))
            await client.send_raw(frame[:20])
            await asyncio.wait_for(client.closed.wait(), 10)  # the test configuration stalls out after 1 s

    run(scenario())


@pytest.mark.parametrize(("code", "expected"), [("001", "00"), ("002", "00"), ("301", "00"), ("101", "12")])
def test_network_management(switch, code, expected):
    async def scenario():
        async with connected(switch) as client:
            request = network(TERMINAL, STANS.next(TERMINAL), code)
            answer = await client.request(request)
            unknown = await client.request(network("X0000009", STANS.next("X0000009"), code))
        assert (answer["t"], answer["39"], answer["70"], answer["7"]) == ("0810", expected, code, request["7"])
        assert unknown["39"] == "03"

    run(scenario())


def test_pipelined_requests_on_one_connection_are_all_answered(switch, database_url):
    async def scenario():
        channels = list(CODE_SHAPES)
        async with connected(switch) as client:
            requests = [new_purchase(channels[i % 5], terminal=f"T000000{1 + i % 4}") for i in range(300)]
            answers = await asyncio.gather(*(client.request(r) for r in requests))
        assert [a["11"] for a in answers] == [r["11"] for r in requests]
        refused = [a for a in answers if a["39"] != "00"]
        rows = [await journal_row(database_url, a["37"]) if a.get("37") else None for a in refused]
        why = [(a["39"], a.get("37"), (row or {}).get("channel_code")) for a, row in zip(refused, rows, strict=True)]
        assert not refused, f"{len(refused)} of 300 not approved (code, RRN, channel_code): {why}"
        assert len({a["37"] for a in answers}) == 300

    run(scenario())


def test_metrics_and_health_endpoints(switch):
    async def purchases() -> list[str]:
        """A purchase on every channel, so that there are answers to count and codes to leak."""
        async with connected(switch) as client:
            requests = [new_purchase(channel) for channel in CODE_SHAPES]
            answers = await asyncio.gather(*(client.request(r) for r in requests))
        assert [a["39"] for a in answers] == ["00"] * len(requests)
        return [r["2"] for r in requests]

    pans = run(purchases())
    assert switch.get("/healthz")[0] == 200
    assert switch.get("/readyz")[0] == 200
    status, text = switch.get("/metrics")
    assert status == 200
    assert re.search(r'paysw_answers_total\{channel="wechat",code="00",mti="0200"\} [1-9]', text)
    assert "paysw_journal_batch_size_bucket" in text
    # Its own payment codes, and any other test's sent on the session's switch so far.
    leaked = [pan for pan in {*pans, *SENT_PANS} if pan in text or pan[:6] + "*" in text]
    assert not leaked, f"{len(leaked)} payment codes in the metrics"
    labels = set(re.findall(r'(\w+)="', text))
    # "class": the reconciliation classes (six of them); "field" and "rule": a rejection's, from the
    # rules of protocols.validation, or a risk rule's id from the rules file; "action", "mode",
    # "policy" and "result": the risk rules' and reloads' own few values; "step" and "txn_type":
    # those of switch.steps; "outcome": a channel call's (protocols.messages.Outcome). Which appear
    # depends on what other tests did on the session's switch.
    bounded = {"mti", "channel", "shard", "code", "op", "reason", "state", "queue", "class", "le", "outcome"}
    risk = {"action", "mode", "policy", "result"}
    assert labels <= bounded | risk | {"field", "rule", "step", "txn_type"}, f"unbounded labels: {labels}"
    rules = {v.name for v in vars(validation).values() if isinstance(v, validation.Rule)} | {validation.FORMAT}
    assert set(re.findall(r'paysw_rejected_total\{[^}]*rule="([^"]*)"', text)) <= rules


def test_fifty_identical_requests_at_once_make_one_channel_call(switch, simulators, database_url):
    async def scenario():
        request = new_purchase("ecny", "98")  # slow at the channel: the copies arrive while it is under way
        frame = encode(request)
        clients = [await IsoClient.connect(switch.host, switch.port) for _ in range(5)]
        try:
            for client in clients:
                await client.send_raw(frame * 10)
            answers = [await client.next_unmatched(timeout=20) for client in clients for _ in range(10)]
        finally:
            for client in clients:
                await client.close()
        assert len(answers) == 50
        assert len({(a["37"], a["39"], a.get("38")) for a in answers}) == 1
        assert answers[0]["39"] == "00"
        assert len(sim_audit(simulators, "ecny", out_trade_no(answers[0]["37"]))) == 1
        row = await journal_row(database_url, answers[0]["37"])
        assert row["state"] == "APPROVED"

    run(scenario())
