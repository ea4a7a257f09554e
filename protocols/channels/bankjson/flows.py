"""The bank JSON shape's pay, query, cancel and refund, and for the customer scanning the
merchant's code its QR order create (answers the ``qr_code`` to show), close and payment
notification (``read_notice``): each a typed request and answer with its builder and parser. The
builders take the flow's path first (each bank serves the shape on its own paths; the descriptor
binds them).

``POST`` JSON; the body is signed (HMAC-SM3 hex, or SM2 with SM3) in the ``X-Signature`` header
and the answer likewise. Amounts are integer fen. ``code`` ``0000`` is success, with
``trade_status`` ``SUCCESS`` (paid), ``PAYING`` (waiting for the customer), ``NOTPAY`` (a QR order
nobody has paid yet) or ``CLOSED``; business codes: ``1001`` insufficient funds, ``1002`` expired
code, ``1003`` invalid code, ``1004`` no such order, ``1005`` order closed, ``1006`` cannot be
cancelled any more, ``1007`` refund over the refundable amount, ``1008`` order paid (not closed),
``1009`` declined; ``9999`` system error (unknown, query). A cancel answers ``cancel_status``
``CANCELLED`` or ``RETRY``, a close ``close_status`` ``CLOSED``, a refund ``refund_status``
``SUCCESS``. A request whose signature the bank refuses is answered HTTP 401, not processed.

A QR order is payable until its ``expire_time``. Its notification is POSTed to its
``notify_url`` as ``{"data": {...}, "signature": "..."}``, the signature (the account's scheme)
over the exact text of ``data``: it carries no signature header. It names our account by
``app_id`` (``mch_id`` may be the merchant's own); acknowledged ``{"code":"SUCCESS"}``, sent again
otherwise (15s, 1m, 5m, 15m, 1h).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from functools import partial
from typing import Annotated, TypeVar

import msgspec
from msgspec import Meta, Struct

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
    lapsed,
    not_found,
    pending,
    unknown,
    unprocessed,
)
from protocols.messages import CANCEL, CLOSE, PAY, PRECREATE, QUERY, REFUND, ChannelRequest, ChannelResult
from protocols.statements import CST

SIGNATURE_HEADER = "X-Signature"
CONTENT_TYPE = "application/json;charset=utf-8"
OK, NO_SUCH_ORDER, ORDER_PAID, SYSTEM_ERROR = "0000", "1004", "1008", "9999"
ACKED = "SUCCESS"  # the code of the answer that acknowledges a notification
_DECLINES = {"1001": rc.INSUFFICIENT_FUNDS, "1002": rc.EXPIRED_CODE, "1003": rc.INVALID_PAYMENT_CODE}
_TRADE_WAITING = {"PAYING", "NOTPAY"}
_TRADE_FAILED = {"FAILED", "CLOSED"}
Fen = Annotated[int, Meta(gt=0)]  # the bank refuses anything else (checked where a request is read)


class BankAccount(Account, frozen=True, kw_only=True, forbid_unknown_fields=True):
    app_id: str  # the switch's application at the bank
    mch_id: str  # the switch's merchant number, for merchants without their own


# -- requests: every one names the order in the same envelope, in this field order ---------------


class Envelope(Struct, kw_only=True):
    app_id: str
    mch_id: str
    out_trade_no: str
    timestamp: str  # YYYYMMDDhhmmss, China time


class Pay(Envelope, kw_only=True):
    amount: Fen
    currency: str = "CNY"
    pay_code: str  # the customer's code; e-CNY's sealed (hex of SM4-CBC IV || text)
    terminal_id: str
    subject: str


class Query(Envelope, kw_only=True):
    pass


class Cancel(Envelope, kw_only=True):
    pass


class Refund(Envelope, kw_only=True):
    out_refund_no: str
    refund_amount: Fen
    total_amount: int  # fen, the payment's whole amount


class QrCreate(Envelope, kw_only=True):
    amount: Fen
    currency: str = "CNY"
    terminal_id: str
    subject: str
    notify_url: str
    expire_time: str  # YYYYMMDDhhmmss, China time: no payment is taken after it


class QrClose(Envelope, kw_only=True):
    pass


# -- answers (their fields as the bank writes them; absent ones read as empty) --------------------


class Answer(Struct, kw_only=True):
    code: str
    text: str | None = msgspec.field(default="", name="message")  # decides nothing: null reads as empty
    out_trade_no: str = ""

    @property
    def message(self) -> str:
        return self.text or ""


class TradeAnswer(Answer, kw_only=True):
    """A query's answer; a pay's adds the amount."""

    trade_status: str = ""
    trade_no: str = ""


class PayAnswer(TradeAnswer, kw_only=True):
    amount: int = 0


class CancelAnswer(Answer, kw_only=True):
    cancel_status: str = ""


class RefundAnswer(Answer, kw_only=True):
    refund_status: str = ""
    refund_id: str = ""
    out_refund_no: str = ""  # the refund's own number, echoed


class QrAnswer(Answer, kw_only=True):
    qr_code: str = ""
    trade_no: str = ""
    amount: int = 0


class CloseAnswer(Answer, kw_only=True):
    close_status: str = ""


class SignedNotice(Struct, kw_only=True):
    data: msgspec.Raw  # the exact text the signature covers
    signature: str


class NotifyData(Struct, kw_only=True):
    app_id: str
    mch_id: str = ""
    out_trade_no: str
    trade_no: str = ""
    amount: Fen
    trade_status: str
    pay_time: str = ""


A = TypeVar("A", bound=Answer)
encode = msgspec.json.Encoder().encode  # compact UTF-8, as json.dumps(ensure_ascii=False) with no spaces
_PAY_ANSWER = msgspec.json.Decoder(PayAnswer)
_QUERY_ANSWER = msgspec.json.Decoder(TradeAnswer)
_CANCEL_ANSWER = msgspec.json.Decoder(CancelAnswer)
_REFUND_ANSWER = msgspec.json.Decoder(RefundAnswer)
_QR_ANSWER = msgspec.json.Decoder(QrAnswer)
_CLOSE_ANSWER = msgspec.json.Decoder(CloseAnswer)
_SIGNED_NOTICE = msgspec.json.Decoder(SignedNotice)
_NOTIFY_DATA = msgspec.json.Decoder(NotifyData)


def timestamp(now: float) -> str:
    return dt.datetime.fromtimestamp(now, CST).strftime("%Y%m%d%H%M%S")


def signed(path: str, request: Struct, crypto: Crypto, content_type: str = CONTENT_TYPE) -> HttpCall:
    body = encode(request)
    return HttpCall(path, body, content_type, {SIGNATURE_HEADER: crypto.sign(body)})


def _envelope(req: ChannelRequest, account: BankAccount, now: float) -> dict[str, str]:
    return {
        "app_id": account.app_id,
        "mch_id": req.merchant_channel_id or account.mch_id,
        "out_trade_no": req.out_trade_no,
        "timestamp": timestamp(now),
    }


def _read(
    req: ChannelRequest, answer: HttpAnswer, crypto: Crypto, decoder: msgspec.json.Decoder[A]
) -> A | ChannelResult:
    """The answer's business part, or the result it already decides (no answer to trust, our
    request refused unprocessed, or the bank's system error)."""
    if answer.status == 401:  # our signature was refused: not processed
        return unprocessed(req, "401", "signature refused")
    if answer.status != 200:
        return unknown(req, f"HTTP{answer.status}")
    if not crypto.verify(answer.body, answer.headers.get(SIGNATURE_HEADER, "")):
        return unknown(req, "BADSIGN", "answer signature")
    try:
        got = decoder.decode(answer.body)
    except msgspec.DecodeError:  # ValidationError included
        return unknown(req, "BADJSON", "unreadable answer")
    if got.code == SYSTEM_ERROR:
        return unknown(req, got.code, got.message)
    return another_order(req, got.out_trade_no, req.out_trade_no) or got


