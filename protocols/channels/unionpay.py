"""UnionPay QR consumption through the acp gateway (merchant scans the customer's UnionPay code).

Form parameters (``version`` 5.1.0, ``signMethod`` 01): the signing input is the hex SHA-256 of
the sorted ``k=v&...`` string of every parameter but ``signature``, signed SHA256withRSA, base64.
The synchronous answer is form-encoded and signed the same way. ``respCode`` 00 is success;
03 / 04 mean the state is unknown and 05 that it was accepted and is in progress: both are
resolved by query (acp's own guidance). The business refusals the simulator produces carry the
ISO-derived codes UnionPay uses for them (51, 54, 14); any other code is a refusal (01, "交易失败").
"""

from __future__ import annotations

import datetime as dt
import hashlib
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
    pending,
    sorted_query,
    unknown,
)
from protocols.messages import ChannelRequest, ChannelResult

name = "unionpay"
pay_path = "/gateway/api/backTransReq.do"
_CST = dt.timezone(dt.timedelta(hours=8))
_SKIP = frozenset({"signature"})

_DECLINES = {"51": rc.INSUFFICIENT_FUNDS, "54": rc.EXPIRED_CODE, "14": rc.INVALID_PAYMENT_CODE}
_RESP_OF_VERDICT = {
    "USERPAYING": ("05", "交易已受理，请稍后查询交易结果"),
    "NOTENOUGH": ("51", "余额不足"),
    "EXPIRED": ("54", "付款码已过期"),
    "INVALID": ("14", "无效付款码"),
    "DECLINED": ("01", "交易失败"),
    "SYSTEMERROR": ("04", "交易状态未明，请查询对账结果"),
}
_UNKNOWN_CODES = {"03", "04"}


def signing_input(params: Mapping[str, str]) -> bytes:
    return hashlib.sha256(sorted_query(params, _SKIP).encode()).hexdigest().encode()


class UnionPayConnector:
    name = name

    def pay_call(self, req: ChannelRequest, ident: ChannelIdentity, sign: Sign, now: float) -> HttpCall:
        params = {
            "version": "5.1.0",
            "encoding": "UTF-8",
            "signMethod": "01",
            "txnType": "01",
            "txnSubType": "06",
            "bizType": "000000",
            "accessType": "0",
            "channelType": "08",
            "merId": req.merchant_channel_id or ident.mch_id,
            "orderId": req.out_trade_no,
            "txnTime": dt.datetime.fromtimestamp(now, _CST).strftime("%Y%m%d%H%M%S"),
            "txnAmt": str(req.amount_fen),
            "currencyCode": "156",
            "qrNo": req.auth_code,
            "termId": req.terminal_id,
            "certId": ident.cert_id,
        }
        params["signature"] = sign(signing_input(params))
        return HttpCall(pay_path, urlencode(params).encode(), "application/x-www-form-urlencoded;charset=UTF-8")

    def pay_result(self, req: ChannelRequest, answer: HttpAnswer, verify: Verify) -> ChannelResult:
        if answer.status != 200:
            return unknown(req, f"HTTP{answer.status}")
        doc = dict(parse_qsl(answer.body.decode("utf-8", "replace"), keep_blank_values=True))
        code, message = doc.get("respCode", ""), doc.get("respMsg", "")
        if not code:
            return unknown(req, "BADFORM", "unreadable answer")
        if code == "30" and "signature" not in doc:  # format / signature error: not processed
            return declined(req, rc.SYSTEM_MALFUNCTION, code, message)
        if not verify(signing_input(doc), doc.get("signature", "")):
            return unknown(req, "BADSIGN", "answer signature")
        if code == "00":
            return approved(req, code, doc.get("queryId", ""))
        if code == "05":
            return pending(req, code, message, doc.get("queryId", ""))
        if code in _UNKNOWN_CODES:
            return unknown(req, code, message)
        return declined(req, _DECLINES.get(code, rc.DO_NOT_HONOUR), code, message)


class UnionPayChannelSide:
    name = name
    pay_path = pay_path

    def read_pay(self, body: bytes, headers: Mapping[str, str], verify: Verify) -> PayRequestSeen | str:
        doc = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        if not verify(signing_input(doc), doc.get("signature", "")):
            return "验证签名失败"
        if not doc.get("orderId") or not doc.get("qrNo") or not doc.get("txnAmt", "").isdigit():
            return "报文格式错误"
        return PayRequestSeen(doc["orderId"], doc["qrNo"], int(doc["txnAmt"]), doc.get("merId", ""), doc)

    def write_pay(self, seen: PayRequestSeen, verdict: ChannelVerdict, sign: Sign) -> HttpAnswer:
        f = seen.fields
        doc = {
            k: f.get(k, "")
            for k in (
                "version",
                "encoding",
                "signMethod",
                "txnType",
                "txnSubType",
                "bizType",
                "accessType",
                "merId",
                "orderId",
                "txnTime",
                "txnAmt",
                "currencyCode",
            )
        }
        if verdict.status == "SUCCESS":
            doc |= {"respCode": "00", "respMsg": "成功[0000000]", "queryId": verdict.channel_txn_id}
        else:
            code, text = _RESP_OF_VERDICT[verdict.status]
            doc |= {"respCode": code, "respMsg": text}
            if verdict.status == "USERPAYING":
                doc["queryId"] = verdict.channel_txn_id
        doc["signature"] = sign(signing_input(doc))
        return HttpAnswer(200, urlencode(doc).encode(), {"Content-Type": "application/x-www-form-urlencoded"})

    def write_error(self, reason: str, sign: Sign) -> HttpAnswer:
        body = urlencode({"respCode": "30", "respMsg": reason}).encode()
        return HttpAnswer(200, body, {"Content-Type": "application/x-www-form-urlencoded"})


connector = UnionPayConnector()
channel_side = UnionPayChannelSide()
