"""UnionPay acp file transfer (``fileTransfer.do``, ``txnType`` 76, ``fileType`` 00): a signed
form naming the settlement date (``settleDate`` MMDD); the signed answer carries the file in
``fileContent``, deflated and base64-encoded, with its ``fileName``."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import zlib
from collections.abc import Mapping
from urllib.parse import parse_qsl

from protocols.bills import BillAsk, BillRefused
from protocols.channels.base import ChannelIdentity, HttpAnswer, HttpCall, Sign, Verify, form_encode
from protocols.channels.unionpay import channel_side as trade_side
from protocols.channels.unionpay import signing_input
from protocols.statements import CST
from protocols.statements import unionpay as statement_format

PATH = "/gateway/api/fileTransfer.do"
__all__ = ["downloader", "server", "statement_format"]


class Downloader:
    def call(self, day: dt.date, ident: ChannelIdentity, sign: Sign, now: float) -> HttpCall:
        params = {
            "version": "5.1.0",
            "encoding": "UTF-8",
            "signMethod": "01",
            "txnType": "76",
            "txnSubType": "01",
            "bizType": "000000",
            "accessType": "0",
            "merId": ident.mch_id,
            "settleDate": f"{day:%m%d}",
            "txnTime": dt.datetime.fromtimestamp(now, CST).strftime("%Y%m%d%H%M%S"),
            "fileType": "00",
            "certId": ident.cert_id,
        }
        params["signature"] = sign(signing_input(params))
        return HttpCall(PATH, form_encode(params), "application/x-www-form-urlencoded;charset=UTF-8")

    def result(self, answer: HttpAnswer, verify: Verify) -> bytes:
        doc = dict(parse_qsl(answer.body.decode("utf-8", "replace"), keep_blank_values=True))
        if answer.status != 200 or doc.get("respCode") != "00":
            raise BillRefused(f"HTTP {answer.status} {doc.get('respCode', '')} {doc.get('respMsg', '')}".strip())
        if not verify(signing_input(doc), doc.get("signature", "")):
            raise BillRefused("answer signature does not verify")
        try:
            return zlib.decompress(base64.b64decode(doc.get("fileContent", ""), validate=True))
        except (binascii.Error, zlib.error):
            raise BillRefused("fileContent is not deflated base64") from None


class BillServer:
    path = PATH

    def handles(self, path: str, body: bytes) -> bool:
        return path == PATH

    def read(self, body: bytes, headers: Mapping[str, str], verify: Verify) -> BillAsk | str:
        doc = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        if not verify(signing_input(doc), doc.get("signature", "")):
            return "验证签名失败"
        try:
            month_day = dt.datetime.strptime(doc.get("settleDate", ""), "%m%d")
            asked_at = dt.datetime.strptime(doc.get("txnTime", ""), "%Y%m%d%H%M%S")
        except ValueError:
            return "报文格式错误"
        day = dt.date(asked_at.year, month_day.month, month_day.day)
        if day > asked_at.date():  # December's file asked for in January
            day = day.replace(year=day.year - 1)
        return BillAsk(day, doc.get("merId", ""))

    def write(self, content: bytes, sign: Sign, link: str) -> HttpAnswer:
        doc = {"respCode": "00", "respMsg": "成功", "fileName": "INN_ZM.txt"}
        doc["fileContent"] = base64.b64encode(zlib.compress(content)).decode()
        doc["signature"] = sign(signing_input(doc))
        return HttpAnswer(200, form_encode(doc), {"Content-Type": "application/x-www-form-urlencoded"})

    def write_error(self, reason: str, sign: Sign) -> HttpAnswer:
        return trade_side.write_error(reason, sign)


downloader = Downloader()
server = BillServer()