def _trade(req: ChannelRequest, got: TradeAnswer) -> ChannelResult:
    """A pay's or query's answer about the order's trade."""
    code, status = got.code, got.trade_status
    if code == OK and status == "SUCCESS":
        return approved(req, code, got.trade_no)
    if code == OK and status in _TRADE_WAITING:
        return pending(req, status, got.message, got.trade_no)
    if status in _TRADE_FAILED:
        return declined(req, _DECLINES.get(code, rc.DO_NOT_HONOUR), code if code != OK else status, got.message)
    return unknown(req, code, got.message)


# -- the four flows -------------------------------------------------------------------------------


def build_pay(path: str, req: ChannelRequest, account: BankAccount, crypto: Crypto, now: float) -> HttpCall:
    return _pay(path, req, account, crypto, now, req.auth_code)


def build_sealed_pay(path: str, req: ChannelRequest, account: BankAccount, crypto: Crypto, now: float) -> HttpCall:
    """A pay whose payment code leaves only sealed under the account's SM4 data key."""
    if crypto.seal is None:  # the account schema requires the key: never send the code in clear
        raise ValueError(f"{path}: the payment code must be sealed and the account has no seal key")
    return _pay(path, req, account, crypto, now, crypto.seal(req.auth_code))


def _pay(path: str, req: ChannelRequest, account: BankAccount, crypto: Crypto, now: float, pay_code: str) -> HttpCall:
    request = Pay(
        **_envelope(req, account, now),
        amount=req.amount_fen,
        pay_code=pay_code,
        terminal_id=req.terminal_id,
        subject=req.subject,
    )
    return signed(path, request, crypto)


