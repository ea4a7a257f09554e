"""The bank JSON channels' statement download (``<prefix>/bill/download``): a signed JSON body
with ``bill_date`` YYYYMMDD; the signed answer has ``code`` 0000 and the file base64 in
``content``."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass

from protocols.bills import BillAsk, BillRefused
from protocols.channels.bankjson import SIGNATURE_HEADER
from protocols.channels.base import ChannelIdentity, HttpAnswer, HttpCall, Sign, Verify
from protocols.statements import CST


def _dumps(doc: Mapping[str, object]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Downloader:
    path: str

    def call(self, day: dt.date, ident: ChannelIdentity, sign: Sign, now: float) -> HttpCall:
        body = _dumps(
            {
                "app_id": ident.app_id,
                "mch_id": ident.mch_id,
                "bill_date": f"{day:%Y%m%d}",
                "timestamp": dt.datetime.fromtimestamp(now, CST).strftime("%Y%m%d%H%M%S"),
            }
        )
        return HttpCall(self.path, body, "application/json", {SIGNATURE_HEADER: sign(body)})

    def result(self, answer: HttpAnswer, verify: Verify) -> bytes:
        if answer.status != 200:
            raise BillRefused(f"HTTP {answer.status}")
        if not verify(answer.body, answer.headers.get(SIGNATURE_HEADER, "")):
            raise BillRefused("answer signature does not verify")
        try:
            doc = json.loads(answer.body)
            if doc.get("code") != "0000":
                raise BillRefused(f"{doc.get('code')} {doc.get('message', '')}")
            return base64.b64decode(doc["content"], validate=True)
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise BillRefused("unreadable answer") from None


@dataclass(frozen=True, slots=True)
class BillServer:
    path: str

    def handles(self, path: str, body: bytes) -> bool:
        return path == self.path

    def read(self, body: bytes, headers: Mapping[str, str], verify: Verify) -> BillAsk | str:
        if not verify(body, headers.get(SIGNATURE_HEADER, "")):
            return "signature verification failed"
        try:
            doc = json.loads(body)
            return BillAsk(dt.datetime.strptime(doc["bill_date"], "%Y%m%d").date(), doc.get("mch_id", ""))
        except (ValueError, KeyError, TypeError):
            return "invalid request body"

    def write(self, content: bytes, sign: Sign, link: str) -> HttpAnswer:
        body = _dumps({"code": "0000", "message": "成功", "content": base64.b64encode(content).decode()})
        return HttpAnswer(200, body, {"Content-Type": "application/json", SIGNATURE_HEADER: sign(body)})

    def write_error(self, reason: str, sign: Sign) -> HttpAnswer:
        return HttpAnswer(401, _dumps({"code": "4010", "message": reason}), {"Content-Type": "application/json"})
