"""Alipay face-to-face, merchant scans the payment code: ``alipay.trade.pay`` (``scene=bar_code``),
``alipay.trade.query``, ``alipay.trade.cancel`` and ``alipay.trade.refund``; and the customer scans
the merchant's: ``alipay.trade.precreate`` (answers the ``qr_code`` to show), ``alipay.trade.close``
and the asynchronous notification (``read_notice``). All through the one gateway path and told
apart by ``method``; each a typed request and answer with its builder and parser.

Form parameters around a JSON ``biz_content``; RSA2 (SHA256withRSA) over all non-empty parameters
but ``sign``, sorted, as ``k=v&...``. The answer is JSON ``{"<method>_response": {...}, "sign":
"..."}`` (dots become underscores) whose signature covers the exact text of the response object,
so that text is cut out of the body as sent, verified, and only then decoded. ``code`` 10000 is
success, 10003 waiting for the buyer, 20000 unknown (query), 40004 a business failure named by
``sub_code``; 40002 (invalid arguments or signature) comes unsigned and means not processed.
Cancel answers ``retry_flag=Y`` while it must be called again.

A precreated order has no trade at Alipay until the customer scans it: a query or a close of one
nobody scanned answers ``ACQ.TRADE_NOT_EXIST``, and one past its ``time_expire`` can no longer be
scanned, so a close finding none has closed it. The notification is a form POST (``notify_type``
``trade_status_sync``) signed RSA2 over its parameters sorted, but ``sign`` and ``sign_type``;
acknowledged with exactly ``success``, resent otherwise (4m, 10m, 10m, 1h, 2h, 6h, 15h).
"""

from __future__ import annotations

import datetime as dt
import functools
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
    fen,
    form_decode,
    form_encode,
    lapsed,
    not_found,
    pending,
    sorted_query,
    unknown,
    unprocessed,
    yuan,
)
from protocols.messages import CANCEL, CLOSE, PAY, PRECREATE, QUERY, REFUND, ChannelRequest, ChannelResult
from protocols.statements import CST

GATEWAY = "/gateway.do"
CONTENT_TYPE = "application/x-www-form-urlencoded;charset=utf-8"
SIGN_TYPE = "RSA2"
METHODS = {
    PAY: "alipay.trade.pay",
    QUERY: "alipay.trade.query",
    CANCEL: "alipay.trade.cancel",
    REFUND: "alipay.trade.refund",
    PRECREATE: "alipay.trade.precreate",
    CLOSE: "alipay.trade.close",
}
ERROR_NODE = "error_response"  # the gateway's own refusals, whatever the method

SUCCESS, WAITING, UNKNOWN, INVALID_ARGUMENTS, FAILED = "10000", "10003", "20000", "40002", "40004"
NOT_EXIST = "ACQ.TRADE_NOT_EXIST"
STATUS_ERROR = "ACQ.TRADE_STATUS_ERROR"  # close: the trade is paid (or otherwise not closable)
SYSTEM_ERROR = "ACQ.SYSTEM_ERROR"  # a business failure that decides nothing: call again
NOTIFY_TYPE = "trade_status_sync"

_PAY_DECLINES = {
    "ACQ.BUYER_BALANCE_NOT_ENOUGH": rc.INSUFFICIENT_FUNDS,
    "ACQ.BUYER_BANKCARD_BALANCE_NOT_ENOUGH": rc.INSUFFICIENT_FUNDS,
    "ACQ.PAYMENT_AUTH_CODE_INVALID": rc.INVALID_PAYMENT_CODE,
    "ACQ.AUTH_CODE_EXPIRED": rc.EXPIRED_CODE,
}
_TRADE_PAID = {"TRADE_SUCCESS", "TRADE_FINISHED"}
# Precreate failures that leave the order in doubt: the number already paid may be this very order.
_PRECREATE_UNKNOWN = {SYSTEM_ERROR, "ACQ.TRADE_HAS_SUCCESS"}
NOTICE_UNSIGNED = frozenset({"sign", "sign_type"})  # the notification's signature covers neither


class AlipayAccount(Account, frozen=True, kw_only=True, forbid_unknown_fields=True):
    app_id: str  # the switch's application at Alipay's open platform


def response_node(method: str) -> str:
    return method.replace(".", "_") + "_response"


NODES = {op: response_node(method) for op, method in METHODS.items()}


# -- requests: the gateway's common parameters around one biz_content per flow --------------------


