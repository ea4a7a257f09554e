"""UnionPay acp file transfer (``fileTransfer.do``, ``txnType`` 76, ``fileType`` 00): a signed
form naming the settlement date (``settleDate`` MMDD, its year the one of ``txnTime``, the time
of asking); the signed answer carries the file (``statement``) in ``fileContent``, deflated and
base64-encoded, with its ``fileName``."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import zlib

from msgspec import Struct

from protocols.channels.base import Crypto, HttpAnswer, HttpCall, StatementRefused
from protocols.channels.unionpay.flows import (
    CONTENT_TYPE,
    SIGN_METHOD,
    VERSION,
    UnionPayAccount,
    read_form,
    signed_form,
    signing_input,
    txn_time,
)
from protocols.statements import MAX_TEXT_BYTES

PATH = "/gateway/api/fileTransfer.do"


class FileTransfer(Struct, kw_only=True):
    version: str = VERSION
    encoding: str = "UTF-8"
    signMethod: str = SIGN_METHOD
    txnType: str = "76"
    txnSubType: str = "01"
    bizType: str = "000000"
    accessType: str = "0"
    merId: str
    settleDate: str  # MMDD
    txnTime: str  # YYYYMMDDhhmmss Beijing time: when it is asked
    fileType: str = "00"
    certId: str


def build(day: dt.date, account: UnionPayAccount, crypto: Crypto, now: float) -> HttpCall:
    request = FileTransfer(
        merId=account.mch_id, settleDate=f"{day:%m%d}", txnTime=txn_time(now), certId=account.cert_id
    )
    return HttpCall(PATH, signed_form(request, crypto), CONTENT_TYPE)


def parse(answer: HttpAnswer, crypto: Crypto) -> bytes:
    doc = read_form(answer.body)
    if answer.status != 200 or doc.get("respCode") != "00":
        raise StatementRefused(f"HTTP {answer.status} {doc.get('respCode', '')} {doc.get('respMsg', '')}".strip())
    if not crypto.verify(signing_input(doc), doc.get("signature", "")):
        raise StatementRefused("answer signature does not verify")
    try:
        unpacking = zlib.decompressobj()
        text = unpacking.decompress(base64.b64decode(doc.get("fileContent", ""), validate=True), MAX_TEXT_BYTES)
    except (binascii.Error, zlib.error):
        raise StatementRefused("fileContent is not deflated base64") from None
    if unpacking.unconsumed_tail:
        raise StatementRefused(f"fileContent unpacks to more than {MAX_TEXT_BYTES} bytes")
    return text
