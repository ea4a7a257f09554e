"""WeChat Pay v2, merchant scans the customer's payment code: ``pay/micropay``,
``pay/orderquery``, ``secapi/pay/reverse`` and ``secapi/pay/refund``; and the customer scans the
merchant's (NATIVE): ``pay/unifiedorder`` (answers the ``code_url`` to show), ``pay/closeorder``
and the payment notification (``read_notice``). Each a typed request and answer with its builder
and parser.

XML over HTTPS; the signature is HMAC-SHA256 over the non-empty parameters sorted by name as
``k=v&...`` with ``&key=<API key>`` appended, upper-case hex (the ``&key=`` suffix and the key
itself are the HSM's business: scheme ``hmac-sha256-appended-key``). Answers carry
``return_code`` (communication) and ``result_code`` / ``err_code`` (business). On micropay,
``USERPAYING`` means the customer is still confirming and ``SYSTEMERROR`` / ``BANKERROR`` that the
result is unknown and must be queried. Reverse answers ``recall=Y`` while it must be called again.
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
    another_amount,
    another_order,
    approved,
    created,
    declined,
    not_found,
    pending,
    sorted_query,
    unknown,
    unprocessed,
)
from protocols.channels.wechat.xml import from_xml, to_xml
from protocols.messages import CANCEL, CLOSE, PAY, PRECREATE, QUERY, REFUND, ChannelRequest, ChannelResult
from protocols.statements import CST

PATHS = {
    PAY: "/pay/micropay",
    QUERY: "/pay/orderquery",
    CANCEL: "/secapi/pay/reverse",
    REFUND: "/secapi/pay/refund",
    PRECREATE: "/pay/unifiedorder",
    CLOSE: "/pay/closeorder",
}
CONTENT_TYPE = "text/xml; charset=utf-8"
SIGN_TYPE = "HMAC-SHA256"

_PAY_UNKNOWN = {"SYSTEMERROR", "BANKERROR", "ORDERPAID"}
_PAY_DECLINES = {
    "NOTENOUGH": rc.INSUFFICIENT_FUNDS,
    "AUTHCODEEXPIRE": rc.EXPIRED_CODE,
    "AUTH_CODE_INVALID": rc.INVALID_PAYMENT_CODE,
    "AUTH_CODE_ERROR": rc.INVALID_PAYMENT_CODE,
}
_QUERY_PAID = {"SUCCESS", "REFUND"}  # REFUND: paid, then (partly) refunded
_QUERY_PAYING = {"USERPAYING", "NOTPAY"}
_QUERY_CLOSED = {"CLOSED", "REVOKED", "PAYERROR"}
_CANCEL_RETRY = {"SYSTEMERROR", "USERPAYING"}


class WeChatAccount(Account, frozen=True, kw_only=True, forbid_unknown_fields=True):
    app_id: str  # appid: the service provider's official account / app id
    mch_id: str  # the service provider's merchant number (each merchant is a sub_mch_id under it)


# -- requests: every one names the order in the same envelope ------------------------------------


class Envelope(Struct, kw_only=True):
    appid: str
    mch_id: str
    sub_mch_id: str
    nonce_str: str
    sign_type: str = SIGN_TYPE
    out_trade_no: str


class Micropay(Envelope, kw_only=True):
    device_info: str
    body: str
    total_fee: str  # fen
    fee_type: str = "CNY"
    spbill_create_ip: str = "127.0.0.1"
    auth_code: str


class OrderQuery(Envelope, kw_only=True):
    pass


class UnifiedOrder(Envelope, kw_only=True):
    device_info: str
    body: str
    total_fee: str  # fen
    fee_type: str = "CNY"
    spbill_create_ip: str = "127.0.0.1"
    time_expire: str  # yyyyMMddHHmmss, Beijing time
    notify_url: str
    trade_type: str = "NATIVE"
    product_id: str  # NATIVE requires it: ours is the order number


class CloseOrder(Envelope, kw_only=True):
    pass


class Reverse(Envelope, kw_only=True):
    pass


class Refund(Envelope, kw_only=True):
    out_refund_no: str
    total_fee: str  # fen, the payment's whole amount
    refund_fee: str  # fen
    refund_fee_type: str = "CNY"


# -- answers (past return_code SUCCESS and a verified signature) ----------------------------------


class Answer(Struct):
    result_code: str = ""
    err_code: str = ""
    err_code_des: str = ""


A = TypeVar("A", bound=Answer)


class MicropayAnswer(Answer):
    transaction_id: str = ""
    total_fee: str = ""  # fen, echoed with a success


class OrderQueryAnswer(Answer):
    trade_state: str = ""
    trade_state_desc: str = ""
    transaction_id: str = ""


class UnifiedOrderAnswer(Answer):
    code_url: str = ""
    prepay_id: str = ""


class NotifyDoc(Struct):
    """A payment notification, past its verified signature."""

    appid: str = ""
    mch_id: str = ""
    result_code: str = ""
    out_trade_no: str = ""
    total_fee: str = ""
    transaction_id: str = ""
    time_end: str = ""
    trade_state: str = ""  # an order query's answer has one, a notification none


class ReverseAnswer(Answer):
    recall: str = ""  # Y: call reverse again


class RefundAnswer(Answer):
    refund_id: str = ""


def signing_input(params: Mapping[str, str]) -> bytes:
    return sorted_query(params).encode()


def nonce(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def signed_xml(request: Struct, crypto: Crypto) -> bytes:
    params = msgspec.structs.asdict(request)
    params["sign"] = crypto.sign(signing_input(params))
    return to_xml(params)


def _envelope(req: ChannelRequest, account: WeChatAccount, now: float) -> dict[str, str]:
    return {
        "appid": account.app_id,
        "mch_id": account.mch_id,
        "sub_mch_id": req.merchant_channel_id,
        "nonce_str": nonce(req.op, req.out_trade_no, repr(now)),
        "out_trade_no": req.out_trade_no,
    }


def _call(req: ChannelRequest, request: Struct, crypto: Crypto) -> HttpCall:
    return HttpCall(PATHS[req.op], signed_xml(request, crypto), CONTENT_TYPE)


def _read(req: ChannelRequest, answer: HttpAnswer, crypto: Crypto, shape: type[A]) -> A | ChannelResult:
    """The answer's business part, or the result it already decides (no answer to trust, or a
    communication-level refusal)."""
    if answer.status != 200:
        return unknown(req, f"HTTP{answer.status}")
    try:
        doc = from_xml(answer.body)
    except Exception:
        return unknown(req, "BADXML", "unreadable answer")
    if doc.get("return_code") != "SUCCESS":
        # Communication-level failure (bad signature, bad parameters): not processed.
        return unprocessed(req, "FAIL", doc.get("return_msg", ""))
    if not crypto.verify(signing_input(doc), doc.get("sign", "")):
        return unknown(req, "BADSIGN", "answer signature")
    return another_order(req, doc.get("out_trade_no", ""), req.out_trade_no) or msgspec.convert(doc, shape)


# -- the four flows -------------------------------------------------------------------------------


def build_pay(req: ChannelRequest, account: WeChatAccount, crypto: Crypto, now: float) -> HttpCall:
    request = Micropay(
        **_envelope(req, account, now),
        device_info=req.terminal_id,
        body=req.subject,
        total_fee=str(req.amount_fen),
        auth_code=req.auth_code,
    )
    return _call(req, request, crypto)


def parse_pay(req: ChannelRequest, answer: HttpAnswer, crypto: Crypto) -> ChannelResult:
    got = _read(req, answer, crypto, MicropayAnswer)
    if isinstance(got, ChannelResult):
        return got
    named = int(got.total_fee) if got.total_fee.isdigit() else -1 if got.total_fee else 0  # -1: not a number
    if mismatch := another_amount(req, named):
        return mismatch
    err, text = got.err_code, got.err_code_des
    if got.result_code == "SUCCESS":
        return approved(req, "SUCCESS", got.transaction_id)
    if err == "USERPAYING":
        return pending(req, err, text)
    if err in _PAY_UNKNOWN:
        return unknown(req, err, text)
    return declined(req, _PAY_DECLINES.get(err, rc.DO_NOT_HONOUR), err, text)


def build_query(req: ChannelRequest, account: WeChatAccount, crypto: Crypto, now: float) -> HttpCall:
    return _call(req, OrderQuery(**_envelope(req, account, now)), crypto)


def parse_query(req: ChannelRequest, answer: HttpAnswer, crypto: Crypto) -> ChannelResult:
    got = _read(req, answer, crypto, OrderQueryAnswer)
    if isinstance(got, ChannelResult):
        return got
    if got.result_code != "SUCCESS":
        if got.err_code == "ORDERNOTEXIST":
            return not_found(req, got.err_code_des)
        return unknown(req, got.err_code, got.err_code_des)
    state = got.trade_state
    if state in _QUERY_PAID:
        return approved(req, state, got.transaction_id)
    if state in _QUERY_PAYING:
        return pending(req, state, got.trade_state_desc)
    if state in _QUERY_CLOSED:
        return declined(req, rc.DO_NOT_HONOUR, state, got.trade_state_desc)
    return unknown(req, state or "NOSTATE")


def build_cancel(req: ChannelRequest, account: WeChatAccount, crypto: Crypto, now: float) -> HttpCall:
    return _call(req, Reverse(**_envelope(req, account, now)), crypto)


def parse_cancel(req: ChannelRequest, answer: HttpAnswer, crypto: Crypto) -> ChannelResult:
    got = _read(req, answer, crypto, ReverseAnswer)
    if isinstance(got, ChannelResult):
        return got
    err, text = got.err_code, got.err_code_des
    if got.result_code == "SUCCESS":
        return unknown(req, "RECALL", "reverse again") if got.recall == "Y" else approved(req, "REVERSED", "")
    if err == "ORDERNOTEXIST":
        return approved(req, err, "")  # nothing to reverse
    if err in _CANCEL_RETRY:
        return unknown(req, err, text)
    return declined(req, rc.DO_NOT_HONOUR, err, text)


def build_refund(req: ChannelRequest, account: WeChatAccount, crypto: Crypto, now: float) -> HttpCall:
    request = Refund(
        **_envelope(req, account, now),
        out_refund_no=req.refund_no,
        total_fee=str(req.total_fen),
        refund_fee=str(req.amount_fen),
    )
    return _call(req, request, crypto)


def parse_refund(req: ChannelRequest, answer: HttpAnswer, crypto: Crypto) -> ChannelResult:
    got = _read(req, answer, crypto, RefundAnswer)
    if isinstance(got, ChannelResult):
        return got
    if got.result_code == "SUCCESS":
        return approved(req, "SUCCESS", got.refund_id)
    if got.err_code in _PAY_UNKNOWN:
        return unknown(req, got.err_code, got.err_code_des)
    return declined(req, rc.DO_NOT_HONOUR, got.err_code, got.err_code_des)


def build_precreate(req: ChannelRequest, account: WeChatAccount, crypto: Crypto, now: float) -> HttpCall:
    request = UnifiedOrder(
        **_envelope(req, account, now),
        device_info=req.terminal_id,
        body=req.subject,
        total_fee=str(req.amount_fen),
        time_expire=dt.datetime.fromtimestamp(req.expires, CST).strftime("%Y%m%d%H%M%S"),
        notify_url=req.notify_url,
        product_id=req.out_trade_no,
    )
    return _call(req, request, crypto)


def parse_precreate(req: ChannelRequest, answer: HttpAnswer, crypto: Crypto) -> ChannelResult:
    got = _read(req, answer, crypto, UnifiedOrderAnswer)
    if isinstance(got, ChannelResult):
        return got
    if got.result_code == "SUCCESS" and got.code_url:
        return created(req, "SUCCESS", got.code_url, got.prepay_id)
    if got.result_code == "SUCCESS" or got.err_code in _PAY_UNKNOWN:  # ORDERPAID: may be this very order
        return unknown(req, got.err_code or "NOCODEURL", got.err_code_des)
    return declined(req, rc.DO_NOT_HONOUR, got.err_code, got.err_code_des)


def build_close(req: ChannelRequest, account: WeChatAccount, crypto: Crypto, now: float) -> HttpCall:
    return _call(req, CloseOrder(**_envelope(req, account, now)), crypto)


def parse_close(req: ChannelRequest, answer: HttpAnswer, crypto: Crypto) -> ChannelResult:
    got = _read(req, answer, crypto, Answer)
    if isinstance(got, ChannelResult):
        return got
    if got.result_code == "SUCCESS" or got.err_code == "ORDERCLOSED":
        return approved(req, got.err_code or "CLOSED", "")
    if got.err_code in ("SYSTEMERROR", "USERPAYING"):
        return unknown(req, got.err_code, got.err_code_des)
    return declined(req, rc.DO_NOT_HONOUR, got.err_code, got.err_code_des)  # ORDERPAID: the query says so


# The notification's answer, exactly as WeChat Pay documents it: anything else and it sends again
# (15s/15s/30s/3m/10m/20m/30m/30m/30m/60m/3h/3h/3h/6h/6h).
NOTICE_ACK = HttpAnswer(
    200,
    b"<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>",
    {"Content-Type": "text/xml"},
)


def read_notice(body: bytes, headers: Mapping[str, str], account: WeChatAccount, crypto: Crypto) -> Notice | str:
    try:
        doc = from_xml(body)
    except Exception:
        return "unreadable XML"
    if doc.get("return_code") != "SUCCESS":
        return "return_code is not SUCCESS"
    if not crypto.verify(signing_input(doc), doc.get("sign", "")):
        return "signature"
    got = msgspec.convert(doc, NotifyDoc)
    if (got.appid, got.mch_id) != (account.app_id, account.mch_id):
        return "not our account"
    if not got.out_trade_no or not got.total_fee.isdigit():
        return "no order or amount"
    # The channel signs its answers as its notifications: a query's, posted here, says the query
    # worked (result_code SUCCESS) of an order perhaps unpaid (trade_state).
    if got.trade_state not in ("", "SUCCESS"):
        return f"an order's state ({got.trade_state}), not a payment's notification"
    paid = got.result_code == "SUCCESS"
    if paid and not (got.transaction_id and got.time_end):
        return "paid, without the payment's transaction id and time"
    return Notice(
        out_trade_no=got.out_trade_no, amount_fen=int(got.total_fee), paid=paid,
        channel_txn_id=got.transaction_id, channel_code=got.result_code,
    )  # fmt: skip


def nack_notice(reason: str) -> HttpAnswer:
    return HttpAnswer(200, to_xml({"return_code": "FAIL", "return_msg": reason}), {"Content-Type": "text/xml"})


FLOWS = {
    PAY: Flow(build_pay, parse_pay),
    QUERY: Flow(build_query, parse_query),
    CANCEL: Flow(build_cancel, parse_cancel),
    REFUND: Flow(build_refund, parse_refund),
    PRECREATE: Flow(build_precreate, parse_precreate),
    CLOSE: Flow(build_close, parse_close),
}
NOTICE = NoticeReader(read_notice, NOTICE_ACK, nack_notice)
