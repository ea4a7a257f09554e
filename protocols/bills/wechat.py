"""WeChat Pay ``pay/downloadbill``: a signed XML request (``bill_date`` YYYYMMDD, ``bill_type``
ALL); the answer is the bill itself as text, or an XML ``return_code`` FAIL."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping

from protocols.bills import BillAsk, BillRefused
from protocols.channels.base import ChannelIdentity, HttpAnswer, HttpCall, Sign, Verify
from protocols.channels.wechat import signing_input
from protocols.channels.xmlkv import from_xml, to_xml
from protocols.statements import wechat as statement_format

PATH = "/pay/downloadbill"
__all__ = ["PATH", "downloader", "server", "statement_format"]


class Downloader:
    def call(self, day: dt.date, ident: ChannelIdentity, sign: Sign, now: float) -> HttpCall:
        params = {
            "appid": ident.app_id,
            "mch_id": ident.mch_id,
            "nonce_str": hashlib.sha256(f"bill{day}{now}".encode()).hexdigest()[:32],
            "sign_type": "HMAC-SHA256",
            "bill_date": f"{day:%Y%m%d}",
            "bill_type": "ALL",
        }
        params["sign"] = sign(signing_input(params))
        return HttpCall(PATH, to_xml(params), "text/xml; charset=utf-8")

    def result(self, answer: HttpAnswer, verify: Verify) -> bytes:
        if answer.status != 200:
            raise BillRefused(f"HTTP {answer.status}")
        if answer.body.lstrip().startswith(b"<xml>"):
            doc = from_xml(answer.body)
            raise BillRefused(f"{doc.get('return_code', '')} {doc.get('return_msg', '')}".strip())
        return answer.body


class BillServer:
    path = PATH

    def handles(self, path: str, body: bytes) -> bool:
        return path == PATH

    def read(self, body: bytes, headers: Mapping[str, str], verify: Verify) -> BillAsk | str:
        try:
            doc = from_xml(body)
            day = dt.datetime.strptime(doc.get("bill_date", ""), "%Y%m%d").date()
        except ValueError:
            return "invalid bill_date"
        except Exception:
            return "XML格式错误"
        if not verify(signing_input(doc), doc.get("sign", "")):
            return "签名错误"
        return BillAsk(day, doc.get("mch_id", ""))

    def write(self, content: bytes, sign: Sign, link: str) -> HttpAnswer:
        return HttpAnswer(200, content, {"Content-Type": "text/plain; charset=utf-8"})

    def write_error(self, reason: str, sign: Sign) -> HttpAnswer:
        return HttpAnswer(200, to_xml({"return_code": "FAIL", "return_msg": reason}), {"Content-Type": "text/xml"})


downloader = Downloader()
server = BillServer()
