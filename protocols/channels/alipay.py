"""Alipay ``alipay.trade.pay`` with ``scene=bar_code`` (merchant scans the payment code).

Form parameters to the gateway; RSA2 (SHA256withRSA) over all non-empty parameters but ``sign``,
sorted, as ``k=v&...``. The answer is JSON ``{"alipay_trade_pay_response": {...}, "sign": "..."}``
whose signature covers the exact text of the response object, so it is cut out of the body as
sent rather than re-serialised. ``code`` 10000 is paid, 10003 is waiting for the buyer, 20000 is
unknown (query), 40004 is a business failure named by ``sub_code``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from urllib.parse import parse_qsl, urlencode

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
    fen,
    pending,
    sorted_query,
    unknown,
    yuan,
)
from protocols.messages import ChannelRequest, ChannelResult

name = "alipay"
pay_path = "/gateway.do"
METHOD = "alipay.trade.pay"
RESPONSE_NODE = "alipay_trade_pay_response"
_CST = dt.timezone(dt.timedelta(hours=8))

_DECLINE_SUB_CODES = {
    "ACQ.BUYER_BALANCE_NOT_ENOUGH": rc.INSUFFICIENT_FUNDS,
    "ACQ.BUYER_BANKCARD_BALANCE_NOT_ENOUGH": rc.INSUFFICIENT_FUNDS,
    "ACQ.PAYMENT_AUTH_CODE_INVALID": rc.INVALID_PAYMENT_CODE,
    "ACQ.AUTH_CODE_EXPIRED": rc.EXPIRED_CODE,
}
_ANSWER_OF_VERDICT = {
    "USERPAYING": ("10003", "Waiting for buyer to pay", "", ""),
    "NOTENOUGH": ("40004", "Business Failed", "ACQ.BUYER_BALANCE_NOT_ENOUGH", "买家余额不足"),
    "EXPIRED": ("40004", "Business Failed", "ACQ.AUTH_CODE_EXPIRED", "付款码已过期"),
    "INVALID": ("40004", "Business Failed", "ACQ.PAYMENT_AUTH_CODE_INVALID", "支付失败，获取顾客账户信息失败"),
    "DECLINED": ("40004", "Business Failed", "ACQ.TRADE_HAS_CLOSE", "交易已经关闭"),
    "SYSTEMERROR": ("20000", "Service Currently Unavailable", "aop.unknow-error", "系统繁忙"),
}


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

    def pay_call(self, req: ChannelRequest, ident: ChannelIdentity, sign: Sign, now: float) -> HttpCall:
        biz = {
            "out_trade_no": req.out_trade_no,
            "scene": "bar_code",
            "auth_code": req.auth_code,
            "product_code": "FACE_TO_FACE_PAYMENT",
            "subject": req.subject,
            "total_amount": yuan(req.amount_fen),
            "store_id": req.merchant_channel_id,
            "terminal_id": req.terminal_id,
        }
        params = {
            "app_id": ident.app_id,
            "method": METHOD,
            "format": "JSON",
            "charset": "utf-8",
            "sign_type": "RSA2",
            "timestamp": dt.datetime.fromtimestamp(now, _CST).strftime("%Y-%m-%d %H:%M:%S"),
            "version": "1.0",
            "biz_content": json.dumps(biz, ensure_ascii=False, separators=(",", ":")),
        }
        params["sign"] = sign(sorted_query(params).encode())
        return HttpCall(pay_path, urlencode(params).encode(), "application/x-www-form-urlencoded;charset=utf-8")

    def pay_result(self, req: ChannelRequest, answer: HttpAnswer, verify: Verify) -> ChannelResult:
        if answer.status != 200:
            return unknown(req, f"HTTP{answer.status}")
        text = answer.body.decode("utf-8", "replace")
        node_text = extract_node(text, RESPONSE_NODE)
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
        if code == "10000":
            return approved(req, code, node.get("trade_no", ""))
        if code == "10003":
            return pending(req, code, message, node.get("trade_no", ""))
        if code == "40004":
            return declined(req, _DECLINE_SUB_CODES.get(sub_code, rc.DO_NOT_HONOUR), sub_code, message)
        return unknown(req, sub_code or code, message)


class AlipayChannelSide:
    name = name
    pay_path = pay_path

    def read_pay(self, body: bytes, headers: Mapping[str, str], verify: Verify) -> PayRequestSeen | str:
        params = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        if params.get("method") != METHOD:
            return "isv.invalid-method"
        if params.get("sign_type") != "RSA2" or not verify(sorted_query(params).encode(), params.get("sign", "")):
            return "isv.invalid-signature"
        try:
            biz = json.loads(params.get("biz_content", ""))
            amount = fen(biz["total_amount"])
            return PayRequestSeen(biz["out_trade_no"], biz["auth_code"], amount, biz.get("store_id", ""), params)
        except (ValueError, KeyError, TypeError):
            return "isv.invalid-parameter"

    def write_pay(self, seen: PayRequestSeen, verdict: ChannelVerdict, sign: Sign) -> HttpAnswer:
        node: dict[str, str] = {}
        if verdict.status == "SUCCESS":
            node = {"code": "10000", "msg": "Success", "trade_no": verdict.channel_txn_id}
        else:
            code, msg, sub_code, sub_msg = _ANSWER_OF_VERDICT[verdict.status]
            node = {"code": code, "msg": msg}
            if sub_code:
                node |= {"sub_code": sub_code, "sub_msg": sub_msg}
            if verdict.status == "USERPAYING":
                node["trade_no"] = verdict.channel_txn_id
        node |= {"out_trade_no": seen.out_trade_no, "total_amount": yuan(seen.amount_fen)}
        return self._signed(node, sign)

    def write_error(self, reason: str, sign: Sign) -> HttpAnswer:
        node = {"code": "40002", "msg": "Invalid Arguments", "sub_code": reason, "sub_msg": reason}
        body = json.dumps({RESPONSE_NODE: node}, ensure_ascii=False).encode()
        return HttpAnswer(200, body, {"Content-Type": "application/json;charset=utf-8"})

    @staticmethod
    def _signed(node: Mapping[str, str], sign: Sign) -> HttpAnswer:
        node_text = json.dumps(node, ensure_ascii=False, separators=(",", ":"))
        body = f'{{"{RESPONSE_NODE}":{node_text},"sign":"{sign(node_text.encode())}"}}'
        return HttpAnswer(200, body.encode(), {"Content-Type": "application/json;charset=utf-8"})


connector = AlipayConnector()
channel_side = AlipayChannelSide()
