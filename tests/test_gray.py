"""The link to a legacy switch upstream over ISO 8583 (gray routing, 灰度引流): every operation's
messages against the stand-in in ``bench/`` on real sockets through the channel actors' frame
pool, and what the pool says when the legacy switch refuses or stays silent. A real switch
gray-routing to it, the share moved in the console: ``tests/test_console.py``."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest

from actors.frames import FramePool
from actors.http import AnswerTimeout, NotSent
from bench.demo_config import DEMO_DIR
from bench.legacy_switch import LegacySwitch
from hsm.algorithms import signer, verifier
from protocols import response_codes as rc
from protocols.channels import channel_of
from protocols.channels.base import Crypto, HttpAnswer, Keys
from protocols.channels.legacy.flows import ASKED, ORDER, LegacyAccount, sealed
from protocols.messages import CANCEL, NOT_FOUND, PAY, QUERY, REFUND, ChannelRequest, Outcome
from tests.conftest import free_port, run

KEY = (DEMO_DIR / "keys" / "legacy" / "mac_key").read_bytes().strip()
LEGACY = channel_of("legacy")
ACCOUNT = LegacyAccount(
    institution="48020000",
    keys=Keys(sign_algorithm="hmac-sha256", sign_key="legacy:mac-key", verify_algorithm="hmac-sha256",
              verify_key="legacy:mac-key"),
)  # fmt: skip
CRYPTO = Crypto(signer("hmac-sha256", KEY), verifier("hmac-sha256", KEY))


def request(op: str, order: str, amount: int = 1000, refund_no: str = "", total: int = 0) -> ChannelRequest:
    return ChannelRequest(1, op, order, amount, "134567890123456789" if op == PAY else "", "", "T0000001",
                          time.time() + 5, created=time.time(), refund_no=refund_no, total_fen=total)  # fmt: skip


async def call(port: int, req: ChannelRequest, timeout: float = 2.0, crypto: Crypto = CRYPTO):
    pool = FramePool(f"tcp://127.0.0.1:{port}", 2)
    try:
        slot = await pool.acquire(1)
        try:
            flow = LEGACY.flows[req.op]
            answer = await slot.post("", flow.build(req, ACCOUNT, crypto, time.time()).body, {}, timeout)
            return flow.parse(req, answer, crypto)
        finally:
            slot.release()
    finally:
        pool.close()


def test_the_link_to_the_legacy_switch_carries_every_operation():
    async def go() -> None:
        legacy, port = LegacySwitch(KEY), free_port()
        server = await legacy.serve("127.0.0.1", port)
        try:
            paid = await call(port, request(PAY, "20261204000000000101", 1000))
            assert (paid.outcome, paid.response_code) == (Outcome.APPROVED, rc.APPROVED) and paid.channel_txn_id
            again = await call(port, request(PAY, "20261204000000000101", 1000))  # the same order: the same answer
            assert again.channel_txn_id == paid.channel_txn_id
            poor = await call(port, request(PAY, "20261204000000000102", 1051))  # the legacy switch's code, relayed
            assert (poor.outcome, poor.response_code) == (Outcome.DECLINED, rc.INSUFFICIENT_FUNDS)
            asked = await call(port, request(QUERY, "20261204000000000101"))
            assert (asked.outcome, asked.channel_txn_id) == (Outcome.APPROVED, paid.channel_txn_id)
            never = await call(port, request(QUERY, "20261204000000000199"))
            assert (never.outcome, never.channel_code) == (Outcome.DECLINED, NOT_FOUND)
            back = await call(port, request(REFUND, "20261204000000000101", 600, "20261204000000000103", 1000))
            assert back.outcome == Outcome.APPROVED
            over = await call(port, request(REFUND, "20261204000000000101", 600, "20261204000000000104", 1000))
            assert (over.outcome, over.response_code) == (Outcome.DECLINED, rc.INVALID_AMOUNT)
            reversed_ = await call(port, request(CANCEL, "20261204000000000101"))
            assert reversed_.outcome == Outcome.APPROVED
            assert (await call(port, request(QUERY, "20261204000000000101"))).outcome == Outcome.DECLINED
            # A reversal of what it never had leaves no money anywhere: done, and the purchase is
            # refused should it come after (a pay overtaken by its reversal).
            assert (await call(port, request(CANCEL, "20261204000000000198"))).outcome == Outcome.APPROVED
            late = await call(port, request(PAY, "20261204000000000198"))
            assert (late.outcome, late.response_code) == (Outcome.DECLINED, rc.DO_NOT_HONOUR)
            # Another key: the legacy switch refuses it (A0), and its answer is not ours to believe.
            stranger = Crypto(signer("hmac-sha256", b"0" * 32), verifier("hmac-sha256", b"0" * 32))
            forged = await call(port, request(PAY, "20261204000000000105"), crypto=stranger)
            assert (forged.outcome, forged.channel_code) == (Outcome.UNKNOWN, "A0") or forged.channel_code == "BADMAC"
            assert (await call(port, request(QUERY, "20261204000000000105"))).channel_code == NOT_FOUND
        finally:
            server.close()

    run(go())


def test_the_link_says_what_it_knows_when_the_legacy_switch_fails():
    async def go() -> None:
        silent_port = free_port()

        async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(65536)
            await asyncio.sleep(5)
            writer.close()

        server = await asyncio.start_server(mute, "127.0.0.1", silent_port)
        try:
            with pytest.raises(AnswerTimeout):  # sent, no answer: the actor makes it UNKNOWN
                pool = FramePool(f"tcp://127.0.0.1:{silent_port}", 1)
                slot = await pool.acquire(1)
                body = LEGACY.flows[PAY].build(request(PAY, "20261204000000000202"), ACCOUNT, CRYPTO, time.time()).body
                await slot.post("", body, {}, 0.3)
        finally:
            server.close()
        with pytest.raises(NotSent):  # refused: certainly not sent, so the actor makes it 91 at once
            pool = FramePool(f"tcp://127.0.0.1:{free_port()}", 1)
            await (await pool.acquire(1)).post("", b"0800", {}, 0.5)

    run(go())


def answer_to(req: ChannelRequest, code: str, **changes: str) -> HttpAnswer:
    """The legacy switch's answer to ``req`` with ``code``, as the stand-in writes it, then changed."""
    order = req.refund_no if req.op == REFUND else req.out_trade_no
    message = {
        "t": ASKED[req.op],
        "4": f"{req.amount_fen:012d}",
        "11": "000101",
        ORDER: order,
        "39": code,
        "38": "A00001",
    }
    return HttpAnswer(200, sealed(message | changes, CRYPTO.sign))


