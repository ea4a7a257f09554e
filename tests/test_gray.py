"""The link to a legacy switch upstream over ISO 8583 (gray routing, 灰度引流): every operation's
messages against the stand-in in ``bench/`` on real sockets through the channel actors' frame
pool, and what the pool says when the legacy switch refuses or stays silent. A real switch
gray-routing to it, the share moved in the console: ``tests/test_console.py``."""

from __future__ import annotations

import asyncio
import time

import pytest

from actors.frames import FramePool
from actors.http import AnswerTimeout, NotSent
from bench.demo_config import DEMO_DIR
from bench.legacy_switch import LegacySwitch
from hsm.algorithms import signer, verifier
from protocols import response_codes as rc
from protocols.channels import channel_of
from protocols.channels.base import Crypto, Keys
from protocols.channels.legacy.flows import LegacyAccount
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
            # A reversal of what it never had leaves no money anywhere: done.
            assert (await call(port, request(CANCEL, "20261204000000000198"))).outcome == Outcome.APPROVED
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
