"""The merchant side against the real switch, simulators and PostgreSQL: a QR order created over
the signed HTTP API, scanned and paid at the channel's simulator, its notification verified and
recorded through the journal, and the merchant notified from the outbox; the notification lost,
duplicated, forged or about no order; the merchant's endpoint down; refused requests."""

import datetime as dt
import random
import re
import secrets
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import msgspec
import pytest

from bench.demo_config import DEMO_DIR
from bench.merchant import MerchantClient, Receiver, receiver_thread, signed
from bench.simulators.control import set_fault
from bench.simulators.faults import NO_FAULT, Fault
from bench.simulators.side import side_of
from bench.traffic import payment_code
from protocols.masking import mask_pan
from switch.merchant.api import AHEAD_S
from switch.resolver import LEASE_S
from tests.conftest import (
    PAYMENT_WINDOW_MS,
    Ports,
    free_port,
    fresh_database,
    own_simulators,
    run,
    switch_with,
)
from tests.support import journal_row, received_ago

MERCHANT = "898310048990001"
KEY = (DEMO_DIR / "keys" / "merchants" / MERCHANT).read_bytes()
SCHEDULE = "[0.3, 0.3, 0.3, 0.3]"
CHANNELS = [
    "wechat",
    "alipay",
    "unionpay",
    "ecny",
    "inbank",
]  # the merchants' retry schedule here: four tries after the first


@pytest.fixture(scope="module")
def receiver():
    """The merchant's notification endpoint."""
    port = free_port()
    with receiver_thread(KEY, "127.0.0.1", port) as got:
        got.port = port
        yield got


@pytest.fixture(scope="module")
def merchant_stack(config_dir, ports, database_url, tmp_path_factory) -> Iterator[tuple[Path, str, Ports]]:
    """(configuration folder, journal, simulator sim_ports) of this module's own. The outbox is
    shared by every switch on a journal (any front end delivers any notification), and the other
    tests' switches have another schedule and URL; the simulators check pay requests against it."""
    folder = tmp_path_factory.mktemp("merchant-stack")
    url = run(fresh_database(database_url, "paysw_merchant"))
    with own_simulators(config_dir, ports, folder, url) as own:
        yield folder, url, own


@pytest.fixture(scope="module")
def merchant_db(merchant_stack) -> str:
    return merchant_stack[1]


@pytest.fixture(scope="module")
def sim_ports(merchant_stack) -> Ports:
    """This module's simulators (the session's ``ports`` are other tests')."""
    return merchant_stack[2]


@pytest.fixture(scope="module")
def merchant_switch(merchant_stack, receiver, tmp_path_factory):
    folder, url, _ = merchant_stack
    edits = [
        (r'notify_url = "http://127.0.0.1:\d+/notify"', f'notify_url = "http://127.0.0.1:{receiver.port}/notify"'),
        (r"(?m)^qr_expiry_s = 900$", f"qr_expiry_s = 900\nnotify_schedule_s = {SCHEDULE}"),
        (r"(\[channels\.inbank\]\n)", r"\1close_after_ms = 300000\n"),  # as WeChat Pay's 5 minutes
    ]
    yield from switch_with(folder, url, tmp_path_factory.mktemp("merchant"), "merchant", edits)


@pytest.fixture
def client(merchant_switch):
    return MerchantClient(f"http://127.0.0.1:{merchant_switch.merchant}", MERCHANT, KEY)


def order_no() -> str:
    return "T" + secrets.token_hex(8)


