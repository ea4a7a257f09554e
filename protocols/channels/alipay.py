"""Alipay face-to-face, merchant scans the payment code: ``alipay.trade.pay`` (``scene=bar_code``),
``alipay.trade.query`` and ``alipay.trade.cancel``, all through the one gateway path.

Form parameters; RSA2 (SHA256withRSA) over all non-empty parameters but ``sign``, sorted, as
``k=v&...``. The answer is JSON ``{"<method>_response": {...}, "sign": "..."}`` (dots become
underscores) whose signature covers the exact text of the response object, so it is cut out of
the body as sent rather than re-serialised. ``code`` 10000 is success, 10003 waiting for the
buyer, 20000 unknown (query), 40004 a business failure named by ``sub_code``. Cancel answers
``retry_flag=Y`` while it must be called again.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from urllib.parse import parse_qsl

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
    fen,
    form_encode,
    not_found,
    pending,
    sorted_query,
    unknown,
    yuan,
)
from protocols.messages import CANCEL, PAY, QUERY, REFUND, ChannelRequest, ChannelResult

name = "alipay"
GATEWAY = "/gateway.do"
paths = {PAY: GATEWAY, QUERY: GATEWAY, CANCEL: GATEWAY, REFUND: GATEWAY}
METHODS = {
    PAY: "alipay.trade.pay",
    QUERY: "alipay.trade.query",
    CANCEL: "alipay.trade.cancel",
    REFUND: "alipay.trade.refund",
}
_OP_OF_METHOD = {method: op for op, method in METHODS.items()}
_CST = dt.timezone(dt.timedelta(hours=8))
NOT_EXIST = "ACQ.TRADE_NOT_EXIST"

_PAY_DECLINES = {
    "ACQ.BUYER_BALANCE_NOT_ENOUGH": rc.INSUFFICIENT_FUNDS,
    "ACQ.BUYER_BANKCARD_BALANCE_NOT_ENOUGH": rc.INSUFFICIENT_FUNDS,
    "ACQ.PAYMENT_AUTH_CODE_INVALID": rc.INVALID_PAYMENT_CODE,
    "ACQ.AUTH_CODE_EXPIRED": rc.EXPIRED_CODE,
}
# Simulator verdicts in Alipay's vocabulary: (code, msg, sub_code, sub_msg).
_FAILED = "Business Failed"
_ANSWERS = {
    (PAY, "USERPAYING"): ("10003", "Waiting for buyer to pay", "", ""),
    (PAY, "NOTENOUGH"): ("40004", _FAILED, "ACQ.BUYER_BALANCE_NOT_ENOUGH", "买家余额不足"),
    (PAY, "EXPIRED"): ("40004", _FAILED, "ACQ.AUTH_CODE_EXPIRED", "付款码已过期"),
    (PAY, "INVALID"): ("40004", _FAILED, "ACQ.PAYMENT_AUTH_CODE_INVALID", "支付失败，获取顾客账户信息失败"),
    (PAY, "DECLINED"): ("40004", _FAILED, "ACQ.TRADE_HAS_CLOSE", "交易已经关闭"),
    (PAY, "ORDERCLOSED"): ("40004", _FAILED, "ACQ.TRADE_HAS_CLOSE", "交易已经关闭"),
    (QUERY, "NOTEXIST"): ("40004", _FAILED, NOT_EXIST, "交易不存在"),
    (CANCEL, "NOTEXIST"): ("40004", _FAILED, NOT_EXIST, "交易不存在"),
    (CANCEL, "REFUSED"): ("40004", _FAILED, "ACQ.REASON_TRADE_BEEN_FREEZEN", "交易已冻结，不能撤销"),
    (REFUND, "REFUSED"): ("40004", _FAILED, "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额超限"),
}
_SYSTEM_ERROR = ("20000", "Service Currently Unavailable", "aop.unknow-error", "系统繁忙")
_TRADE_STATUS = {"PAID": "TRADE_SUCCESS", "PAYING": "WAIT_BUYER_PAY", "CLOSED": "TRADE_CLOSED"}


def response_node(method: str) -> str:
    return method.replace(".", "_") + "_response"


def extract_node(body: str, node: str) -> str | None:
    """The exact text of the JSON object value of ``node`` in ``body`` (what the signature covers)."""
    start = body.find(f'"{node}"')
    if start < 0:
        return None
    start = body.find("{", start + len(node) + 2)
    if start < 0:
        return None
    depth, in_string, escaped = 0, False, False
    for i in range(start, len(body)):
        ch = body[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return body[start : i + 1]
    return None


class AlipayConnector:
    name = name

    def call(self, req: ChannelRequest, ident: ChannelIdentity, sign: Sign, now: float) -> HttpCall:
        biz: dict[str, str] = {"out_trade_no": req.out_trade_no}
        if req.op == PAY:
            biz |= {
                "scene": "bar_code",
                "auth_code": req.auth_code,
                "product_code": "FACE_TO_FACE_PAYMENT",
                "subject": req.subject,
                "total_amount": yuan(req.amount_fen),
                "store_id": req.merchant_channel_id,
                "terminal_id": req.terminal_id,
            }
        elif req.op == REFUND:
            biz |= {"refund_amount": yuan(req.amount_fen), "out_request_no": req.refund_no}
        params = {
            "app_id": ident.app_id,
            "method": METHODS[req.op],
            "format": "JSON",
            "charset": "utf-8",
            "sign_type": "RSA2",
            "timestamp": dt.datetime.fromtimestamp(now, _CST).strftime("%Y-%m-%d %H:%M:%S"),
            "version": "1.0",
            "biz_content": json.dumps(biz, ensure_ascii=False, separators=(",", ":")),
        }
        params["sign"] = sign(sorted_query(params).encode())
        return HttpCall(GATEWAY, form_encode(params), "application/x-www-form-urlencoded;charset=utf-8")

    def result(self, req: ChannelRequest, answer: HttpAnswer, verify: Verify) -> ChannelResult:
        if answer.status != 200:
            return unknown(req, f"HTTP{answer.status}")
        text = answer.body.decode("utf-8", "replace")
        node_text = extract_node(text, response_node(METHODS[req.op])) or extract_node(text, "error_response")
        try:
            node = json.loads(node_text) if node_text else None
            signature = json.loads(text).get("sign", "")
        except ValueError:
            node = None
        if not isinstance(node, dict):
            return unknown(req, "BADJSON", "unreadable answer")
        code, sub_code = node.get("code", ""), node.get("sub_code", "")
        message = node.get("sub_msg") or node.get("msg", "")
        if code == "40002":  # invalid arguments or signature: unsigned, and certainly not processed
            return declined(req, rc.SYSTEM_MALFUNCTION, sub_code or code, message)
        if not verify(node_text.encode(), signature):
            return unknown(req, "BADSIGN", "answer signature")
        if code == "20000" or code not in ("10000", "10003", "40004"):
            return unknown(req, sub_code or code, message)
        if req.op == PAY:
            if code == "10000":
                return approved(req, code, node.get("trade_no", ""))
            if code == "10003":
                return pending(req, code, message, node.get("trade_no", ""))
            return declined(req, _PAY_DECLINES.get(sub_code, rc.DO_NOT_HONOUR), sub_code, message)
        if req.op == QUERY:
            if code == "40004":
                return not_found(req, message) if sub_code == NOT_EXIST else unknown(req, sub_code, message)
            status = node.get("trade_status", "")
            if status in ("TRADE_SUCCESS", "TRADE_FINISHED"):
                return approved(req, status, node.get("trade_no", ""))
            if status == "WAIT_BUYER_PAY":
                return pending(req, status, message, node.get("trade_no", ""))
            if status == "TRADE_CLOSED":
                return declined(req, rc.DO_NOT_HONOUR, status, message)
            return unknown(req, status or "NOSTATUS")
        if req.op == REFUND:
            if code == "10000":
                return approved(req, code, node.get("trade_no", ""))
            return declined(req, rc.DO_NOT_HONOUR, sub_code or code, message)
        # CANCEL: retry_flag=Y means "call cancel again".
        if code == "10000":
            return unknown(req, "RETRY", "cancel again") if node.get("retry_flag") == "Y" else approved(req, code, "")
        if sub_code == NOT_EXIST:
            return approved(req, sub_code, "")  # nothing to cancel
        return declined(req, rc.DO_NOT_HONOUR, sub_code or code, message)


class AlipayChannelSide:
    name = name
    paths = paths

    def read(self, path: str, body: bytes, headers: Mapping[str, str], verify: Verify) -> RequestSeen | str:
        params = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        op = _OP_OF_METHOD.get(params.get("method", ""))
        if path != GATEWAY or op is None:
            return "isv.invalid-method"
        if params.get("sign_type") != "RSA2" or not verify(sorted_query(params).encode(), params.get("sign", "")):
            return "isv.invalid-signature"
        try:
            biz = json.loads(params.get("biz_content", ""))
            if op == REFUND:
                return RequestSeen(
                    op,
                    biz["out_trade_no"],
                    amount_fen=fen(biz["refund_amount"]),
                    refund_no=biz["out_request_no"],
                    fields=params,
                )
            if op != PAY:
                return RequestSeen(op, biz["out_trade_no"], fields=params)
            amount = fen(biz["total_amount"])
            return RequestSeen(
                op, biz["out_trade_no"], biz["auth_code"], amount, biz.get("store_id", ""), fields=params
            )
        except (ValueError, KeyError, TypeError):
            return "isv.invalid-parameter"

    def write(self, seen: RequestSeen, verdict: ChannelVerdict, sign: Sign) -> HttpAnswer:
        status = verdict.status
        node: dict[str, str] = {}
        if status == "SYSTEMERROR":
            code, msg, sub_code, sub_msg = _SYSTEM_ERROR
        elif (seen.op, status) in _ANSWERS:
            code, msg, sub_code, sub_msg = _ANSWERS[(seen.op, status)]
        else:
            code, msg, sub_code, sub_msg = "10000", "Success", "", ""
        node = {"code": code, "msg": msg}
        if sub_code:
            node |= {"sub_code": sub_code, "sub_msg": sub_msg}
        node["out_trade_no"] = seen.out_trade_no
        if seen.op == PAY:
            node["total_amount"] = yuan(seen.amount_fen)
        if status in ("SUCCESS", "USERPAYING") or status in _TRADE_STATUS:
            node["trade_no"] = verdict.channel_txn_id
        if seen.op == QUERY and status in _TRADE_STATUS:
            node["trade_status"] = _TRADE_STATUS[status]
        if seen.op == REFUND and status == "DONE":
            node |= {"trade_no": verdict.channel_txn_id, "refund_fee": yuan(seen.amount_fen), "fund_change": "Y"}
        if seen.op == CANCEL and status in ("DONE", "RETRY"):
            node |= {"retry_flag": "Y" if status == "RETRY" else "N", "action": "close"}
        method = seen.fields.get("method", METHODS[seen.op])
        node_text = json.dumps(node, ensure_ascii=False, separators=(",", ":"))
        body = f'{{"{response_node(method)}":{node_text},"sign":"{sign(node_text.encode())}"}}'
        return HttpAnswer(200, body.encode(), {"Content-Type": "application/json;charset=utf-8"})

    def write_error(self, reason: str, sign: Sign) -> HttpAnswer:
        node = {"code": "40002", "msg": "Invalid Arguments", "sub_code": reason, "sub_msg": reason}
        body = json.dumps({"error_response": node}, ensure_ascii=False).encode()
        return HttpAnswer(200, body, {"Content-Type": "application/json;charset=utf-8"})


connector = AlipayConnector()
channel_side = AlipayChannelSide()
