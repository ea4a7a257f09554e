"""The bank JSON shape's statement download (``<prefix>/bill/download``): a signed JSON body with
``bill_date`` YYYYMMDD; the signed answer has ``code`` 0000 and the file (``statement``) base64 in
``content``. ``build`` takes the bank's path first, as the flows' builders do."""

from __future__ import annotations

import base64
import binascii
import datetime as dt

import msgspec
from msgspec import Struct

from protocols.channels.bankjson.flows import OK, SIGNATURE_HEADER, BankAccount, signed, timestamp
from protocols.channels.base import Crypto, HttpAnswer, HttpCall, StatementRefused

CONTENT_TYPE = "application/json"


class BillRequest(Struct, kw_only=True):
    app_id: str
    mch_id: str
    bill_date: str  # YYYYMMDD
    timestamp: str


class BillAnswer(Struct, kw_only=True):
    code: str
    message: str = ""
    content: str | None = None  # base64 of the file, with code 0000


_BILL_ANSWER = msgspec.json.Decoder(BillAnswer)


def build(path: str, day: dt.date, account: BankAccount, crypto: Crypto, now: float) -> HttpCall:
    request = BillRequest(
        app_id=account.app_id, mch_id=account.mch_id, bill_date=f"{day:%Y%m%d}", timestamp=timestamp(now)
    )
    return signed(path, request, crypto, CONTENT_TYPE)


def parse(answer: HttpAnswer, crypto: Crypto) -> bytes:
    if answer.status != 200:
        raise StatementRefused(f"HTTP {answer.status}")
    if not crypto.verify(answer.body, answer.headers.get(SIGNATURE_HEADER, "")):
        raise StatementRefused("answer signature does not verify")
    try:
        got = _BILL_ANSWER.decode(answer.body)
    except msgspec.DecodeError:  # ValidationError included
        raise StatementRefused("unreadable answer") from None
    if got.code != OK:
        raise StatementRefused(f"{got.code} {got.message}")
    if got.content is None:
        raise StatementRefused("answer without the file's content")
    try:
        return base64.b64decode(got.content, validate=True)
    except (ValueError, binascii.Error):
        raise StatementRefused("content is not base64") from None
