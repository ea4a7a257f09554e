"""WeChat Pay v2 ``pay/micropay`` (merchant scans the customer's payment code).

XML over HTTPS; the signature is HMAC-SHA256 over the non-empty parameters sorted by name as
``k=v&...`` with ``&key=<API key>`` appended, upper-case hex (the ``&key=`` suffix and the key
itself are the HSM signer's business). Answers carry ``return_code`` (communication) and
``result_code`` / ``err_code`` (business); ``USERPAYING`` means the customer is still
confirming, ``SYSTEMERROR`` / ``BANKERROR`` mean the result is unknown and must be queried.
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
    PayRequestSeen,
    Sign,
    Verify,
    approved,
    declined,
    pending,
    sorted_query,
    unknown,
)
from protocols.channels.xmlkv import from_xml, to_xml
from protocols.messages import ChannelRequest, ChannelResult

name = "wechat"
pay_path = "/pay/micropay"

_UNKNOWN_ERRORS = {"SYSTEMERROR", "BANKERROR", "ORDERPAID"}
_DECLINE_CODES = {
    "NOTENOUGH": rc.INSUFFICIENT_FUNDS,
    "AUTHCODEEXPIRE": rc.EXPIRED_CODE,
    "AUTH_CODE_INVALID": rc.INVALID_PAYMENT_CODE,
    "AUTH_CODE_ERROR": rc.INVALID_PAYMENT_CODE,
}
# Simulator verdicts in WeChat's own vocabulary.
_ERR_CODE_OF_VERDICT = {
    "USERPAYING": ("USERPAYING", "需要用户输入支付密码"),
    "NOTENOUGH": ("NOTENOUGH", "余额不足"),
    "EXPIRED": ("AUTHCODEEXPIRE", "二维码已过期，请用户在微信上刷新后再试"),
    "INVALID": ("AUTH_CODE_INVALID", "授权码检验错误"),
    "DECLINED": ("TRADE_ERROR", "交易错误"),
    "SYSTEMERROR": ("SYSTEMERROR", "接口返回错误"),
}


def signing_input(params: Mapping[str, str]) -> bytes:
    return sorted_query(params).encode()


def _nonce(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


class WeChatConnector:
    name = name

    def pay_call(self, req: ChannelRequest, ident: ChannelIdentity, sign: Sign, now: float) -> HttpCall:
        params = {
            "appid": ident.app_id,
            "mch_id": ident.mch_id,
            "sub_mch_id": req.merchant_channel_id,
            "device_info": req.terminal_id,
            "nonce_str": _nonce(req.out_trade_no, repr(now)),
            "sign_type": "HMAC-SHA256",
            "body": req.subject,
            "out_trade_no": req.out_trade_no,
            "total_fee": str(req.amount_fen),
            "fee_type": "CNY",
            "spbill_create_ip": "127.0.0.1",
            "auth_code": req.auth_code,
        }
        params["sign"] = sign(signing_input(params))
        return HttpCall(pay_path, to_xml(params), "text/xml; charset=utf-8")

    def pay_result(self, req: ChannelRequest, answer: HttpAnswer, verify: Verify) -> ChannelResult:
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
        if doc.get("result_code") == "SUCCESS":
            return approved(req, "SUCCESS", doc.get("transaction_id", ""))
        err, text = doc.get("err_code", ""), doc.get("err_code_des", "")
        if err == "USERPAYING":
            return pending(req, err, text)
        if err in _UNKNOWN_ERRORS:
            return unknown(req, err, text)
        return declined(req, _DECLINE_CODES.get(err, rc.DO_NOT_HONOUR), err, text)


class WeChatChannelSide:
    name = name
    pay_path = pay_path

    def read_pay(self, body: bytes, headers: Mapping[str, str], verify: Verify) -> PayRequestSeen | str:
        try:
            doc = from_xml(body)
        except Exception:
            return "XML格式错误"
        if not verify(signing_input(doc), doc.get("sign", "")):
            return "签名错误"
        missing = [k for k in ("appid", "mch_id", "out_trade_no", "total_fee", "auth_code") if not doc.get(k)]
        if missing or not doc["total_fee"].isdigit():
            return f"缺少参数或参数格式错误: {','.join(missing) or 'total_fee'}"
        return PayRequestSeen(
            doc["out_trade_no"], doc["auth_code"], int(doc["total_fee"]), doc.get("sub_mch_id", ""), doc
        )

    def write_pay(self, seen: PayRequestSeen, verdict: ChannelVerdict, sign: Sign) -> HttpAnswer:
        f = seen.fields
        doc = {
            "return_code": "SUCCESS",
            "return_msg": "OK",
            "appid": f.get("appid", ""),
            "mch_id": f.get("mch_id", ""),
            "sub_mch_id": f.get("sub_mch_id", ""),
            "nonce_str": _nonce(seen.out_trade_no, "answer"),
        }
        if verdict.status == "SUCCESS":
            doc |= {
                "result_code": "SUCCESS",
                "trade_type": "MICROPAY",
                "total_fee": str(seen.amount_fen),
                "fee_type": "CNY",
                "transaction_id": verdict.channel_txn_id,
                "out_trade_no": seen.out_trade_no,
            }
        else:
            err, text = _ERR_CODE_OF_VERDICT[verdict.status]
            doc |= {"result_code": "FAIL", "err_code": err, "err_code_des": text}
        doc["sign"] = sign(signing_input(doc))
        return HttpAnswer(200, to_xml(doc), {"Content-Type": "text/xml"})

    def write_error(self, reason: str, sign: Sign) -> HttpAnswer:
        return HttpAnswer(200, to_xml({"return_code": "FAIL", "return_msg": reason}), {"Content-Type": "text/xml"})


connector = WeChatConnector()
channel_side = WeChatChannelSide()
