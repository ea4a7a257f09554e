"""The JSON API shape shared by the bank-operated channels (digital RMB and the in-bank code):
pay, query, cancel and refund, each on its own path.

``POST`` JSON; the body is signed with HMAC-SM3 (hex) in the ``X-Signature`` header and the
answer likewise. Amounts are integer fen. ``code`` ``0000`` is success, with ``trade_status``
``SUCCESS`` (paid), ``PAYING`` (waiting for the customer) or ``CLOSED``; business codes: ``1001``
insufficient funds, ``1002`` expired code, ``1003`` invalid code, ``1004`` no such order, ``1005``
order closed, ``1006`` cannot be cancelled any more, ``1007`` refund over the refundable amount,
``1009`` declined; ``9999`` system error (unknown, query). A cancel answers ``cancel_status``
``CANCELLED`` or ``RETRY``, a refund ``refund_status`` ``SUCCESS``. The two channels differ only in
paths and app naming, so each is one instance of this.
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
    RequestSeen,
    Sign,
    Verify,
    approved,
    declined,
    not_found,
    pending,
    unknown,
)
from protocols.messages import CANCEL, PAY, QUERY, REFUND, ChannelRequest, ChannelResult

SIGNATURE_HEADER = "X-Signature"
OK, NO_SUCH_ORDER, SYSTEM_ERROR = "0000", "1004", "9999"
_DECLINES = {"1001": rc.INSUFFICIENT_FUNDS, "1002": rc.EXPIRED_CODE, "1003": rc.INVALID_PAYMENT_CODE}
# Simulator verdicts in this API's vocabulary: (code, trade_status or cancel_status, message).
_ANSWERS = {
    (PAY, "SUCCESS"): (OK, "SUCCESS", "成功"),
    (PAY, "USERPAYING"): (OK, "PAYING", "等待用户确认"),
    (PAY, "NOTENOUGH"): ("1001", "FAILED", "余额不足"),
    (PAY, "EXPIRED"): ("1002", "FAILED", "付款码已过期"),
    (PAY, "INVALID"): ("1003", "FAILED", "付款码无效"),
    (PAY, "DECLINED"): ("1009", "FAILED", "交易被拒绝"),
    (PAY, "ORDERCLOSED"): ("1005", "FAILED", "订单已关闭"),
    (QUERY, "PAID"): (OK, "SUCCESS", "成功"),
    (QUERY, "PAYING"): (OK, "PAYING", "等待用户确认"),
    (QUERY, "CLOSED"): (OK, "CLOSED", "订单已关闭"),
    (QUERY, "NOTEXIST"): (NO_SUCH_ORDER, "", "订单不存在"),
    (CANCEL, "DONE"): (OK, "CANCELLED", "已撤销"),
    (CANCEL, "RETRY"): (OK, "RETRY", "请重试"),
    (CANCEL, "NOTEXIST"): (NO_SUCH_ORDER, "", "订单不存在"),
    (CANCEL, "REFUSED"): ("1006", "REFUSED", "已过撤销期限"),
    (REFUND, "DONE"): (OK, "SUCCESS", "退款成功"),
    (REFUND, "REFUSED"): ("1007", "FAILED", "可退金额不足"),
}
_CST = dt.timezone(dt.timedelta(hours=8))
_STATUS_FIELD = {CANCEL: "cancel_status", REFUND: "refund_status"}


def _dumps(doc: Mapping[str, object]) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class BankJsonConnector:
    name: str
    paths: Mapping[str, str]

    def call(self, req: ChannelRequest, ident: ChannelIdentity, sign: Sign, now: float) -> HttpCall:
        doc: dict[str, object] = {
            "app_id": ident.app_id,
            "mch_id": req.merchant_channel_id or ident.mch_id,
            "out_trade_no": req.out_trade_no,
            "timestamp": dt.datetime.fromtimestamp(now, _CST).strftime("%Y%m%d%H%M%S"),
        }
        if req.op == PAY:
            doc |= {
                "amount": req.amount_fen,
                "currency": "CNY",
                "pay_code": req.auth_code,
                "terminal_id": req.terminal_id,
                "subject": req.subject,
            }
        elif req.op == REFUND:
            doc |= {"out_refund_no": req.refund_no, "refund_amount": req.amount_fen, "total_amount": req.total_fen}
        body = _dumps(doc)
        return HttpCall(self.paths[req.op], body, "application/json;charset=utf-8", {SIGNATURE_HEADER: sign(body)})

    def result(self, req: ChannelRequest, answer: HttpAnswer, verify: Verify) -> ChannelResult:
        if answer.status == 401:  # our signature was refused: not processed
            return declined(req, rc.SYSTEM_MALFUNCTION, "401", "signature refused")
        if answer.status != 200:
            return unknown(req, f"HTTP{answer.status}")
        if not verify(answer.body, answer.headers.get(SIGNATURE_HEADER, "")):
            return unknown(req, "BADSIGN", "answer signature")
        try:
            doc = json.loads(answer.body)
            code = str(doc["code"])
        except (ValueError, KeyError, TypeError):
            return unknown(req, "BADJSON", "unreadable answer")
        message, trade_no = str(doc.get("message", "")), str(doc.get("trade_no", ""))
        status = str(doc.get(_STATUS_FIELD.get(req.op, "trade_status"), ""))
        if code == SYSTEM_ERROR:
            return unknown(req, code, message)
        if req.op == REFUND:
            if (code, status) == (OK, "SUCCESS"):
                return approved(req, code, str(doc.get("refund_id", "")))
            return declined(req, rc.DO_NOT_HONOUR, code, message)
        if req.op == CANCEL:
            if (code, status) == (OK, "CANCELLED") or code == NO_SUCH_ORDER:
                return approved(req, code, "")
            if (code, status) == (OK, "RETRY"):
                return unknown(req, status, message)
            return declined(req, rc.DO_NOT_HONOUR, code, message)
        if req.op == QUERY and code == NO_SUCH_ORDER:
            return not_found(req, message)
        if code == OK and status == "SUCCESS":
            return approved(req, code, trade_no)
        if code == OK and status == "PAYING":
            return pending(req, status, message, trade_no)
        if status in ("FAILED", "CLOSED"):
            return declined(req, _DECLINES.get(code, rc.DO_NOT_HONOUR), code if code != OK else status, message)
        return unknown(req, code, message)


@dataclass(frozen=True, slots=True)
class BankJsonChannelSide:
    name: str
    paths: Mapping[str, str]

    def read(self, path: str, body: bytes, headers: Mapping[str, str], verify: Verify) -> RequestSeen | str:
        op = next((op for op, p in self.paths.items() if p == path), None)
        if op is None:
            return "no such API"
        if not verify(body, headers.get(SIGNATURE_HEADER, "")):
            return "signature verification failed"
        try:
            doc = json.loads(body)
            if op == REFUND:
                amount = doc["refund_amount"]
                if not isinstance(amount, int) or amount <= 0:
                    raise ValueError
                return RequestSeen(
                    op,
                    doc["out_trade_no"],
                    amount_fen=amount,
                    merchant=doc.get("mch_id", ""),
                    refund_no=doc["out_refund_no"],
                    fields=doc,
                )
            if op != PAY:
                return RequestSeen(op, doc["out_trade_no"], merchant=doc.get("mch_id", ""), fields=doc)
            amount = doc["amount"]
            if not isinstance(amount, int) or amount <= 0:
                raise ValueError
            return RequestSeen(op, doc["out_trade_no"], doc["pay_code"], amount, doc.get("mch_id", ""), fields=doc)
        except (ValueError, KeyError, TypeError):
            return "invalid request body"

    def write(self, seen: RequestSeen, verdict: ChannelVerdict, sign: Sign) -> HttpAnswer:
        code, status, message = _ANSWERS.get((seen.op, verdict.status), (SYSTEM_ERROR, "", "系统繁忙"))
        doc: dict[str, object] = {"code": code, "message": message, "out_trade_no": seen.out_trade_no}
        if seen.op in _STATUS_FIELD:
            doc[_STATUS_FIELD[seen.op]] = status
            if seen.op == REFUND and status == "SUCCESS":
                doc |= {"refund_id": verdict.channel_txn_id, "out_refund_no": seen.refund_no}
        else:
            doc["trade_status"] = status
            doc["trade_no"] = verdict.channel_txn_id if status in ("SUCCESS", "PAYING") else ""
        if seen.op == PAY:
            doc["amount"] = seen.amount_fen
        body = _dumps(doc)
        return HttpAnswer(200, body, {"Content-Type": "application/json", SIGNATURE_HEADER: sign(body)})

    def write_error(self, reason: str, sign: Sign) -> HttpAnswer:
        return HttpAnswer(401, _dumps({"code": "4010", "message": reason}), {"Content-Type": "application/json"})