def scan(sim_ports, channel: str, qr_code: str = "", out_trade_no: str = "") -> dict:
    """The customer scans the order's code (or, as no customer could, its order number at the
    channel) and pays."""
    body = {"qr_code": qr_code} if qr_code else {"out_trade_no": out_trade_no}
    request = urllib.request.Request(
        f"http://127.0.0.1:{sim_ports.controls[channel]}/_sim/scan", data=msgspec.json.encode(body)
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return msgspec.json.decode(answer.read())
    except urllib.error.HTTPError as exc:
        return msgspec.json.decode(exc.read())


def wait_for(client: MerchantClient, number: str, state: str, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, order = client.get(number)
        assert status == 200, order
        if order["state"] == state or time.monotonic() > deadline:
            assert order["state"] == state, order
            return order
        time.sleep(0.1)


def notified(receiver: Receiver, number: str, timeout: float = 15) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [b for b in receiver.received if b["order_no"] == number]
        if found:
            time.sleep(0.5)  # any duplicate would come meanwhile
            return [b for b in receiver.received if b["order_no"] == number]
        time.sleep(0.1)
    return []


def rows(database_url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    async def read():
        conn = await asyncpg.connect(database_url)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    return run(read())


def notices(database_url: str, out_trade_no: str) -> list[str]:
    sql = "SELECT outcome FROM channel_notice WHERE out_trade_no = $1 ORDER BY id"
    return [r["outcome"] for r in rows(database_url, sql, out_trade_no)]


def kept_notices(database_url: str, out_trade_no: str, at_least: int = 1, timeout: float = 10) -> list[str]:
    """``notices`` once there are ``at_least``: a notification is kept after the order's state has
    moved (``switch.merchant.notices``), so an order seen approved may not have its notice yet."""
    deadline = time.monotonic() + timeout
    while len(kept := notices(database_url, out_trade_no)) < at_least and time.monotonic() < deadline:
        time.sleep(0.1)
    return kept


def out_trade_no_of(order: dict) -> str:
    return order["created_at"][:10].replace("-", "") + order["rrn"]


@pytest.mark.parametrize("channel", CHANNELS)
def test_a_qr_order_paid_is_recorded_from_the_notification_and_the_merchant_told_once(
    client, receiver, sim_ports, merchant_db, channel
):
    number = order_no()
    status, order = client.create_qr(number, 2500, "Latte", channel=channel)
    assert status == 200, order
    assert (order["state"], order["channel"], order["amount_fen"]) == ("PENDING", channel, 2500)
    assert order["qr_code"].startswith(side_of(channel).qr_prefix)
    assert scan(sim_ports, channel, order["qr_code"])["status"] == "PAID"
    paid = wait_for(client, number, "APPROVED")
    assert paid["channel_txn_id"]
    assert kept_notices(merchant_db, out_trade_no_of(order))[0] == "recorded"
    told = notified(receiver, number)
    assert [(b["state"], b["amount_fen"], b["rrn"]) for b in told] == [("APPROVED", 2500, order["rrn"])]
    # The same request again is the same order; the number with other details is refused.
    assert client.create_qr(number, 2500, "Latte", channel=channel)[1]["rrn"] == order["rrn"]
    assert client.create_qr(number, 2600, "Latte", channel=channel)[0] == 409


def test_a_lost_notification_leaves_the_payment_to_the_queries(client, sim_ports, merchant_db):
    set_fault(f"127.0.0.1:{sim_ports.controls['wechat']}", Fault(notice_drop=100))
    try:
        number = order_no()
        order = created(client, number, 1800, "Tea", channel="wechat")
        assert scan(sim_ports, "wechat", order["qr_code"])["status"] == "PAID"
        wait_for(client, number, "APPROVED")
    finally:
        set_fault(f"127.0.0.1:{sim_ports.controls['wechat']}", NO_FAULT)
    assert notices(merchant_db, out_trade_no_of(order)) == []


def test_a_notification_sent_twice_moves_the_order_once(client, receiver, sim_ports, merchant_db):
    set_fault(f"127.0.0.1:{sim_ports.controls['wechat']}", Fault(notice_twice=True))
    try:
        number = order_no()
        order = created(client, number, 1900, "Cake", channel="wechat")
        scan(sim_ports, "wechat", order["qr_code"])
        wait_for(client, number, "APPROVED")
        time.sleep(0.5)
    finally:
        set_fault(f"127.0.0.1:{sim_ports.controls['wechat']}", NO_FAULT)
    kept = kept_notices(merchant_db, out_trade_no_of(order), at_least=2)
    assert kept.count("recorded") == 1 and kept.count("unchanged") >= 1, kept
    assert len(notified(receiver, number)) == 1


def test_a_closed_order_can_no_longer_be_paid(client, sim_ports):
    number = order_no()
    order = created(client, number, 700, "Muffin", channel="wechat")
    status, closed = client.close(number)
    assert (status, closed["state"]) == (200, "CANCELLED")
    assert scan(sim_ports, "wechat", order["qr_code"])["status"] == "CLOSED"
    assert client.get(number)[1]["state"] == "CANCELLED"
    early = created(client, order_no(), 700, "Muffin", channel="inbank")
    assert client.close(early["order_no"])[1]["code"] == "TOO_SOON"  # the channel's own minimum wait


def test_replayed_badly_signed_or_stale_requests_are_refused_and_journal_nothing(client):
    number = order_no()
    water = {"merchant_id": MERCHANT, "order_no": number, "scene": "qr", "amount_fen": 500, "subject": "Water"}
    params = signed("POST", "/v1/orders", {**water, "channel": "wechat"}, KEY)
    forged = {**params, "amount_fen": 1}
    assert client.post("/v1/orders", forged) == (401, {"code": "BAD_SIGNATURE", "message": forged_message()})
    assert client.get(number)[0] == 404
    assert client.post("/v1/orders", params)[0] == 200
    replayed = client.post("/v1/orders", params)
    assert replayed[0] == 401 and replayed[1]["code"] == "REPLAYED"
    stale = signed("POST", "/v1/orders", {"merchant_id": MERCHANT, "order_no": order_no(), "scene": "qr",
                                          "amount_fen": 500, "subject": "Water"}, KEY)  # fmt: skip
    stale["timestamp"] -= 3_600_000
    stale["sign"] = signed_again(stale)
    assert client.post("/v1/orders", stale)[1]["code"] == "STALE_REQUEST"
    early = signed("POST", "/v1/orders", {"merchant_id": MERCHANT, "order_no": order_no(), "scene": "qr",
                                          "amount_fen": 500, "subject": "Water"}, KEY)  # fmt: skip
    early["timestamp"] += (AHEAD_S + 30) * 1000  # within the window, but further ahead than a fast clock
    early["sign"] = signed_again(early)
    assert client.post("/v1/orders", early)[1]["code"] == "STALE_REQUEST"
    other = MerchantClient(client.base_url, "898310048990002", KEY)  # a merchant without an API key
    assert other.create_qr(order_no(), 500)[1]["code"] == "UNAUTHORISED"
    assert client.create_qr(order_no(), 0)[1]["code"] == "INVALID_REQUEST"
    # The switch POSTs notifications only to the host configured for the merchant.
    elsewhere = client.create_qr(order_no(), 500, "Water", notify_url="https://169.254.169.254/latest/meta-data")
    assert elsewhere[0] == 400 and "notify_url" in elsewhere[1]["message"]
    assert client.call("POST", "/v1/orders", b"not json")[1]["code"] == "INVALID_JSON"
    # A signature is for its call: one made to look an order up does not close it.
    looked_up = signed("GET", f"/v1/orders/{number}", {"merchant_id": MERCHANT, "order_no": number}, KEY)
    del looked_up["order_no"]
    assert client.post(f"/v1/orders/{number}/close", looked_up)[1]["code"] == "BAD_SIGNATURE"
    assert client.get(number)[1]["state"] == "PENDING"


def forged_message() -> str:
    return "the signature does not verify"


def signed_again(params: dict) -> str:
    from hsm import algorithms
    from switch.merchant.signing import request_signing_input

    return algorithms.signer("hmac-sha256", KEY)(request_signing_input("POST", "/v1/orders", params))


def test_a_notification_about_no_order_is_kept_and_a_forged_one_refused(merchant_switch, merchant_db):
    from bench.simulators.channels.wechat import side
    from bench.simulators.side import Paid, RequestSeen
    from tests.test_connectors import Pair

    pair = Pair("wechat")
    unknown = f"2026120499{secrets.randbelow(10**10):010d}"
    order = RequestSeen("precreate", unknown, amount_fen=300, fields={"appid": pair.account.app_id,
                                                                        "mch_id": pair.account.mch_id})  # fmt: skip
    note = side.notice(order, Paid("CH0001", 300, time.time()), pair.channel_sign)
    url = f"http://127.0.0.1:{merchant_switch.merchant}/notify/wechat"
    with urllib.request.urlopen(urllib.request.Request(url, data=note.body), timeout=10) as answer:
        assert b"SUCCESS" in answer.read()
    assert notices(merchant_db, unknown) == ["unknown order"]
    forged = note.body.replace(b"<total_fee><![CDATA[300]]>", b"<total_fee><![CDATA[30000]]>")
    odd = re.sub(rb"<sign>.*?</sign>", "<sign>é</sign>".encode(), note.body)  # was a 500, and a traceback logged
    for refused in (forged, odd):
        with urllib.request.urlopen(urllib.request.Request(url, data=refused), timeout=10) as answer:
            assert b"FAIL" in answer.read()
    assert notices(merchant_db, unknown) == ["unknown order"]


def test_a_notification_naming_a_card_or_code_purchase_never_approves_it(merchant_switch, merchant_db):
    """A purchase by payment code whose terminal was told nothing (its front end stopped after the
    channel call): a channel's "paid" notification naming it leaves it to the resolver, which
    keeps the money only if the terminal was told so. (Before: the notification approved it, 00
    for a resend, while a resolver that had taken it was returning the money.)"""
    from bench.simulators.channels.wechat import side
    from bench.simulators.side import Paid, RequestSeen
    from switch.journal import Event, Journal, Report, State
    from tests.test_connectors import Pair
    from tests.test_journal import new_txn

    async def written_ahead() -> tuple:
        journal = await Journal.open(merchant_db, pool_size=2, max_batch=8)
        try:
            txn = new_txn(await journal.next_rrn(), amount=300)
            txn = txn._replace(channel="wechat", out_trade_no=f"N{txn.rrn}", merchant_id=MERCHANT)
            assert await journal.write_ahead(txn)
            return txn
        finally:
            await journal.close()

    async def stored(txn) -> tuple:
        journal = await Journal.open(merchant_db, pool_size=2, max_batch=8)
        try:
            found = await journal.find(txn.key)
            if found.state == State.RECEIVED:  # out of the way of the module's other tests
                assert await journal.record(Report(*txn.key, Event.REFUSED, "96", "", "", "", "", None)) is not None
            return found.state, found.response_code
        finally:
            await journal.close()

    txn = run(written_ahead())
    pair = Pair("wechat")
    order = RequestSeen("pay", txn.out_trade_no, amount_fen=300, fields={"appid": pair.account.app_id,
                                                                          "mch_id": pair.account.mch_id})  # fmt: skip
    note = side.notice(order, Paid("CH0002", 300, time.time()), pair.channel_sign)
    url = f"http://127.0.0.1:{merchant_switch.merchant}/notify/wechat"
    with urllib.request.urlopen(urllib.request.Request(url, data=note.body), timeout=10) as answer:
        assert b"SUCCESS" in answer.read()
    assert notices(merchant_db, txn.out_trade_no) == ["queried"]
    assert run(stored(txn)) == (State.RECEIVED, None)


def test_a_merchant_endpoint_down_gets_the_notification_once_up_and_dead_after_its_schedule(
    client, receiver, sim_ports, merchant_db
):
    receiver.down = True
    try:
        order = paid_order(client, sim_ports, 4200)
        time.sleep(0.8)  # a couple of tries fail meanwhile
    finally:
        receiver.down = False
    assert [b["state"] for b in notified(receiver, order["order_no"])] == ["APPROVED"]

    order = paid_while_down(client, receiver, sim_ports, merchant_db, 4300)
    row = outbox_row(merchant_db, order["rrn"])
    assert row["dead_at"] is not None and row["attempts"] == 5 and row["delivered_at"] is None, row
    assert "503" in row["last_error"]


def paid_while_down(client: MerchantClient, receiver: Receiver, sim_ports, merchant_db: str, amount_fen: int) -> dict:
    """An order paid while the merchant's endpoint is down, once its notification is dead (its
    whole schedule failed) or 15 s have passed."""
    receiver.down = True
    try:
        order = paid_order(client, sim_ports, amount_fen)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and outbox_row(merchant_db, order["rrn"])["dead_at"] is None:
            time.sleep(0.2)
    finally:
        receiver.down = False
    return order


def created(client: MerchantClient, number: str, amount_fen: int, subject: str, **extra) -> dict:
    status, order = client.create_qr(number, amount_fen, subject, **extra)
    assert status == 200, order
    return order


def paid_order(client: MerchantClient, sim_ports, amount_fen: int) -> dict:
    """A WeChat Pay QR order, created, scanned and paid, once the journal has it APPROVED."""
    number = order_no()
    order = created(client, number, amount_fen, "Sandwich", channel="wechat")
    scan(sim_ports, "wechat", order["qr_code"])
    return wait_for(client, number, "APPROVED")


def outbox_row(database_url: str, rrn: str) -> asyncpg.Record:
    return rows(database_url, "SELECT * FROM notice_outbox WHERE rrn = $1", rrn)[0]


def test_a_code_presented_over_http_is_paid_through_the_terminal_steps(client, merchant_db):
    rng = random.Random()
    number, code = order_no(), payment_code("alipay", "00", rng)
    status, order = client.pay_code(number, 990, code, "Bagel")
    assert status == 200, order
    assert (order["state"], order["channel"], order["response_code"]) == ("APPROVED", "alipay", "00")
    row = run(journal_row(merchant_db, order["rrn"]))
    assert (row["terminal_id"], row["stan"], row["txn_type"]) == ("HTTP", order["rrn"], "purchase")
    assert row["pan_masked"] == mask_pan(code)  # masked at the journal's door
    time.sleep(1.1)  # a retry comes later: the same request all the same
    assert client.pay_code(number, 990, code, "Bagel")[1]["rrn"] == order["rrn"]  # the same request: its order
    assert client.close(number)[1]["state"] == "APPROVED"  # a final order is as it is: refunded, never closed
    assert client.pay_code(number, 990, payment_code("alipay", "00", rng), "Bagel")[0] == 409  # another code
    status, refused = client.pay_code(order_no(), 990, payment_code("wechat", "51", rng), "Bagel")
    assert (status, refused["state"], refused["response_code"]) == (200, "DECLINED", "51")
    status, unknown = client.pay_code(order_no(), 990, "9" * 18, "Bagel")
    assert (status, unknown["code"]) == (400, "INVALID_CODE")


def test_a_refund_over_http_takes_only_what_is_left_and_once_per_refund_number(client, sim_ports, merchant_db):
    order = paid_order(client, sim_ports, 1000)
    number = order["order_no"]
    status, first = client.refund(number, "R" + number, 600)
    assert (status, first["state"], first["amount_fen"]) == (200, "APPROVED", 600)
    time.sleep(1.1)  # a retry comes later: the same refund all the same
    assert client.refund(number, "R" + number, 600)[1]["rrn"] == first["rrn"]  # the same refund, not another
    status, over = client.refund(number, "S" + number, 500)
    assert (status, over["code"]) == (409, "AMOUNT_EXCEEDED")
    status, rest = client.refund(number, "T" + number, 400)
    assert (status, rest["state"]) == (200, "APPROVED")
    assert client.get(number)[1]["refunded_fen"] == 1000
    assert client.get_refund(number, "T" + number)[1]["state"] == "APPROVED"
    assert client.refund(order_no(), "R1", 100)[0] == 404
    aged = paid_order(client, sim_ports, 500)  # past WeChat Pay's year: refused, never sent
    run(received_ago(merchant_db, aged["rrn"], dt.timedelta(days=366)))
    status, late = client.refund(aged["order_no"], "R" + aged["order_no"], 100)
    assert (status, late["code"]) == (409, "NOT_REFUNDABLE")
    assert client.get(aged["order_no"])[1]["refunded_fen"] == 0


def test_dead_notifications_are_listed_and_sent_again_by_paysw_notify(
    merchant_switch, client, receiver, sim_ports, merchant_db
):
    order = paid_while_down(client, receiver, sim_ports, merchant_db, 4400)
    listed = notify_cli(merchant_switch, "list", "--dead", "--merchant", MERCHANT)
    assert order["rrn"] in listed.stdout and "dead" in listed.stdout
    assert notify_cli(merchant_switch, "resend").returncode == 2  # nothing named: nothing sent
    assert notify_cli(merchant_switch, "resend", "--rrn", order["rrn"]).returncode == 0
    assert [b["state"] for b in notified(receiver, order["order_no"])] == ["APPROVED"]
    assert outbox_row(merchant_db, order["rrn"])["delivered_at"] is not None


def test_after_a_kill_the_outbox_resumes_and_open_qr_orders_are_paid_once(
    merchant_switch, client, receiver, sim_ports, merchant_db
):
    """Mid-schedule (one notification tried and failed), with QR orders open and one whose
    precreate is under way (written ahead, created at the channel, not answered), the switch is
    killed; the orders are paid while it is down. Once it is back, the notification is sent again,
    each order ends APPROVED (its notification retried, or found by query), and the merchant is
    told of each, once."""
    control = f"127.0.0.1:{sim_ports.controls['ecny']}"
    receiver.down = True
    try:
        before = paid_order(client, sim_ports, 4500)
        opened = [created(client, order_no(), 100 + i, "Open", channel="wechat") for i in range(3)]
        assert {o["state"] for o in opened} == {"PENDING"}
        set_fault(control, Fault(latency_ms=3000))
        creating = Creating(client, order_no(), random.randrange(10_000, 99_999) * 10 + 7, "ecny")
        creating.start()
        unanswered = written_ahead(merchant_db, creating.amount_fen)
        while outbox_row(merchant_db, before["rrn"])["attempts"] < 1:
            time.sleep(0.1)
        time.sleep(0.3)  # the precreate reached the channel
        merchant_switch.kill()
        assert rows(merchant_db, "SELECT state FROM txn WHERE rrn = $1", unanswered["rrn"])[0]["state"] == "RECEIVED"
        for order in opened:
            assert scan(sim_ports, "wechat", order["qr_code"])["status"] == "PAID"
        # Only the channel knows its code now; the customer who scanned it pays. Its notifications
        # are lost: the resolver finds the payment, and keeps it (the merchant was never told).
        set_fault(control, Fault(notice_drop=100))
        assert scan(sim_ports, "ecny", out_trade_no=unanswered["out_trade_no"])["status"] == "PAID"
    finally:
        set_fault(control, NO_FAULT)
        receiver.down = False
    merchant_switch.start()
    client = MerchantClient(f"http://127.0.0.1:{merchant_switch.merchant}", MERCHANT, KEY)
    # If the kill came between a claim of it and its outcome, it waits for its lease (notify_timeout_s x
    # BACKLOG + 10 s) to lapse first: a fixed 15 s was a race.
    assert [b["state"] for b in notified(receiver, before["order_no"], timeout=40)] == ["APPROVED"]
    # The orders paid meanwhile are the resolver's: their channels' notifications went to the old
    # merchant port (start() picks new ones). If the kill came during its query of one (claim to
    # its outcome), that order stays leased for LEASE_S from the claim: a fixed 30 s was a race.
    for order in [*opened, {"order_no": creating.number, "rrn": unanswered["rrn"], "amount_fen": creating.amount_fen}]:
        assert wait_for(client, order["order_no"], "APPROVED", timeout=LEASE_S + 15)["rrn"] == order["rrn"]
        assert [b["amount_fen"] for b in notified(receiver, order["order_no"])] == [order["amount_fen"]]


def notify_cli(switch, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "switch.cli", "notify", *args, "--config", str(switch.config)]
    return subprocess.run(command, env=switch.env, capture_output=True, text=True, timeout=60)


def test_an_unpaid_qr_order_is_closed_once_it_expires_and_never_before(client, receiver, sim_ports, merchant_db):
    """Queried meanwhile, WeChat Pay says "not paid" and Alipay "no such trade" (none until the
    customer scans): neither ends the order before it expires."""
    orders = {channel: created(client, order_no(), 800, "Scone", channel=channel) for channel in ("wechat", "alipay")}
    time.sleep(PAYMENT_WINDOW_MS / 1000 + 1)  # a terminal payment would be cancelled by now; not a QR order
    for order in orders.values():
        assert client.get(order["order_no"])[1]["state"] == "PENDING"
        run(expire(merchant_db, order["rrn"]))  # as if its 15 minutes had passed
    for order in orders.values():
        assert wait_for(client, order["order_no"], "CANCELLED")["rrn"] == order["rrn"]
        assert [b["state"] for b in notified(receiver, order["order_no"])] == ["CANCELLED"]
    # Closed at WeChat Pay; Alipay's close closes nothing there: the code lapsed.
    assert scan(sim_ports, "wechat", orders["wechat"]["qr_code"])["status"] == "CLOSED"


async def expire(database_url: str, rrn: str) -> None:
    """The order's expiry moved two minutes back (past the clocks' grace), and the resolver told."""
    conn = await asyncpg.connect(database_url)
    try:
        sql = "UPDATE txn SET expires_at = now() - interval '2 min', next_check_at = now() WHERE rrn = $1"
        await conn.execute(sql, rrn)
    finally:
        await conn.close()


def test_a_qr_order_runs_the_risk_rules_and_one_declined_never_reaches_its_channel(client, sim_ports, merchant_db):
    """The demo's rules: over 20,000 yuan is watched (a shadow rule), over 50,000 declined (61)."""
    watched = created(client, order_no(), 2_000_001, "Piano", channel="alipay")
    assert watched["state"] == "PENDING" and watched["qr_code"]
    declined = created(client, order_no(), 5_000_001, "Car", channel="alipay")
    assert (declined["state"], declined["response_code"], declined["qr_code"]) == ("DECLINED", "61", "")
    assert scan(sim_ports, "alipay", out_trade_no=out_trade_no_of(declined))["status"] == "NOTEXIST"  # never sent
    assert decisions(merchant_db, watched["rrn"]) == {("large-payment-watch", "shadow")}
    assert decisions(merchant_db, declined["rrn"]) == {
        ("large-payment-watch", "shadow"),
        ("single-payment-cap", "enforce"),
    }


def decisions(database_url: str, rrn: str) -> set[tuple[str, str]]:
    return {tuple(r) for r in rows(database_url, "SELECT rule_id, mode FROM risk_decision WHERE rrn = $1", rrn)}


class Creating(threading.Thread):
    """A QR order asked for in the background, its answer kept."""

    def __init__(self, client: MerchantClient, number: str, amount_fen: int, channel: str) -> None:
        super().__init__(daemon=True)
        self.client, self.number, self.amount_fen, self.channel = client, number, amount_fen, channel
        self.answer: tuple[int, dict] | None = None

    def run(self) -> None:
        try:
            self.answer = self.client.create_qr(self.number, self.amount_fen, "Tea", channel=self.channel)
        except OSError:  # the switch was killed under it
            self.answer = None


def written_ahead(database_url: str, amount_fen: int, timeout: float = 10) -> asyncpg.Record:
    """The RECEIVED row of the order of this (unique) amount, once written ahead."""
    sql = "SELECT * FROM txn WHERE terminal_id = 'HTTP' AND amount_fen = $1 AND state = 'RECEIVED'"
    deadline = time.monotonic() + timeout
    while not (found := rows(database_url, sql, amount_fen)):
        assert time.monotonic() < deadline, "the order was never written ahead"
        time.sleep(0.05)
    return found[0]


def test_a_notification_before_the_precreate_is_recorded_ends_the_order_once(client, receiver, sim_ports, merchant_db):
    """The channel's answer to the precreate is slow; meanwhile the customer pays and the channel's
    notification comes. It is recorded (the order is APPROVED from RECEIVED), the precreate's own
    answer then moves nothing, and the merchant is told APPROVED, once. While the precreate is
    under way the order cannot be closed (a close could cross its payment)."""
    control = f"127.0.0.1:{sim_ports.controls['ecny']}"
    amount_fen = random.randrange(10_000, 99_999) * 10 + 3
    set_fault(control, Fault(latency_ms=2500))
    try:
        creating = Creating(client, order_no(), amount_fen, "ecny")
        creating.start()
        row = written_ahead(merchant_db, amount_fen)
        assert client.close(creating.number)[1]["code"] == "NOT_CLOSABLE"
        time.sleep(0.3)  # the precreate reached the channel: its order is there
        assert scan(sim_ports, "ecny", out_trade_no=row["out_trade_no"])["status"] == "PAID"
        assert wait_for(client, creating.number, "APPROVED", timeout=2)["rrn"] == row["rrn"]
        creating.join(10)
    finally:
        set_fault(control, NO_FAULT)
    status, order = creating.answer
    assert (status, order["state"], order["response_code"]) == (200, "APPROVED", "00")
    assert kept_notices(merchant_db, row["out_trade_no"])[0] == "recorded"
    assert [b["state"] for b in notified(receiver, creating.number)] == ["APPROVED"]


def test_a_precreate_answered_too_late_keeps_its_code_and_the_order_is_paid_once(
    client, receiver, sim_ports, merchant_db
):
    """The channel answers the precreate after the switch's deadline: the merchant is told the
    order is UNKNOWN (never failed: the channel may have it), the late answer's code is kept with
    the order, and once the customer scans it the order is paid and the merchant told, once."""
    control = f"127.0.0.1:{sim_ports.controls['ecny']}"
    set_fault(control, Fault(latency_ms=6000))  # past the test switch's 5 s deadline
    try:
        number = order_no()
        status, order = client.create_qr(number, 1234, "Cake", channel="ecny")
        assert (status, order["state"], order["response_code"], order["qr_code"]) == (200, "UNKNOWN", "09", ""), order
    finally:
        set_fault(control, NO_FAULT)
    deadline = time.monotonic() + 10
    while not (order := client.get(number)[1])["qr_code"]:
        assert time.monotonic() < deadline, order
        time.sleep(0.1)
    assert order["state"] in ("UNKNOWN", "PENDING"), order  # not paid: nobody has scanned
    assert [r["op"] for r in rows(merchant_db, "SELECT op FROM late_answer WHERE stan = $1", order["rrn"])] == [
        "precreate"
    ]
    assert scan(sim_ports, "ecny", order["qr_code"])["status"] == "PAID"
    assert wait_for(client, number, "APPROVED")["rrn"] == order["rrn"]
    assert [b["state"] for b in notified(receiver, number)] == ["APPROVED"]


def test_an_order_number_asked_again_of_another_channel_is_refused_and_sends_nothing(client, sim_ports):
    number = order_no()
    first = created(client, number, 700, "Muffin", channel="wechat")
    status, again = client.create_qr(number, 700, "Muffin", channel="alipay")
    assert (status, again["code"]) == (409, "ORDER_NO_USED")
    assert scan(sim_ports, "alipay", out_trade_no=out_trade_no_of(first))["status"] == "NOTEXIST"
    assert client.get(number)[1]["channel"] == "wechat"
