"""QR orders (the customer scans the merchant's code) in each channel's wire format, both sides,
with the demo keys: precreate, close, a query of an order nobody has paid yet, and the channel's
payment notification, verified, with a tampered or misdirected one refused."""

import time

import pytest

from bench.simulators.side import ChannelVerdict, Paid, RequestSeen
from protocols import response_codes as rc
from protocols.channels import channel_of
from protocols.channels.base import Notice, form_encode
from protocols.channels.unionpay import flows as unionpay
from protocols.channels.wechat import flows as wechat
from protocols.channels.wechat.xml import from_xml, to_xml
from protocols.messages import CLOSE, NOT_FOUND, PRECREATE, QUERY, ChannelRequest, ChannelResult, Outcome
from tests.test_connectors import KINDS, WRITTEN_AHEAD, Pair

QR_KINDS = [kind for kind in KINDS if channel_of(kind).takes_qr]
NOTIFY_URL = "https://switch.example.cn/notify/wechat"

CLOSE_EXPECTED = {
    "DONE": (Outcome.APPROVED, rc.APPROVED),
    "NOTEXIST": (Outcome.APPROVED, rc.APPROVED),  # closed once past its expiry: it can never be paid
    "PAID": (Outcome.DECLINED, rc.DO_NOT_HONOUR),  # paid meanwhile: the query says so
    "SYSTEMERROR": (Outcome.UNKNOWN, rc.CHANNEL_UNAVAILABLE),
}


def qr_request(op: str, amount_fen: int = 2500, expires: float = 0.0) -> ChannelRequest:
    return ChannelRequest(
        9, op, "20261204000000001234", amount_fen, "", "SUB001", "HTTP", time.time() + 30,
        created=WRITTEN_AHEAD, subject="Coffee", notify_url=NOTIFY_URL, expires=expires or time.time() + 900,
    )  # fmt: skip


def precreated(pair: Pair, amount_fen: int = 2500) -> RequestSeen:
    seen = pair.read(pair.build(qr_request(PRECREATE, amount_fen)))
    assert isinstance(seen, RequestSeen)
    return seen


def test_every_built_in_http_channel_takes_qr_orders():
    assert KINDS == QR_KINDS


@pytest.mark.parametrize("kind", QR_KINDS)
def test_a_precreated_order_answers_the_code_to_scan_and_nothing_paid(kind):
    pair = Pair(kind)
    req = qr_request(PRECREATE)
    call = pair.build(req)
    assert call.path in pair.side.paths
    seen = pair.read(call)
    assert isinstance(seen, RequestSeen)
    assert (seen.op, seen.out_trade_no, seen.amount_fen) == (PRECREATE, req.out_trade_no, 2500)
    assert seen.fields["notify_url"] == NOTIFY_URL
    assert abs(float(seen.fields["expires_at"]) - req.expires) < 61  # some channels say it to the minute
    code = pair.side.qr_prefix + "abc123"
    result = pair.parse(req, pair.side.write(seen, ChannelVerdict("CREATED", qr_code=code), pair.channel_sign))
    assert (result.outcome, result.response_code, result.qr_code) == (Outcome.PENDING, rc.IN_PROGRESS, code)
    failed = pair.parse(req, pair.side.write(seen, ChannelVerdict("SYSTEMERROR"), pair.channel_sign))
    assert failed.outcome is Outcome.UNKNOWN  # it may exist: queried, then closed


# A channel that cannot close an order nobody has scanned (UnionPay's acp has no close: its close
# is a query) reads the close as a query of the order; these are the same verdicts in its words.
AS_QUERY = {"DONE": "NOTPAY", "NOTEXIST": "NOTEXIST", "PAID": "PAID", "SYSTEMERROR": "SYSTEMERROR"}
# Where a close that finds no order (Alipay: nobody scanned; UnionPay: no close at all; the bank's:
# a create still on its way) cannot stop the order being paid later, only its expiry ends it.
LAPSE_ONLY = {"alipay", "unionpay", "ecny", "inbank"}


def closed(kind: str, status: str, expires: float) -> ChannelResult:
    pair = Pair(kind)
    req = qr_request(CLOSE, expires=expires)
    seen = pair.read(pair.build(req))
    assert isinstance(seen, RequestSeen)
    assert seen.out_trade_no == req.out_trade_no
    verdict = AS_QUERY[status] if seen.op == QUERY else status
    assert seen.op == CLOSE or kind in LAPSE_ONLY
    return pair.parse(req, pair.side.write(seen, ChannelVerdict(verdict), pair.channel_sign))


@pytest.mark.parametrize("kind", QR_KINDS)
@pytest.mark.parametrize("status", list(CLOSE_EXPECTED))
def test_every_close_verdict_round_trips_past_the_expiry(kind, status):
    result = closed(kind, status, time.time() - 3600)
    assert (result.outcome, result.response_code) == CLOSE_EXPECTED[status], result


@pytest.mark.parametrize("kind", QR_KINDS)
def test_before_its_expiry_an_unscanned_order_is_closed_only_where_the_channel_closes_it(kind):
    """Alipay has no trade until the customer scans, UnionPay no close, and the bank's create may
    still be on its way: a close that finds no order changes nothing there, so it is not the
    order's end before it expires. WeChat Pay's close bars the number whatever it finds."""
    result = closed(kind, "NOTEXIST", time.time() + 600)
    expected = Outcome.DECLINED if kind in LAPSE_ONLY else Outcome.APPROVED
    assert result.outcome is expected, result