def parse_pay(req: ChannelRequest, answer: HttpAnswer, crypto: Crypto) -> ChannelResult:
    got = _read(req, answer, crypto, _PAY_ANSWER)
    if isinstance(got, ChannelResult):
        return got
    if mismatch := another_amount(req, got.amount):
        return mismatch
    return _trade(req, got)


def build_query(path: str, req: ChannelRequest, account: BankAccount, crypto: Crypto, now: float) -> HttpCall:
    return signed(path, Query(**_envelope(req, account, now)), crypto)


def parse_query(req: ChannelRequest, answer: HttpAnswer, crypto: Crypto) -> ChannelResult:
    got = _read(req, answer, crypto, _QUERY_ANSWER)
    if isinstance(got, ChannelResult):
        return got
    if got.code == NO_SUCH_ORDER:
        return not_found(req, got.message)
    return _trade(req, got)


def build_cancel(path: str, req: ChannelRequest, account: BankAccount, crypto: Crypto, now: float) -> HttpCall:
    return signed(path, Cancel(**_envelope(req, account, now)), crypto)


def parse_cancel(req: ChannelRequest, answer: HttpAnswer, crypto: Crypto) -> ChannelResult:
    got = _read(req, answer, crypto, _CANCEL_ANSWER)
    if isinstance(got, ChannelResult):
        return got
    code, status = got.code, got.cancel_status
    if (code == OK and status == "CANCELLED") or code == NO_SUCH_ORDER:  # no such order: nothing to cancel
        return approved(req, code, "")
    if code == OK and status == "RETRY":
        return unknown(req, status, got.message)
    return declined(req, rc.DO_NOT_HONOUR, code, got.message)


def build_refund(path: str, req: ChannelRequest, account: BankAccount, crypto: Crypto, now: float) -> HttpCall:
    request = Refund(
        **_envelope(req, account, now),
        out_refund_no=req.refund_no,
        refund_amount=req.amount_fen,
        total_amount=req.total_fen,
    )
    return signed(path, request, crypto)


def parse_refund(req: ChannelRequest, answer: HttpAnswer, crypto: Crypto) -> ChannelResult:
    got = _read(req, answer, crypto, _REFUND_ANSWER)
    if isinstance(got, ChannelResult):
        return got
    if mismatch := another_order(req, got.out_refund_no, req.refund_no):
        return mismatch
    if got.code == OK and got.refund_status == "SUCCESS":
        return approved(req, got.code, got.refund_id)
    return declined(req, rc.DO_NOT_HONOUR, got.code, got.message)


def build_precreate(path: str, req: ChannelRequest, account: BankAccount, crypto: Crypto, now: float) -> HttpCall:
    request = QrCreate(
        **_envelope(req, account, now),
        amount=req.amount_fen,
        terminal_id=req.terminal_id,
        subject=req.subject,
        notify_url=req.notify_url,
        expire_time=timestamp(req.expires),
    )
    return signed(path, request, crypto)