class Gateway(Struct, kw_only=True):
    """The common request parameters, in the order Alipay's SDK sends them (``sign`` follows)."""

    app_id: str
    method: str
    format: str = "JSON"
    charset: str = "utf-8"
    sign_type: str = SIGN_TYPE
    timestamp: str  # CST, YYYY-MM-DD hh:mm:ss
    version: str = "1.0"
    notify_url: str = ""  # precreate: where the notification goes; left out when empty, as the SDK does
    biz_content: str  # the flow's request, as compact JSON


class Trade(Struct, kw_only=True):
    out_trade_no: str


class TradePay(Trade, kw_only=True):
    scene: str = "bar_code"
    auth_code: str
    product_code: str = "FACE_TO_FACE_PAYMENT"
    subject: str
    total_amount: str  # yuan
    store_id: str = ""
    terminal_id: str = ""


class TradeQuery(Trade, kw_only=True):
    pass


class TradeCancel(Trade, kw_only=True):
    pass


class TradeRefund(Trade, kw_only=True):
    refund_amount: str  # yuan
    out_request_no: str  # our refund number: a resent refund is the same refund


class TradePrecreate(Trade, kw_only=True):
    total_amount: str  # yuan
    subject: str
    product_code: str = "FACE_TO_FACE_PAYMENT"
    store_id: str = ""
    terminal_id: str = ""
    time_expire: str  # yyyy-MM-dd HH:mm:ss, Beijing time: no scan is taken after it


class TradeClose(Trade, kw_only=True):
    pass


# -- answers (the response node, read once its signature is checked) -----------------------------


class Answer(Struct):
    code: str = ""
    msg: str | None = ""  # texts decide nothing: a null one is read as empty, not as a broken answer
    sub_code: str = ""
    sub_msg: str | None = ""
    out_trade_no: str = ""

    @property
    def message(self) -> str:
        return self.sub_msg or self.msg or ""


A = TypeVar("A", bound=Answer)


class PayAnswer(Answer):
    trade_no: str = ""


class QueryAnswer(Answer):
    trade_no: str = ""
    trade_status: str = ""


class CancelAnswer(Answer):
    retry_flag: str = ""  # Y: call cancel again


class RefundAnswer(Answer):
    trade_no: str = ""


class PrecreateAnswer(Answer):
    qr_code: str = ""


class NotifyForm(Struct):
    """A notification's parameters, past its verified signature."""

    notify_type: str = ""
    app_id: str = ""
    trade_status: str = ""
    out_trade_no: str = ""
    total_amount: str = ""  # yuan
    trade_no: str = ""


class _Signed(Struct):
    sign: str = ""


_MEMBERS = msgspec.json.Decoder(dict[str, msgspec.Raw])
_SIGNED = msgspec.json.Decoder(_Signed)


def extract_node(body: bytes | str, node: str) -> str | None:
    """The exact text of the JSON object value of ``node`` in ``body``, as sent (what the signature
    covers: re-serialising it would not give the same bytes); None when there is none."""
    try:
        raw = _MEMBERS.decode(body).get(node)
    except msgspec.DecodeError:
        return None
    text = bytes(raw).decode("utf-8", "replace") if raw is not None else ""
    return text if text.startswith("{") else None


def signed_node(body: bytes, crypto: Crypto, *nodes: str) -> tuple[str, bool] | None:
    """The exact text of the first of ``nodes`` the answer holds, and whether the answer's
    ``sign`` covers it; None when it holds none of them."""
    for node in nodes:
        text = extract_node(body, node)
        if text is not None:
            try:
                signature = _SIGNED.decode(body).sign
            except msgspec.DecodeError:  # a sign that is not a string
                signature = ""
            return text, crypto.verify(text.encode(), signature)
    return None


def beijing(epoch: float) -> str:
    """Beijing time to the second, as Alipay writes it."""
    return _beijing_second(int(epoch))


@functools.lru_cache(maxsize=4)  # every call of a second writes the same timestamp
def _beijing_second(second: int) -> str:
    return dt.datetime.fromtimestamp(second, CST).strftime("%Y-%m-%d %H:%M:%S")


def signed_form(
    account: AlipayAccount, method: str, content: Struct, crypto: Crypto, now: float, notify_url: str = ""
) -> HttpCall:
    """A gateway call of ``method`` carrying ``content``, signed."""
    gateway = Gateway(
        app_id=account.app_id,
        method=method,
        timestamp=beijing(now),
        notify_url=notify_url,
        biz_content=msgspec.json.encode(content).decode(),
    )
    params = {k: v for k, v in msgspec.structs.asdict(gateway).items() if v}
    params["sign"] = crypto.sign(sorted_query(params).encode())
    return HttpCall(GATEWAY, form_encode(params), CONTENT_TYPE)