# What each operation makes of each code: only an answer that says for certain that no money moved
# is DECLINED; what the link does not know (94 a duplicate, 12 an inquiry it does not support, a
# private code) is UNKNOWN, for the resolver to ask again.
VERDICTS = {
    PAY: {"00": Outcome.APPROVED, "09": Outcome.PENDING, "51": Outcome.DECLINED, "05": Outcome.DECLINED,
          "12": Outcome.DECLINED, "30": Outcome.DECLINED, "A0": Outcome.DECLINED, "94": Outcome.UNKNOWN,
          "91": Outcome.UNKNOWN, "96": Outcome.UNKNOWN, "10": Outcome.UNKNOWN, "Z9": Outcome.UNKNOWN},
    QUERY: {"00": Outcome.APPROVED, "09": Outcome.PENDING, "25": Outcome.DECLINED, "05": Outcome.DECLINED,
            "12": Outcome.UNKNOWN, "30": Outcome.UNKNOWN, "A0": Outcome.UNKNOWN, "94": Outcome.UNKNOWN,
            "68": Outcome.UNKNOWN},
    CANCEL: {"00": Outcome.APPROVED, "25": Outcome.APPROVED, "05": Outcome.UNKNOWN, "12": Outcome.UNKNOWN,
             "30": Outcome.UNKNOWN, "94": Outcome.UNKNOWN},
    REFUND: {"00": Outcome.APPROVED, "13": Outcome.DECLINED, "25": Outcome.DECLINED, "09": Outcome.UNKNOWN,
             "94": Outcome.UNKNOWN, "A0": Outcome.UNKNOWN, "30": Outcome.UNKNOWN, "Z9": Outcome.UNKNOWN},
}  # fmt: skip


@pytest.mark.parametrize(("op", "code"), [(op, code) for op, codes in VERDICTS.items() for code in codes])
def test_each_answer_code_means_what_it_certainly_says(op, code):
    req = request(op, "20261204000000000301", 1000, "20261204000000000302" if op == REFUND else "", 1000)
    result = LEGACY.flows[op].parse(req, answer_to(req, code), CRYPTO)
    assert result.outcome == VERDICTS[op][code], (op, code, result)
    if result.outcome == Outcome.DECLINED and code != "25":
        assert result.response_code in (code, rc.SYSTEM_MALFUNCTION)  # relayed (a message refused unread: 96)


def test_an_answer_to_another_message_is_not_believed():
    req = request(QUERY, "20261204000000000401")
    for changed in ({"t": "0410"}, {"4": f"{1:012d}"}, {ORDER: "20261204000000000499"}):
        result = LEGACY.flows[QUERY].parse(req, answer_to(req, "00", **changed), CRYPTO)
        assert (result.outcome, result.channel_code) == (Outcome.UNKNOWN, "MISMATCH"), changed
    pay = request(PAY, "20261204000000000402", 1000)
    partial = LEGACY.flows[PAY].parse(pay, answer_to(pay, "00", **{"4": f"{1:012d}"}), CRYPTO)
    assert partial.outcome == Outcome.UNKNOWN  # an approval of another amount is not this payment's


def test_a_reversal_names_the_purchase_as_it_was_sent():
    from protocols.iso8583 import decode

    pay = request(PAY, "20261204000000000501")
    sent = decode(LEGACY.flows[PAY].build(pay, ACCOUNT, CRYPTO, pay.created + 0.9).body)
    cancel = request(CANCEL, "20261204000000000501")
    cancel = msgspec.structs.replace(cancel, created=pay.created)
    reversal = decode(LEGACY.flows[CANCEL].build(cancel, ACCOUNT, CRYPTO, pay.created + 30).body)
    assert reversal["90"][:20] == f"0200{sent['11']}{sent['7']}"  # the original's MTI, STAN and field 7
    assert reversal["11"] != sent["11"]  # its own STAN
