"""WeChat Pay ``pay/downloadbill``: a signed XML request (``bill_date`` YYYYMMDD, ``bill_type``
ALL); the answer is the bill itself as text (``statement``), or an XML ``return_code`` FAIL."""

from __future__ import annotations

import datetime as dt

from msgspec import Struct

from protocols.channels.base import Crypto, HttpAnswer, HttpCall, StatementRefused
from protocols.channels.wechat.flows import CONTENT_TYPE, SIGN_TYPE, WeChatAccount, nonce, signed_xml
from protocols.channels.wechat.xml import from_xml

PATH = "/pay/downloadbill"


class DownloadBill(Struct, kw_only=True):
    appid: str
    mch_id: str
    nonce_str: str
    sign_type: str = SIGN_TYPE
    bill_date: str  # YYYYMMDD
    bill_type: str = "ALL"


def build(day: dt.date, account: WeChatAccount, crypto: Crypto, now: float) -> HttpCall:
    request = DownloadBill(
        appid=account.app_id,
        mch_id=account.mch_id,
        nonce_str=nonce("bill", str(day), repr(now)),
        bill_date=f"{day:%Y%m%d}",
    )
    return HttpCall(PATH, signed_xml(request, crypto), CONTENT_TYPE)


def parse(answer: HttpAnswer, crypto: Crypto) -> bytes:
    if answer.status != 200:
        raise StatementRefused(f"HTTP {answer.status}")
    if answer.body.lstrip().startswith(b"<xml>"):
        doc = from_xml(answer.body)
        raise StatementRefused(f"{doc.get('return_code', '')} {doc.get('return_msg', '')}".strip())
    return answer.body