def parse_precreate(req: ChannelRequest, answer: HttpAnswer, crypto: Crypto) -> ChannelResult:
    got = _read(req, answer, crypto, _QR_ANSWER)
    if isinstance(got, ChannelResult):
        return got
    if mismatch := another_amount(req, got.amount):  # the customer would be asked another amount
        return mismatch
    if got.code == OK and got.qr_code:
        return created(req, got.code, got.qr_code, got.trade_no)
    if got.code == OK:  # no code to show, yet it may exist
        return unknown(req, "NOQRCODE", got.message)
    if got.code == ORDER_PAID:  # the number is paid: it may be this very order
        return unknown(req, got.code, got.message)
    return declined(req, rc.DO_NOT_HONOUR, got.code, got.message)


def build_close(path: str, req: ChannelRequest, account: BankAccount, crypto: Crypto, now: float) -> HttpCall:
    return signed(path, QrClose(**_envelope(req, account, now)), crypto)


def parse_close(req: ChannelRequest, answer: HttpAnswer, crypto: Crypto) -> ChannelResult:
    got = _read(req, answer, crypto, _CLOSE_ANSWER)
    if isinstance(got, ChannelResult):
        return got
    if got.code == OK and got.close_status == "CLOSED":
        return approved(req, got.code, "")
    # No such order: one created (or paid) by a call still on its way may yet arrive, until the
    # order's expiry has passed.
    if got.code == NO_SUCH_ORDER:
        if lapsed(req):
            return approved(req, got.code, "")
        return declined(req, rc.DO_NOT_HONOUR, got.code, "no such order yet: it lapses at its expiry")
    if got.code == OK:
        return unknown(req, got.close_status or "NOSTATUS", got.message)
    return declined(req, rc.DO_NOT_HONOUR, got.code, got.message)  # 1008: paid, queried


_JSON = {"Content-Type": "application/json"}
NOTICE_ACK = HttpAnswer(200, encode({"code": ACKED, "message": "成功"}), _JSON)


def read_notice(body: bytes, headers: Mapping[str, str], account: BankAccount, crypto: Crypto) -> Notice | str:
    try:
        notification = _SIGNED_NOTICE.decode(body)
    except msgspec.DecodeError:
        return "unreadable JSON"
    if not crypto.verify(bytes(notification.data), notification.signature):
        return "signature"
    try:
        got = _NOTIFY_DATA.decode(notification.data)
    except msgspec.DecodeError:  # ValidationError included: no order, or an amount not above 0
        return "no order or amount"
    if got.app_id != account.app_id:
        return "not our account"
    if got.trade_status not in _TRADE_FAILED and got.trade_status != "SUCCESS":
        return f"trade_status {got.trade_status}"  # not final: says nothing
    return Notice(
        out_trade_no=got.out_trade_no, amount_fen=got.amount, paid=got.trade_status == "SUCCESS",
        channel_txn_id=got.trade_no, channel_code=got.trade_status,
    )  # fmt: skip


def nack_notice(reason: str) -> HttpAnswer:
    return HttpAnswer(200, encode({"code": "FAIL", "message": reason}), _JSON)


def flows(paths: Mapping[str, str], *, seals_code: bool) -> dict[str, Flow]:
    """The flows on a bank's ``paths`` (by operation); with ``seals_code`` the payment code leaves
    sealed (``Crypto.seal``). A QR order has no payment code: nothing to seal."""
    return {
        PAY: Flow(partial(build_sealed_pay if seals_code else build_pay, paths[PAY]), parse_pay),
        QUERY: Flow(partial(build_query, paths[QUERY]), parse_query),
        CANCEL: Flow(partial(build_cancel, paths[CANCEL]), parse_cancel),
        REFUND: Flow(partial(build_refund, paths[REFUND]), parse_refund),
        PRECREATE: Flow(partial(build_precreate, paths[PRECREATE]), parse_precreate),
        CLOSE: Flow(partial(build_close, paths[CLOSE]), parse_close),
    }


NOTICE = NoticeReader(read_notice, NOTICE_ACK, nack_notice)
