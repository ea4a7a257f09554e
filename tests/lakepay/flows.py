"""Lake Pay's API, switch side. Every request and answer is JSON signed with HMAC-SHA256 (scheme
``hmac-sha256``, lower hex) over ``<timestamp>.<body>``, the timestamp in ``Lake-Timestamp`` and
the signature in ``Lake-Signature``. An answer's ``status`` is ``succeeded``, ``pending``,
``cancelled``, ``failed`` (with a ``failure`` reason) or ``error`` (unknown: ask again); HTTP 401
means the signature was refused and nothing was done."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Mapping

import msgspec
from msgspec import Struct

from protocols import response_codes as rc
from protocols.channels.base import (
    Account,
    Crypto,
    Flow,
    HttpAnswer,
    HttpCall,
    StatementRefused,
    another_order,
    approved,
    declined,
    not_found,
    pending,
    unknown,
    unprocessed,
)
from protocols.messages import CANCEL, PAY, QUERY, REFUND, ChannelRequest, ChannelResult

PATHS = {PAY: "/lake/charges", QUERY: "/lake/charges/query", CANCEL: "/lake/charges/cancel", REFUND: "/lake/refunds"}
STATEMENT_PATH = "/lake/statements"
TIMESTAMP, SIGNATURE = "Lake-Timestamp", "Lake-Signature"
_DECLINES = {
    "insufficient_funds": rc.INSUFFICIENT_FUNDS,
    "code_expired": rc.EXPIRED_CODE,
    "code_invalid": rc.INVALID_PAYMENT_CODE,
}


class LakeAccount(Account, frozen=True, kw_only=True, forbid_unknown_fields=True):
    merchant_no: str


class Money(Struct):
    value: int  # fen
    currency: str = "CNY"


class Charge(Struct, kw_only=True):
    merchant: str
    sub_merchant: str
    reference: str
    amount: Money
    payment_code: str
    terminal: str


class ChargeRef(Struct, kw_only=True):
    merchant: str
    reference: str


class Refund(Struct, kw_only=True):
    merchant: str
    reference: str
    refund_reference: str
    amount: Money


class StatementRequest(Struct, kw_only=True):
    merchant: str
    date: str  # YYYY-MM-DD


class Answer(Struct):
    status: str
    reference: str = ""  # the charge's reference, or the refund's
    lake_id: str = ""
    failure: str = ""
    message: str = ""


class StatementAnswer(Struct):
    file: str  # base64


def signing_input(timestamp: str, body: bytes) -> bytes:
    return timestamp.encode() + b"." + body


def signed(path: str, request: Struct, crypto: Crypto, now: float) -> HttpCall:
    body, timestamp = msgspec.json.encode(request), str(int(now))
    headers = {TIMESTAMP: timestamp, SIGNATURE: crypto.sign(signing_input(timestamp, body))}
    return HttpCall(path, body, "application/json", headers)


def verified(answer: HttpAnswer, crypto: Crypto) -> bool:
    headers: Mapping[str, str] = answer.headers
    return crypto.verify(signing_input(headers.get(TIMESTAMP, ""), answer.body), headers.get(SIGNATURE, ""))


def _read(req: ChannelRequest, answer: HttpAnswer, crypto: Crypto) -> Answer | ChannelResult:
    if answer.status == 401:
        return unprocessed(req, "401", "signature refused")
    if answer.status != 200:
        return unknown(req, f"HTTP{answer.status}")
    if not verified(answer, crypto):
        return unknown(req, "BADSIGN", "answer signature")
    try:
        got = msgspec.json.decode(answer.body, type=Answer)
    except msgspec.DecodeError:
        return unknown(req, "BADJSON", "unreadable answer")
    if got.status == "error":
        return unknown(req, "error", got.message)
    return another_order(req, got.reference, req.refund_no if req.op == REFUND else req.out_trade_no) or got


def build_pay(req: ChannelRequest, account: LakeAccount, crypto: Crypto, now: float) -> HttpCall:
    charge = Charge(
        merchant=account.merchant_no,
        sub_merchant=req.merchant_channel_id,
        reference=req.out_trade_no,
        amount=Money(req.amount_fen),
        payment_code=req.auth_code,
        terminal=req.terminal_id,
    )
    return signed(PATHS[PAY], charge, crypto, now)


def parse_pay(req: ChannelRequest, answer: HttpAnswer, crypto: Crypto) -> ChannelResult:
    got = _read(req, answer, crypto)
    if isinstance(got, ChannelResult):
        return got
    if got.status == "succeeded":
        return approved(req, got.status, got.lake_id)
    if got.status == "pending":
        return pending(req, got.status, got.message, got.lake_id)
    if got.status == "failed":
        return declined(req, _DECLINES.get(got.failure, rc.DO_NOT_HONOUR), got.failure, got.message)
    return unknown(req, got.status)


def build_query(req: ChannelRequest, account: LakeAccount, crypto: Crypto, now: float) -> HttpCall:
    return signed(PATHS[QUERY], ChargeRef(merchant=account.merchant_no, reference=req.out_trade_no), crypto, now)


def parse_query(req: ChannelRequest, answer: HttpAnswer, crypto: Crypto) -> ChannelResult:
    got = _read(req, answer, crypto)
    if isinstance(got, ChannelResult):
        return got
    if got.failure == "not_found":
        return not_found(req, got.message)
    if got.status == "succeeded":
        return approved(req, got.status, got.lake_id)
    if got.status == "pending":
        return pending(req, got.status, got.message, got.lake_id)
    if got.status in ("failed", "cancelled"):
        return declined(req, rc.DO_NOT_HONOUR, got.failure or got.status, got.message)
    return unknown(req, got.status)


def build_cancel(req: ChannelRequest, account: LakeAccount, crypto: Crypto, now: float) -> HttpCall:
    return signed(PATHS[CANCEL], ChargeRef(merchant=account.merchant_no, reference=req.out_trade_no), crypto, now)


def parse_cancel(req: ChannelRequest, answer: HttpAnswer, crypto: Crypto) -> ChannelResult:
    got = _read(req, answer, crypto)
    if isinstance(got, ChannelResult):
        return got
    if got.status == "cancelled" or got.failure == "not_found":  # not_found: nothing to cancel
        return approved(req, got.failure or got.status, "")
    if got.status == "pending":
        return unknown(req, got.status, "cancel again")
    return declined(req, rc.DO_NOT_HONOUR, got.failure or got.status, got.message)


def build_refund(req: ChannelRequest, account: LakeAccount, crypto: Crypto, now: float) -> HttpCall:
    refund = Refund(
        merchant=account.merchant_no,
        reference=req.out_trade_no,
        refund_reference=req.refund_no,
        amount=Money(req.amount_fen),
    )
    return signed(PATHS[REFUND], refund, crypto, now)


def parse_refund(req: ChannelRequest, answer: HttpAnswer, crypto: Crypto) -> ChannelResult:
    got = _read(req, answer, crypto)
    if isinstance(got, ChannelResult):
        return got
    if got.status == "succeeded":
        return approved(req, got.status, got.lake_id)
    return declined(req, rc.DO_NOT_HONOUR, got.failure or got.status, got.message)


def build_statement(day: dt.date, account: LakeAccount, crypto: Crypto, now: float) -> HttpCall:
    return signed(STATEMENT_PATH, StatementRequest(merchant=account.merchant_no, date=day.isoformat()), crypto, now)


def parse_statement(answer: HttpAnswer, crypto: Crypto) -> bytes:
    if answer.status != 200:
        raise StatementRefused(f"HTTP {answer.status}")
    if not verified(answer, crypto):
        raise StatementRefused("answer signature does not verify")
    try:
        return base64.b64decode(msgspec.json.decode(answer.body, type=StatementAnswer).file, validate=True)
    except (msgspec.DecodeError, binascii.Error):
        raise StatementRefused("unreadable answer") from None


FLOWS = {
    PAY: Flow(build_pay, parse_pay),
    QUERY: Flow(build_query, parse_query),
    CANCEL: Flow(build_cancel, parse_cancel),
    REFUND: Flow(build_refund, parse_refund),
}