@pytest.mark.parametrize("kind", QR_KINDS)
def test_a_query_of_an_order_nobody_paid_yet_is_never_a_failure(kind):
    """WeChat says NOTPAY; Alipay has no trade until the customer scans, so "not found": neither
    is the order's end (the resolver closes it only once it has expired)."""
    pair = Pair(kind)
    req = qr_request(QUERY)
    seen = pair.read(pair.build(req))
    result = pair.parse(req, pair.side.write(seen, ChannelVerdict("NOTPAY"), pair.channel_sign))
    assert result.outcome is Outcome.PENDING or (result.outcome, result.channel_code) == (Outcome.DECLINED, NOT_FOUND)


def notice_of(pair: Pair, amount_fen: int = 2500) -> tuple[bytes, dict[str, str]]:
    note = pair.side.notice(precreated(pair, amount_fen), Paid("CHTX0042", amount_fen, time.time()), pair.channel_sign)
    return note.body, {"Content-Type": note.content_type}


@pytest.mark.parametrize("kind", QR_KINDS)
def test_a_payment_notification_reads_verified_and_its_ack_stops_the_retries(kind):
    pair = Pair(kind)
    body, headers = notice_of(pair)
    notice = channel_of(kind).notice.read(body, headers, pair.account, pair.crypto)
    assert notice == Notice(
        out_trade_no="20261204000000001234", amount_fen=2500, paid=True, channel_txn_id="CHTX0042",
        channel_code=notice.channel_code,
    )  # fmt: skip
    ack = channel_of(kind).notice.ack
    assert pair.side.notice_acked(ack.status, ack.body)
    nack = channel_of(kind).notice.nack("signature")
    assert not pair.side.notice_acked(nack.status, nack.body)


@pytest.mark.parametrize("kind", QR_KINDS)
def test_a_tampered_notification_is_refused(kind):
    pair = Pair(kind)
    body, headers = notice_of(pair, 2500)
    forged = body.replace(b"2500", b"2400") if b"2500" in body else body.replace(b"25.00", b"24.00")
    assert forged != body
    assert isinstance(channel_of(kind).notice.read(forged, headers, pair.account, pair.crypto), str)
    assert isinstance(channel_of(kind).notice.read(b"garbage", headers, pair.account, pair.crypto), str)


@pytest.mark.parametrize("kind", QR_KINDS)
def test_a_notification_for_another_account_is_refused(kind):
    """Signed by the channel all right, but for another merchant account of the channel's."""
    pair = Pair(kind)
    body, headers = notice_of(pair)
    fields = {name: getattr(pair.account, name) for name in pair.account.__struct_fields__}
    other = type(pair.account)(**{n: v if n == "keys" else f"OTHER{v}" for n, v in fields.items()})
    assert isinstance(channel_of(kind).notice.read(body, headers, other, pair.crypto), str)


@pytest.mark.parametrize("kind", QR_KINDS)
@pytest.mark.parametrize("verdict", ["CREATED", "NOTPAY"])
def test_a_channel_signed_answer_is_no_notification(kind, verdict):
    """The channel's own answers are signed as its notifications are: one taken off the line (a
    QR order's creation, or a query finding it unpaid) and posted to the notification address
    must not read as the order paid. WeChat Pay's query answer said result_code SUCCESS (the query
    worked) with trade_state NOTPAY, and was read as paid (found in review)."""
    pair = Pair(kind)
    op = PRECREATE if verdict == "CREATED" else QUERY
    req = qr_request(op)
    seen = pair.read(pair.build(req))
    answer = pair.side.write(seen, ChannelVerdict(verdict, qr_code="https://qr.example/x"), pair.channel_sign)
    read = channel_of(kind).notice.read(answer.body, answer.headers, pair.account, pair.crypto)
    assert isinstance(read, str) or not read.paid, read


def resigned(kind: str, body: bytes, change) -> bytes:
    """A notification's document changed by ``change`` and signed again by the channel."""
    pair = Pair(kind)
    if kind == "wechat":
        doc = from_xml(body)
        doc.pop("sign")
        change(doc)
        doc["sign"] = pair.channel_sign(wechat.signing_input(doc))
        return to_xml(doc)
    doc = unionpay.read_form(body)
    doc.pop("signature")
    change(doc)
    doc["signature"] = pair.channel_sign(unionpay.signing_input(doc))
    return form_encode(doc)


@pytest.mark.parametrize(
    ("kind", "change"),
    [
        ("wechat", lambda doc: doc.update(trade_state="NOTPAY")),  # an order query's answer, unpaid
        ("wechat", lambda doc: doc.pop("transaction_id")),
        ("unionpay", lambda doc: [doc.pop(k) for k in ("queryId", "traceNo", "settleAmt")]),  # the application's answer
        ("unionpay", lambda doc: doc.update(txnSubType="06")),  # a pay's answer, by the customer's code
    ],
)
def test_a_channel_signed_document_that_is_no_payment_notification_is_refused(kind, change):
    """Signed by the channel, of a notification's shape, but what the channel answers (a query
    finding the order unpaid, the code's application), not what it notifies: refused, never read
    as the order paid (found in review: WeChat Pay's query answer with trade_state NOTPAY was)."""
    pair = Pair(kind)
    body, headers = notice_of(pair)
    assert not isinstance(channel_of(kind).notice.read(body, headers, pair.account, pair.crypto), str)
    changed = resigned(kind, body, change)
    assert isinstance(channel_of(kind).notice.read(changed, headers, pair.account, pair.crypto), str)
