"""Gray routing (灰度引流) to a legacy switch upstream over ISO 8583: the link's messages against the
stand-in in ``bench/`` (real sockets, the channel actors' frame pool), and a real switch sending
10% of its merchants' WeChat Pay purchases to the legacy switch, then 50% once an operator moves
the share in the console, with no restart."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest
import requests

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
from switch.routing import share_of
from tests.conftest import free_port, run, switch_with, wait_for_port
from tests.support import connected, new_purchase
from tests.test_console import PASSWORDS, ROLES, ConsoleProcess, signed_in

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


# -- a real switch, gray routes moved by an operator --------------------------------------

GRAY_MERCHANTS = [(f"8983100477{n:05d}", f"G{n:07d}") for n in range(1, 41)]


def gray_edits(legacy_port: int) -> list[tuple[str, str]]:
    merchants = "".join(
        f'\n[[merchants]]\nid = "{m}"\nname = "Gray {m}"\nchannels = ["wechat", "alipay"]\n'
        f'\n[[terminals]]\nid = "{t}"\nmerchant = "{m}"\n'
        for m, t in GRAY_MERCHANTS
    )
    legacy = (
        f'\n[channels.legacy]\nkind = "legacy"\nactor = {{ endpoint = "tcp://127.0.0.1:{legacy_port}" }}\n'
        'account = { institution = "48020000", keys = { sign_algorithm = "hmac-sha256", sign_key = "legacy:mac-key", '
        'verify_algorithm = "hmac-sha256", verify_key = "legacy:mac-key" } }\n'
        '\n[[routing.gray]]\nchannel = "wechat"\nto = "legacy"\npercent = 10\n'
    )
    return [(r"\Z", merchants + legacy)]


@pytest.fixture(scope="module")
def gray(config_dir, database_url, simulators, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gray")
    legacy_port, ledger = free_port(), folder / "legacy-ledger.jsonl"
    stand_in = subprocess.Popen(
        [sys.executable, "-m", "bench.legacy_switch", "--listen", f"127.0.0.1:{legacy_port}",
         "--key", str(DEMO_DIR / "keys" / "legacy" / "mac_key"), "--ledger", str(ledger)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    wait_for_port(legacy_port, 30, stand_in)
    try:
        for switch in switch_with(config_dir, database_url, folder, "gray", gray_edits(legacy_port)):
            console = ConsoleProcess(switch, folder)
            command = console.command("add-user", "ada", "--role", ROLES["ada"], "--password-stdin")
            password = PASSWORDS["ada"] + "\n"
            added = subprocess.run(command, input=password, env=switch.env, capture_output=True, text=True)
            assert added.returncode == 0 or "exists already" in added.stderr, added.stderr
            console.start()
            try:
                yield switch, console, ledger
            finally:
                console.stop()
                from tests.test_console import _forget_live_configuration

                run(_forget_live_configuration(database_url))
    finally:
        stand_in.terminate()
        stand_in.wait(10)


def pay_each(switch, amount: int = 1234) -> dict[str, dict]:
    async def each() -> dict[str, dict]:
        async with connected(switch) as client:
            asks = [
                client.request(new_purchase("wechat", terminal=t, merchant=m, amount=amount)) for m, t in GRAY_MERCHANTS
            ]
            return dict(zip([m for m, _ in GRAY_MERCHANTS], await asyncio.gather(*asks), strict=True))

    return run(each())


def channels_of(database_url: str, answers: dict[str, dict]) -> dict[str, str]:
    from tests.test_console import sql

    rows = sql(database_url, "SELECT rrn, channel FROM txn WHERE rrn = ANY($1)", [a["37"] for a in answers.values()])
    by_rrn = {r["rrn"]: r["channel"] for r in rows}
    return {m: by_rrn[a["37"]] for m, a in answers.items()}


def test_a_share_of_merchants_goes_to_the_legacy_switch_and_an_operator_moves_it(gray, database_url):
    switch, console, ledger = gray
    tenth = {m for m, _ in GRAY_MERCHANTS if share_of(m) < 10}
    half = {m for m, _ in GRAY_MERCHANTS if share_of(m) < 50}
    assert 1 <= len(tenth) < len(half) < len(GRAY_MERCHANTS)  # the ids make a fair test

    answers = pay_each(switch)
    assert {a["39"] for a in answers.values()} == {"00"}
    went = channels_of(database_url, answers)
    assert {m for m, ch in went.items() if ch == "legacy"} == tenth
    assert {m for m, ch in went.items() if ch == "wechat"} == set(went) - tenth
    # The legacy switch saw those purchases, and only those: by terminal, as it knows them.
    seen = [json.loads(line) for line in ledger.read_text().splitlines()]
    terminals = dict((t, m) for m, t in GRAY_MERCHANTS)
    assert {terminals[s["terminal"]] for s in seen} == tenth
    # Its own answer is relayed: a purchase it declines for funds is 51 at the terminal.
    poor = pay_each(switch, amount=1251)
    assert {m for m, a in poor.items() if a["39"] == "51"} == tenth

    # The operator moves the share to 50 % in the console: live, with no restart.
    session, status = signed_in(console, "ada")
    assert status == 303
    page = session.get(f"{console.base}/routing").text
    assert 'id="gray-wechat"' in page and "10 %" in page
    csrf = page.split('name="csrf" value="')[1].split('"')[0]
    version = page.split('name="version" value="')[1].split('"')[0]
    form = {"csrf": csrf, "version": version, "percent": "50"}
    moved = session.post(f"{console.base}/routing/gray/wechat", data=form)
    assert "moved to 50" in moved.text and "50 %" in moved.text
    deadline = time.monotonic() + 10
    while True:
        went = channels_of(database_url, pay_each(switch))
        if {m for m, ch in went.items() if ch == "legacy"} == half:
            break
        assert time.monotonic() < deadline, f"50 % did not take: {sorted(m for m, c in went.items() if c == 'legacy')}"
        time.sleep(0.3)
    assert tenth <= half  # those moved first stayed moved
    from tests.test_console import sql

    audited = "SELECT before::text, after::text FROM console_audit WHERE action = 'routing.gray' ORDER BY id DESC"
    before, after = sql(database_url, audited)[0]
    assert json.loads(before)["percent"] == 10 and json.loads(after)["percent"] == 50
    # A viewer's share form is not there, and the file's routing was the seed only.
    assert requests.get(f"{console.base}/routing", allow_redirects=False).status_code == 303