def _read(req: ChannelRequest, answer: HttpAnswer, crypto: Crypto, shape: type[A]) -> A | ChannelResult:
    """The answer's business part, or the result it already decides (no answer to trust, the
    gateway's refusal, or a code that leaves the outcome unknown)."""
    if answer.status != 200:
        return unknown(req, f"HTTP{answer.status}")
    node = signed_node(answer.body, crypto, NODES[req.op], ERROR_NODE)
    if node is None:
        return unknown(req, "BADJSON", "unreadable answer")
    text, verified = node
    try:
        got = msgspec.json.decode(text, type=shape)
    except msgspec.DecodeError:  # ValidationError included: a field of the wrong type
        return unknown(req, "BADJSON", "unreadable answer")
    if got.code == INVALID_ARGUMENTS:  # Alipay leaves it unsigned; certainly not processed
        return unprocessed(req, got.sub_code or got.code, got.message)
    if not verified:
        return unknown(req, "BADSIGN", "answer signature")
    if got.code not in (SUCCESS, WAITING, FAILED):  # UNKNOWN (20000), or a code never documented
        return unknown(req, got.sub_code or got.code, got.message)
    return another_order(req, got.out_trade_no, req.out_trade_no) or got


# -- the four flows -------------------------------------------------------------------------------


def build_pay(req: ChannelRequest, account: AlipayAccount, crypto: Crypto, now: float) -> HttpCall:
    content = TradePay(
        out_trade_no=req.out_trade_no,
        auth_code=req.auth_code,
        subject=req.subject,
        total_amount=yuan(req.amount_fen),
        store_id=req.merchant_channel_id,
        terminal_id=req.terminal_id,
    )
    return signed_form(account, METHODS[PAY], content, crypto, now)


def parse_pay(req: ChannelRequest, answer: HttpAnswer, crypto: Crypto) -> ChannelResult:
    got = _read(req, answer, crypto, PayAnswer)
    if isinstance(got, ChannelResult):
        return got
    if got.code == SUCCESS:
        return approved(req, got.code, got.trade_no)
    if got.code == WAITING:
        return pending(req, got.code, got.message, got.trade_no)
    return declined(req, _PAY_DECLINES.get(got.sub_code, rc.DO_NOT_HONOUR), got.sub_code, got.message)


def build_query(req: ChannelRequest, account: AlipayAccount, crypto: Crypto, now: float) -> HttpCall:
    return signed_form(account, METHODS[QUERY], TradeQuery(out_trade_no=req.out_trade_no), crypto, now)


def parse_query(req: ChannelRequest, answer: HttpAnswer, crypto: Crypto) -> ChannelResult:
    got = _read(req, answer, crypto, QueryAnswer)
    if isinstance(got, ChannelResult):
        return got
    if got.code == FAILED:
        return not_found(req, got.message) if got.sub_code == NOT_EXIST else unknown(req, got.sub_code, got.message)
    status = got.trade_status
    if status in _TRADE_PAID:
        return approved(req, status, got.trade_no)
    if status == "WAIT_BUYER_PAY":
        return pending(req, status, got.message, got.trade_no)
    if status == "TRADE_CLOSED":
        return declined(req, rc.DO_NOT_HONOUR, status, got.message)
    return unknown(req, status or "NOSTATUS")


def build_cancel(req: ChannelRequest, account: AlipayAccount, crypto: Crypto, now: float) -> HttpCall:
    return signed_form(account, METHODS[CANCEL], TradeCancel(out_trade_no=req.out_trade_no), crypto, now)


def parse_cancel(req: ChannelRequest, answer: HttpAnswer, crypto: Crypto) -> ChannelResult:
    got = _read(req, answer, crypto, CancelAnswer)
    if isinstance(got, ChannelResult):
        return got
    if got.code == SUCCESS:
        return unknown(req, "RETRY", "cancel again") if got.retry_flag == "Y" else approved(req, got.code, "")
    if got.sub_code == NOT_EXIST:
        return approved(req, got.sub_code, "")  # nothing to cancel
    return declined(req, rc.DO_NOT_HONOUR, got.sub_code or got.code, got.message)


def build_refund(req: ChannelRequest, account: AlipayAccount, crypto: Crypto, now: float) -> HttpCall:
    content = TradeRefund(
        out_trade_no=req.out_trade_no, refund_amount=yuan(req.amount_fen), out_request_no=req.refund_no
    )
    return signed_form(account, METHODS[REFUND], content, crypto, now)


def parse_refund(req: ChannelRequest, answer: HttpAnswer, crypto: Crypto) -> ChannelResult:
    got = _read(req, answer, crypto, RefundAnswer)
    if isinstance(got, ChannelResult):
        return got
    if got.code == SUCCESS:
        return approved(req, got.code, got.trade_no)
    return declined(req, rc.DO_NOT_HONOUR, got.sub_code or got.code, got.message)


