"""The JSON API shape shared by the bank-operated channels (digital RMB and the in-bank code).

``POST`` JSON; the body is signed with HMAC-SM3 (hex) in the ``X-Signature`` header and the
answer likewise. Amounts are integer fen. ``code`` ``0000`` with ``trade_status`` ``SUCCESS`` is
paid, ``PAYING`` is waiting for the customer; business codes: ``1001`` insufficient funds,
``1002`` expired code, ``1003`` invalid code, ``1009`` declined; ``9999`` system error (unknown,
query). The two channels differ only in path and app naming, so each is one instance of this.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass

from protocols import response_codes as rc
from protocols.channels.base import (
    ChannelIdentity,
    ChannelVerdict,
    HttpAnswer,
    HttpCall,
    PayRequestSeen,
    Sign,
    Verify,
    approved,
    declined,
    pending,
    unknown,
)
from protocols.messages import ChannelRequest, ChannelResult

SIGNATURE_HEADER = "X-Signature"
_DECLINES = {"1001": rc.INSUFFICIENT_FUNDS, "1002": rc.EXPIRED_CODE, "1003": rc.INVALID_PAYMENT_CODE}
_CODE_OF_VERDICT = {
    "SUCCESS": ("0000", "SUCCESS", "成功"),
    "USERPAYING": ("0000", "PAYING", "等待用户确认"),
    "NOTENOUGH": ("1001", "FAILED", "余额不足"),
    "EXPIRED": ("1002", "FAILED", "付款码已过期"),
    "INVALID": ("1003", "FAILED", "付款码无效"),
    "DECLINED": ("1009", "FAILED", "交易被拒绝"),
    "SYSTEMERROR": ("9999", "UNKNOWN", "系统繁忙"),
}
_CST = dt.timezone(dt.timedelta(hours=8))


def _dumps(doc: Mapping[str, object]) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class BankJsonConnector:
    name: str
    pay_path: str

    def pay_call(self, req: ChannelRequest, ident: ChannelIdentity, sign: Sign, now: float) -> HttpCall:
        body = _dumps(
            {
                "app_id": ident.app_id,
                "mch_id": req.merchant_channel_id or ident.mch_id,
                "out_trade_no": req.out_trade_no,
                "amount": req.amount_fen,
                "currency": "CNY",
                "pay_code": req.auth_code,
                "terminal_id": req.terminal_id,
                "subject": req.subject,
                "timestamp": dt.datetime.fromtimestamp(now, _CST).strftime("%Y%m%d%H%M%S"),
            }
        )
        return HttpCall(self.pay_path, body, "application/json;charset=utf-8", {SIGNATURE_HEADER: sign(body)})

    def pay_result(self, req: ChannelRequest, answer: HttpAnswer, verify: Verify) -> ChannelResult:
        if answer.status == 401:  # our signature was refused: not processed
            return declined(req, rc.SYSTEM_MALFUNCTION, "401", "signature refused")
        if answer.status != 200:
            return unknown(req, f"HTTP{answer.status}")
        if not verify(answer.body, answer.headers.get(SIGNATURE_HEADER, "")):
            return unknown(req, "BADSIGN", "answer signature")
        try:
            doc = json.loads(answer.body)
            code, status = str(doc["code"]), str(doc.get("trade_status", ""))
        except (ValueError, KeyError, TypeError):
            return unknown(req, "BADJSON", "unreadable answer")
        message, trade_no = str(doc.get("message", "")), str(doc.get("trade_no", ""))
        if code == "0000" and status == "SUCCESS":
            return approved(req, code, trade_no)
        if code == "0000" and status == "PAYING":
            return pending(req, status, message, trade_no)
        if status == "FAILED":
            return declined(req, _DECLINES.get(code, rc.DO_NOT_HONOUR), code, message)
        return unknown(req, code, message)


@dataclass(frozen=True, slots=True)
class BankJsonChannelSide:
    name: str
    pay_path: str

    def read_pay(self, body: bytes, headers: Mapping[str, str], verify: Verify) -> PayRequestSeen | str:
        if not verify(body, headers.get(SIGNATURE_HEADER, "")):
            return "signature verification failed"
        try:
            doc = json.loads(body)
            amount = doc["amount"]
            if not isinstance(amount, int) or amount <= 0:
                raise ValueError
            return PayRequestSeen(doc["out_trade_no"], doc["pay_code"], amount, doc.get("mch_id", ""), doc)
        except (ValueError, KeyError, TypeError):
            return "invalid request body"

    def write_pay(self, seen: PayRequestSeen, verdict: ChannelVerdict, sign: Sign) -> HttpAnswer:
        code, status, message = _CODE_OF_VERDICT[verdict.status]
        doc = {
            "code": code,
            "message": message,
            "trade_status": status,
            "out_trade_no": seen.out_trade_no,
            "amount": seen.amount_fen,
            "trade_no": verdict.channel_txn_id if status in ("SUCCESS", "PAYING") else "",
        }
        body = _dumps(doc)
        return HttpAnswer(200, body, {"Content-Type": "application/json", SIGNATURE_HEADER: sign(body)})

    def write_error(self, reason: str, sign: Sign) -> HttpAnswer:
        return HttpAnswer(401, _dumps({"code": "4010", "message": reason}), {"Content-Type": "application/json"})
