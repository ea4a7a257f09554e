"""UnionPay QR through the acp gateway. The merchant scans the customer's code: consumption
(``txnType`` 01, ``txnSubType`` 06), transaction query (00, on ``queryTrans.do``), consumption
undo (31) and refund (04, 退货). The customer scans the merchant's: the QR code application
(申请二维码: 01 / 07, answering the ``qrCode`` to show, payable until ``payTimeout``, its
notification to ``backUrl``), its close, and the notification (``read_notice``). Each a typed
request and answer with its builder and parser.

Form parameters (``version`` 5.1.0, ``signMethod`` 01): the signing input is the hex SHA-256 of
the sorted ``k=v&...`` string of every non-empty parameter but ``signature``, signed
SHA256withRSA, base64. Answers are form-encoded and signed the same way. ``respCode`` 00 is
success; 03 / 04 mean the state is unknown and 05 that it was accepted and is in progress: both
are resolved by query (acp's own guidance), whose ``origRespCode`` gives the original's state; 34
is "no such transaction". A query names its original by ``orderId`` and ``txnTime``, so the pay's
``txnTime`` is the transaction's write-ahead time, known again at recovery. The undo and the
refund are orders of their own (order ids ``<orderId>C`` and the refund number), tied to the
original by ``origQryId`` and ``origOrderId``. The business refusals the simulator produces carry
the ISO-derived codes UnionPay uses for them (51, 54, 14); any other code is a refusal (01,
"交易失败").

acp has no close of a QR code applied for: the order lapses at its ``payTimeout``. So the close
is a query (``queryTrans.do``) read for what it says of the order's end: paid, not closed; not
paid (or no such order) and past its ``payTimeout``, over (closed: it can never be paid); not paid
before then, not closed (the order is still payable; the resolver asks again once it expires).

The notification is a form POST signed like the answers, for a paid order only (respCode 00),
and names our account by ``reqReserved``, echoed from the application (``merId`` may be the
merchant's own number, which the account does not list). UnionPay takes HTTP 200 (or 302) as
received, whatever the body, and sends it again 1, 2, 4 and 5 minutes apart otherwise.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping
from typing import TypeVar

import msgspec
from msgspec import Struct

from protocols import response_codes as rc
from protocols.channels.base import (
    Account,
    Crypto,
    Flow,
    HttpAnswer,
    HttpCall,
    Notice,
    NoticeReader,
    another_order,
    approved,
    created,
    declined,
    form_decode,
    form_encode,
    lapsed,
    not_found,
    pending,
    sorted_query,
    unknown,
    unprocessed,
)
from protocols.messages import CANCEL, CLOSE, PAY, PRECREATE, QUERY, REFUND, ChannelRequest, ChannelResult, Outcome
from protocols.statements import CST

BACK_TRANS = "/gateway/api/backTransReq.do"
QUERY_TRANS = "/gateway/api/queryTrans.do"
PATHS = {
    PAY: BACK_TRANS,
    QUERY: QUERY_TRANS,
    CANCEL: BACK_TRANS,
    REFUND: BACK_TRANS,
    PRECREATE: BACK_TRANS,
    CLOSE: QUERY_TRANS,  # no close in acp: see the module's docstring
}
CONTENT_TYPE = "application/x-www-form-urlencoded;charset=UTF-8"
VERSION = "5.1.0"
SIGN_METHOD = "01"  # RSA over the SHA-256 hex of the sorted string
CNY = "156"
NO_SUCH_TXN = "34"
FORMAT_ERROR = "30"  # the gateway's "format or signature error": it did not process the request

_SKIP = frozenset({"signature"})
_IN_DOUBT = {"03", "04", "05"}
UNDER_WAY_S = 600.0  # close: how long past its expiry a code still "in doubt" may be being paid
_PAY_DECLINES = {"51": rc.INSUFFICIENT_FUNDS, "54": rc.EXPIRED_CODE, "14": rc.INVALID_PAYMENT_CODE}


class UnionPayAccount(Account, frozen=True, kw_only=True, forbid_unknown_fields=True):
    mch_id: str  # merId: the acquirer's merchant number (a merchant's own, when it has one, wins)
    cert_id: str  # certId: the serial number of the signing certificate UnionPay issued


# -- requests: every one is an order in the same envelope -----------------------------------------


class Envelope(Struct, kw_only=True):
    version: str = VERSION
    encoding: str = "UTF-8"
    signMethod: str = SIGN_METHOD
    txnType: str
    txnSubType: str = "00"
    bizType: str = "000000"
    accessType: str = "0"  # a merchant's own access
    channelType: str = "08"  # mobile
    merId: str
    orderId: str
    txnTime: str  # the order's time, YYYYMMDDhhmmss Beijing time
    certId: str


class Consume(Envelope, kw_only=True):
    txnType: str = "01"
    txnSubType: str = "06"  # by the customer's QR code
    txnAmt: str  # fen
    currencyCode: str = CNY
    qrNo: str
    termId: str


class CardConsume(Consume, kw_only=True):
    pinBlock: str  # ISO 9564 format 0 under the zone PIN key shared with UnionPay


class Query(Envelope, kw_only=True):
    txnType: str = "00"


class Undo(Envelope, kw_only=True):
    txnType: str = "31"
    origQryId: str
    origOrderId: str
    txnAmt: str  # fen
    currencyCode: str = CNY


class Refund(Undo, kw_only=True):
    txnType: str = "04"


class QrApply(Envelope, kw_only=True):
    txnType: str = "01"
    txnSubType: str = "07"  # the customer scans the merchant's code
    txnAmt: str  # fen
    currencyCode: str = CNY
    backUrl: str  # where the notification goes
    payTimeout: str  # YYYYMMDDhhmmss Beijing time: no payment is taken after it
    termId: str
    reqReserved: str  # echoed in the notification: our account's merchant number


# -- answers (past a readable respCode and a verified signature) ----------------------------------


class Answer(Struct):
    respCode: str
    respMsg: str = ""
    queryId: str = ""


A = TypeVar("A", bound=Answer)


class QueryAnswer(Answer):
    origRespCode: str = ""
    origRespMsg: str = ""


class QrAnswer(Answer):
    qrCode: str = ""


class NotifyForm(Struct):
    """A notification, past its verified signature."""

    txnType: str = ""
    txnSubType: str = ""
    respCode: str = ""
    orderId: str = ""
    txnAmt: str = ""  # fen
    queryId: str = ""
    reqReserved: str = ""
    traceNo: str = ""  # a payment's: the QR code's application answer, of the same type, has none
    settleAmt: str = ""


def signing_input(params: Mapping[str, str]) -> bytes:
    return hashlib.sha256(sorted_query(params, _SKIP).encode()).hexdigest().encode()


def txn_time(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, CST).strftime("%Y%m%d%H%M%S")


def signed_form(request: Struct, crypto: Crypto) -> bytes:
    params = msgspec.structs.asdict(request)
    params["signature"] = crypto.sign(signing_input(params))
    return form_encode(params)


def read_form(body: bytes) -> dict[str, str]:
    return form_decode(body.decode("utf-8", "replace"))


def _envelope(req: ChannelRequest, account: UnionPayAccount, order_id: str, order_time: float) -> dict[str, str]:
    return {
        "merId": req.merchant_channel_id or account.mch_id,
        "orderId": order_id,
        "txnTime": txn_time(order_time),
        "certId": account.cert_id,
    }


def _call(req: ChannelRequest, request: Struct, crypto: Crypto) -> HttpCall:
    return HttpCall(PATHS[req.op], signed_form(request, crypto), CONTENT_TYPE)


def order_id(req: ChannelRequest) -> str:
    """The order a request is about at acp: the payment's (pay, query, and the close, which is a
    query); an undo's and a refund's are orders of their own."""
    if req.op == CANCEL:
        return req.out_trade_no + "C"
    return req.refund_no if req.op == REFUND else req.out_trade_no


def _read(req: ChannelRequest, answer: HttpAnswer, crypto: Crypto, shape: type[A]) -> A | ChannelResult:
    """The answer, or the result it already decides (no answer to trust, or the gateway's
    refusal to process the request)."""
    if answer.status != 200:
        return unknown(req, f"HTTP{answer.status}")
    doc = read_form(answer.body)
    code = doc.get("respCode", "")
    if not code:
        return unknown(req, "BADFORM", "unreadable answer")
    if code == FORMAT_ERROR and "signature" not in doc:  # refused unread: certainly not processed
        return unprocessed(req, code, doc.get("respMsg", ""))
    if not crypto.verify(signing_input(doc), doc.get("signature", "")):
        return unknown(req, "BADSIGN", "answer signature")
    return another_order(req, doc.get("orderId", ""), order_id(req)) or msgspec.convert(doc, shape)


# -- the four flows -------------------------------------------------------------------------------


def build_pay(req: ChannelRequest, account: UnionPayAccount, crypto: Crypto, now: float) -> HttpCall:
    # The order time is the write-ahead's, so that a query after a restart names the same order.
    envelope = _envelope(req, account, order_id(req), req.created or now)
    fields = {"txnAmt": str(req.amount_fen), "qrNo": req.auth_code, "termId": req.terminal_id}
    if req.pin_block:  # a card with its PIN, already under the zone PIN key
        return _call(req, CardConsume(**envelope, **fields, pinBlock=req.pin_block), crypto)
    return _call(req, Consume(**envelope, **fields), crypto)


def parse_pay(req: ChannelRequest, answer: HttpAnswer, crypto: Crypto) -> ChannelResult:
    got = _read(req, answer, crypto, Answer)
    if isinstance(got, ChannelResult):
        return got
    code, text = got.respCode, got.respMsg
    if code == "00":
        return approved(req, code, got.queryId)
    if code == "05":
        return pending(req, code, text, got.queryId)
    if code in _IN_DOUBT:
        return unknown(req, code, text)
    return declined(req, _PAY_DECLINES.get(code, rc.DO_NOT_HONOUR), code, text)


def build_query(req: ChannelRequest, account: UnionPayAccount, crypto: Crypto, now: float) -> HttpCall:
    return _call(req, Query(**_envelope(req, account, order_id(req), req.created or now)), crypto)


def parse_query(req: ChannelRequest, answer: HttpAnswer, crypto: Crypto) -> ChannelResult:
    got = _read(req, answer, crypto, QueryAnswer)
    if isinstance(got, ChannelResult):
        return got
    if got.respCode == NO_SUCH_TXN:
        return not_found(req, got.respMsg)
    if got.respCode != "00":
        return unknown(req, got.respCode, got.respMsg)
    original = got.origRespCode
    if original == "00":
        return approved(req, original, got.queryId)
    if original in _IN_DOUBT:
        return pending(req, original, got.origRespMsg, got.queryId)
    return declined(req, rc.DO_NOT_HONOUR, original, got.origRespMsg)


def _against_original(req: ChannelRequest) -> dict[str, str]:
    return {"origQryId": req.channel_txn_id, "origOrderId": req.out_trade_no, "txnAmt": str(req.amount_fen)}


def build_cancel(req: ChannelRequest, account: UnionPayAccount, crypto: Crypto, now: float) -> HttpCall:
    request = Undo(**_envelope(req, account, order_id(req), now), **_against_original(req))
    return _call(req, request, crypto)


def parse_cancel(req: ChannelRequest, answer: HttpAnswer, crypto: Crypto) -> ChannelResult:
    got = _read(req, answer, crypto, Answer)
    if isinstance(got, ChannelResult):
        return got
    if got.respCode == NO_SUCH_TXN:
        return approved(req, got.respCode, "")  # nothing to undo
    return _undo_result(req, got)


def build_refund(req: ChannelRequest, account: UnionPayAccount, crypto: Crypto, now: float) -> HttpCall:
    request = Refund(**_envelope(req, account, order_id(req), now), **_against_original(req))
    return _call(req, request, crypto)


def parse_refund(req: ChannelRequest, answer: HttpAnswer, crypto: Crypto) -> ChannelResult:
    got = _read(req, answer, crypto, Answer)
    if isinstance(got, ChannelResult):
        return got
    return _undo_result(req, got)


def _undo_result(req: ChannelRequest, got: Answer) -> ChannelResult:
    """An undo's or a refund's answer: money given back, in doubt, or refused."""
    if got.respCode == "00":
        return approved(req, got.respCode, got.queryId)
    if got.respCode in _IN_DOUBT:
        return unknown(req, got.respCode, got.respMsg)
    return declined(req, rc.DO_NOT_HONOUR, got.respCode, got.respMsg)


def build_precreate(req: ChannelRequest, account: UnionPayAccount, crypto: Crypto, now: float) -> HttpCall:
    # The order time is the write-ahead's, as a pay's: the query names the order by it.
    request = QrApply(
        **_envelope(req, account, order_id(req), req.created or now),
        txnAmt=str(req.amount_fen),
        backUrl=req.notify_url,
        payTimeout=txn_time(req.expires),
        termId=req.terminal_id,
        reqReserved=account.mch_id,
    )
    return _call(req, request, crypto)


def parse_precreate(req: ChannelRequest, answer: HttpAnswer, crypto: Crypto) -> ChannelResult:
    got = _read(req, answer, crypto, QrAnswer)
    if isinstance(got, ChannelResult):
        return got
    if got.respCode == "00" and got.qrCode:
        return created(req, got.respCode, got.qrCode, got.queryId)
    if got.respCode == "00":  # no code to show, yet it may exist
        return unknown(req, "NOQRCODE", got.respMsg)
    if got.respCode in _IN_DOUBT:
        return unknown(req, got.respCode, got.respMsg)
    return declined(req, rc.DO_NOT_HONOUR, got.respCode, got.respMsg)


def build_close(req: ChannelRequest, account: UnionPayAccount, crypto: Crypto, now: float) -> HttpCall:
    return build_query(req, account, crypto, now)


def parse_close(req: ChannelRequest, answer: HttpAnswer, crypto: Crypto) -> ChannelResult:
    found = parse_query(req, answer, crypto)
    if found.outcome is Outcome.UNKNOWN:
        return found
    if found.outcome is Outcome.APPROVED:
        return declined(req, rc.DO_NOT_HONOUR, found.channel_code, "paid: not closed")
    # "In doubt" (03/04/05) is also how a code nobody used reads: a payment under way when the
    # code expired has long finished once UNDER_WAY_S more have passed.
    if found.outcome is Outcome.PENDING and not lapsed(req, UNDER_WAY_S):
        return unknown(req, found.channel_code, "a payment may be under way: asked again")
    if lapsed(req):
        return approved(req, "LAPSED", "")
    return declined(req, rc.DO_NOT_HONOUR, found.channel_code, "not paid yet: it lapses at its payTimeout")


# UnionPay reads only the status: 200 (or 302) received, anything else sent again.
NOTICE_ACK = HttpAnswer(200, b"ok", {"Content-Type": "text/plain"})


def read_notice(body: bytes, headers: Mapping[str, str], account: UnionPayAccount, crypto: Crypto) -> Notice | str:
    doc = read_form(body)
    if not crypto.verify(signing_input(doc), doc.get("signature", "")):
        return "signature"
    got = msgspec.convert(doc, NotifyForm)
    if got.reqReserved != account.mch_id:
        return "not our account"
    if (got.txnType, got.txnSubType, got.respCode) != ("01", "07", "00"):  # successful payments only
        return f"not a payment's success: txnType {got.txnType}/{got.txnSubType}, respCode {got.respCode}"
    # The application's answer is signed alike, of the same type, with respCode 00 and our
    # reqReserved echoed: a payment's notification carries what only a payment has.
    if not (got.queryId and got.traceNo and got.settleAmt):
        return "no payment's queryId, traceNo and settleAmt: an answer, not a notification"
    if not got.orderId or not got.txnAmt.isdigit():
        return "no order or amount"
    return Notice(
        out_trade_no=got.orderId, amount_fen=int(got.txnAmt), paid=True, channel_txn_id=got.queryId,
        channel_code=got.respCode,
    )  # fmt: skip


def nack_notice(reason: str) -> HttpAnswer:
    return HttpAnswer(400, b"refused", {"Content-Type": "text/plain"})


FLOWS = {
    PAY: Flow(build_pay, parse_pay),
    QUERY: Flow(build_query, parse_query),
    CANCEL: Flow(build_cancel, parse_cancel),
    REFUND: Flow(build_refund, parse_refund),
    PRECREATE: Flow(build_precreate, parse_precreate),
    CLOSE: Flow(build_close, parse_close),
}
NOTICE = NoticeReader(read_notice, NOTICE_ACK, nack_notice)