def build_precreate(req: ChannelRequest, account: AlipayAccount, crypto: Crypto, now: float) -> HttpCall:
    content = TradePrecreate(
        out_trade_no=req.out_trade_no,
        total_amount=yuan(req.amount_fen),
        subject=req.subject,
        store_id=req.merchant_channel_id,
        terminal_id=req.terminal_id,
        time_expire=beijing(req.expires),
    )
    return signed_form(account, METHODS[PRECREATE], content, crypto, now, req.notify_url)


def parse_precreate(req: ChannelRequest, answer: HttpAnswer, crypto: Crypto) -> ChannelResult:
    got = _read(req, answer, crypto, PrecreateAnswer)
    if isinstance(got, ChannelResult):
        return got
    if got.code == SUCCESS and got.qr_code:
        return created(req, got.code, got.qr_code)
    if got.code != FAILED or got.sub_code in _PRECREATE_UNKNOWN:  # no code to show, yet it may exist
        return unknown(req, got.sub_code or "NOQRCODE", got.message)
    return declined(req, rc.DO_NOT_HONOUR, got.sub_code or got.code, got.message)


def build_close(req: ChannelRequest, account: AlipayAccount, crypto: Crypto, now: float) -> HttpCall:
    return signed_form(account, METHODS[CLOSE], TradeClose(out_trade_no=req.out_trade_no), crypto, now)


def parse_close(req: ChannelRequest, answer: HttpAnswer, crypto: Crypto) -> ChannelResult:
    got = _read(req, answer, crypto, Answer)
    if isinstance(got, ChannelResult):
        return got
    if got.code == SUCCESS:
        return approved(req, got.code, "")
    # No trade: nobody has scanned the code. It stays payable until its time_expire, so the order
    # is over only once that has passed; before, the close changed nothing.
    if got.sub_code == NOT_EXIST:
        if lapsed(req):
            return approved(req, got.sub_code, "")
        return declined(req, rc.DO_NOT_HONOUR, got.sub_code, "nobody scanned it yet: it lapses at its expiry")
    if got.code != FAILED or got.sub_code == SYSTEM_ERROR:
        return unknown(req, got.sub_code or got.code, got.message)
    return declined(req, rc.DO_NOT_HONOUR, got.sub_code, got.message)  # TRADE_STATUS_ERROR: paid, queried


# Alipay's acknowledgement, exactly: anything else and it sends the notification again.
NOTICE_ACK = HttpAnswer(200, b"success", {"Content-Type": "text/plain"})


def read_notice(body: bytes, headers: Mapping[str, str], account: AlipayAccount, crypto: Crypto) -> Notice | str:
    try:
        params = form_decode(body.decode(), strict=True)
    except ValueError:  # UnicodeDecodeError included
        return "unreadable form"
    if params.get("sign_type") != SIGN_TYPE or not crypto.verify(
        sorted_query(params, NOTICE_UNSIGNED).encode(), params.get("sign", "")
    ):
        return "signature"
    got = msgspec.convert(params, NotifyForm)
    if got.app_id != account.app_id:
        return "not our account"
    if got.notify_type != NOTIFY_TYPE:
        return f"not a trade notification: {got.notify_type}"
    if not got.out_trade_no:
        return "no order"
    try:
        amount_fen = fen(got.total_amount)
    except ValueError:
        return "no amount"
    # WAIT_BUYER_PAY (sent only if asked for) says nothing final: refused rather than read as closed.
    if got.trade_status not in _TRADE_PAID and got.trade_status != "TRADE_CLOSED":
        return f"trade_status {got.trade_status or 'missing'}"
    return Notice(
        out_trade_no=got.out_trade_no, amount_fen=amount_fen, paid=got.trade_status in _TRADE_PAID,
        channel_txn_id=got.trade_no, channel_code=got.trade_status,
    )  # fmt: skip


def nack_notice(reason: str) -> HttpAnswer:
    return HttpAnswer(200, b"fail", {"Content-Type": "text/plain"})


FLOWS = {
    PAY: Flow(build_pay, parse_pay),
    QUERY: Flow(build_query, parse_query),
    CANCEL: Flow(build_cancel, parse_cancel),
    REFUND: Flow(build_refund, parse_refund),
    PRECREATE: Flow(build_precreate, parse_precreate),
    CLOSE: Flow(build_close, parse_close),
}
NOTICE = NoticeReader(read_notice, NOTICE_ACK, nack_notice)
