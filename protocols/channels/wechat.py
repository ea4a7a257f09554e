"""WeChat Pay v2, merchant scans the customer's payment code: ``pay/micropay``,
``pay/orderquery`` and ``secapi/pay/reverse``.

XML over HTTPS; the signature is HMAC-SHA256 over the non-empty parameters sorted by name as
``k=v&...`` with ``&key=<API key>`` appended, upper-case hex (the ``&key=`` suffix and the key
itself are the HSM signer's business). Answers carry ``return_code`` (communication) and
``result_code`` / ``err_code`` (business). On micropay, ``USERPAYING`` means the customer is
still confirming and ``SYSTEMERROR`` / ``BANKERROR`` that the result is unknown and must be
queried. Reverse answers ``recall=Y`` while it must be called again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

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
    sorted_query,
    unknown,
)
from protocols.channels.xmlkv import from_xml, to_xml
from protocols.messages import CANCEL, PAY, QUERY, REFUND, ChannelRequest, ChannelResult

name = "wechat"
paths = {
    PAY: "/pay/micropay",
    QUERY: "/pay/orderquery",
    CANCEL: "/secapi/pay/reverse",
    REFUND: "/secapi/pay/refund",
}
_OP_OF_PATH = {path: op for op, path in paths.items()}

_PAY_UNKNOWN = {"SYSTEMERROR", "BANKERROR", "ORDERPAID"}
_PAY_DECLINES = {
    "NOTENOUGH": rc.INSUFFICIENT_FUNDS,
    "AUTHCODEEXPIRE": rc.EXPIRED_CODE,
    "AUTH_CODE_INVALID": rc.INVALID_PAYMENT_CODE,
    "AUTH_CODE_ERROR": rc.INVALID_PAYMENT_CODE,
}
_QUERY_PAID = {"SUCCESS", "REFUND"}  # REFUND: paid, then (partly) refunded
_QUERY_PAYING = {"USERPAYING", "NOTPAY"}
_QUERY_CLOSED = {"CLOSED", "REVOKED", "PAYERROR"}
_CANCEL_RETRY = {"SYSTEMERROR", "USERPAYING"}

# Simulator verdicts in WeChat's own vocabulary: (err_code, err_code_des).
_PAY_ERRORS = {
    "USERPAYING": ("USERPAYING", "需要用户输入支付密码"),
    "NOTENOUGH": ("NOTENOUGH", "余额不足"),
    "EXPIRED": ("AUTHCODEEXPIRE", "二维码已过期，请用户在微信上刷新后再试"),
    "INVALID": ("AUTH_CODE_INVALID", "授权码检验错误"),
    "DECLINED": ("TRADE_ERROR", "交易错误"),
    "ORDERCLOSED": ("ORDERCLOSED", "订单已关闭"),
    "SYSTEMERROR": ("SYSTEMERROR", "接口返回错误"),
}
_TRADE_STATE = {"PAID": "SUCCESS", "PAYING": "USERPAYING", "CLOSED": "CLOSED"}
_REQUIRED = {PAY: ("total_fee", "auth_code"), REFUND: ("out_refund_no", "total_fee", "refund_fee")}


def signing_input(params: Mapping[str, str]) -> bytes:
    return sorted_query(params).encode()


def _nonce(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


class WeChatConnector:
    name = name

    def call(self, req: ChannelRequest, ident: ChannelIdentity, sign: Sign, now: float) -> HttpCall:
        params = {
            "appid": ident.app_id,
            "mch_id": ident.mch_id,
            "sub_mch_id": req.merchant_channel_id,
            "nonce_str": _nonce(req.op, req.out_trade_no, repr(now)),
            "sign_type": "HMAC-SHA256",
            "out_trade_no": req.out_trade_no,
        }
        if req.op == PAY:
            params |= {
                "device_info": req.terminal_id,
                "body": req.subject,
                "total_fee": str(req.amount_fen),
                "fee_type": "CNY",
                "spbill_create_ip": "127.0.0.1",
                "auth_code": req.auth_code,
            }
        elif req.op == REFUND:
            params |= {
                "out_refund_no": req.refund_no,
                "total_fee": str(req.total_fen),
                "refund_fee": str(req.amount_fen),
                "refund_fee_type": "CNY",
            }
        params["sign"] = sign(signing_input(params))
        return HttpCall(paths[req.op], to_xml(params), "text/xml; charset=utf-8")

    def result(self, req: ChannelRequest, answer: HttpAnswer, verify: Verify) -> ChannelResult:
        if answer.status != 200:
            return unknown(req, f"HTTP{answer.status}")
        try:
            doc = from_xml(answer.body)
        except Exception:
            return unknown(req, "BADXML", "unreadable answer")
        if doc.get("return_code") != "SUCCESS":
            # Communication-level failure (bad signature, bad parameters): not processed.
            return declined(req, rc.SYSTEM_MALFUNCTION, "FAIL", doc.get("return_msg", ""))
        if not verify(signing_input(doc), doc.get("sign", "")):
            return unknown(req, "BADSIGN", "answer signature")
        ok = doc.get("result_code") == "SUCCESS"
        err, text = doc.get("err_code", ""), doc.get("err_code_des", "")
        if req.op == PAY:
            if ok:
                return approved(req, "SUCCESS", doc.get("transaction_id", ""))
            if err == "USERPAYING":
                return pending(req, err, text)
            if err in _PAY_UNKNOWN:
                return unknown(req, err, text)
            return declined(req, _PAY_DECLINES.get(err, rc.DO_NOT_HONOUR), err, text)
        if req.op == QUERY:
            if not ok:
                return not_found(req, text) if err == "ORDERNOTEXIST" else unknown(req, err, text)
            state = doc.get("trade_state", "")
            if state in _QUERY_PAID:
                return approved(req, state, doc.get("transaction_id", ""))
            if state in _QUERY_PAYING:
                return pending(req, state, doc.get("trade_state_desc", ""))
            if state in _QUERY_CLOSED:
                return declined(req, rc.DO_NOT_HONOUR, state, doc.get("trade_state_desc", ""))
            return unknown(req, state or "NOSTATE")
        if req.op == REFUND:
            if ok:
                return approved(req, "SUCCESS", doc.get("refund_id", ""))
            return unknown(req, err, text) if err in _PAY_UNKNOWN else declined(req, rc.DO_NOT_HONOUR, err, text)
        # CANCEL (reverse): recall=Y means "call reverse again".
        if ok:
            return (
                unknown(req, "RECALL", "reverse again") if doc.get("recall") == "Y" else approved(req, "REVERSED", "")
            )
        if err == "ORDERNOTEXIST":
            return approved(req, err, "")  # nothing to reverse
        if err in _CANCEL_RETRY:
            return unknown(req, err, text)
        return declined(req, rc.DO_NOT_HONOUR, err, text)


class WeChatChannelSide:
    name = name
    paths = paths

    def read(self, path: str, body: bytes, headers: Mapping[str, str], verify: Verify) -> RequestSeen | str:
        op = _OP_OF_PATH.get(path)
        if op is None:
            return "接口不存在"
        try:
            doc = from_xml(body)
        except Exception:
            return "XML格式错误"
        if not verify(signing_input(doc), doc.get("sign", "")):
            return "签名错误"
        required = ("appid", "mch_id", "out_trade_no", *_REQUIRED.get(op, ()))
        missing = [k for k in required if not doc.get(k)]
        amount_field = {PAY: "total_fee", REFUND: "refund_fee"}.get(op)
        if missing or (amount_field and not doc[amount_field].isdigit()):
            return f"缺少参数或参数格式错误: {','.join(missing) or amount_field}"
        amount = int(doc[amount_field]) if amount_field else 0
        return RequestSeen(
            op,
            doc["out_trade_no"],
            doc.get("auth_code", ""),
            amount,
            doc.get("sub_mch_id", ""),
            refund_no=doc.get("out_refund_no", ""),
            fields=doc,
        )

    def write(self, seen: RequestSeen, verdict: ChannelVerdict, sign: Sign) -> HttpAnswer:
        f = seen.fields
        doc = {
            "return_code": "SUCCESS",
            "return_msg": "OK",
            "appid": f.get("appid", ""),
            "mch_id": f.get("mch_id", ""),
            "sub_mch_id": f.get("sub_mch_id", ""),
            "nonce_str": _nonce(seen.op, seen.out_trade_no, "answer"),
        }
        status = verdict.status
        if seen.op == PAY and status == "SUCCESS":
            doc |= {
                "result_code": "SUCCESS",
                "trade_type": "MICROPAY",
                "total_fee": str(seen.amount_fen),
                "fee_type": "CNY",
                "transaction_id": verdict.channel_txn_id,
                "out_trade_no": seen.out_trade_no,
            }
        elif seen.op == PAY:
            err, text = _PAY_ERRORS[status]
            doc |= {"result_code": "FAIL", "err_code": err, "err_code_des": text}
        elif seen.op == REFUND and status == "DONE":
            doc |= {
                "result_code": "SUCCESS",
                "out_trade_no": seen.out_trade_no,
                "out_refund_no": seen.refund_no,
                "refund_id": verdict.channel_txn_id,
                "refund_fee": str(seen.amount_fen),
            }
        elif seen.op == REFUND and status == "REFUSED":
            doc |= {"result_code": "FAIL", "err_code": "NOTENOUGH", "err_code_des": "商户可退余额不足"}
        elif status in _TRADE_STATE:  # query
            doc |= {
                "result_code": "SUCCESS",
                "trade_state": _TRADE_STATE[status],
                "out_trade_no": seen.out_trade_no,
                "transaction_id": verdict.channel_txn_id,
            }
        elif status == "DONE":  # cancel
            doc |= {"result_code": "SUCCESS", "recall": "N"}
        elif status == "RETRY":
            doc |= {"result_code": "SUCCESS", "recall": "Y"}
        elif status == "NOTEXIST":
            doc |= {"result_code": "FAIL", "err_code": "ORDERNOTEXIST", "err_code_des": "此交易订单号不存在"}
        elif status == "REFUSED":
            doc |= {"result_code": "FAIL", "err_code": "REVERSE_EXPIRE", "err_code_des": "订单已过撤销期限"}
        else:
            doc |= {"result_code": "FAIL", "err_code": "SYSTEMERROR", "err_code_des": "系统错误"}
        doc["sign"] = sign(signing_input(doc))
        return HttpAnswer(200, to_xml(doc), {"Content-Type": "text/xml"})

    def write_error(self, reason: str, sign: Sign) -> HttpAnswer:
        return HttpAnswer(200, to_xml({"return_code": "FAIL", "return_msg": reason}), {"Content-Type": "text/xml"})


connector = WeChatConnector()
channel_side = WeChatChannelSide()
