"""UnionPay QR, merchant scans the customer's code, through the acp gateway: consumption
(``txnType`` 01), transaction query (00, on ``queryTrans.do``), consumption undo (31) and refund
(04, 退货).

Form parameters (``version`` 5.1.0, ``signMethod`` 01): the signing input is the hex SHA-256 of
the sorted ``k=v&...`` string of every parameter but ``signature``, signed SHA256withRSA, base64.
Answers are form-encoded and signed the same way. ``respCode`` 00 is success; 03 / 04 mean the
state is unknown and 05 that it was accepted and is in progress: both are resolved by query
(acp's own guidance), whose ``origRespCode`` gives the original's state; 34 is "no such
transaction". A query names its original by ``orderId`` and ``txnTime``, so the pay's
``txnTime`` is the transaction's write-ahead time, known again at recovery. The business refusals
the simulator produces carry the ISO-derived codes UnionPay uses for them (51, 54, 14); any
other code is a refusal (01, "交易失败").
"""

from __future__ import annotations

import datetime as dt
import hashlib
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
    form_encode,
    not_found,
    pending,
    sorted_query,
    unknown,
)
from protocols.messages import CANCEL, PAY, QUERY, REFUND, ChannelRequest, ChannelResult

name = "unionpay"
BACK_TRANS = "/gateway/api/backTransReq.do"
QUERY_TRANS = "/gateway/api/queryTrans.do"
paths = {PAY: BACK_TRANS, QUERY: QUERY_TRANS, CANCEL: BACK_TRANS, REFUND: BACK_TRANS}
_TXN_TYPE = {PAY: "01", QUERY: "00", CANCEL: "31", REFUND: "04"}
_OP_OF_TXN_TYPE = {code: op for op, code in _TXN_TYPE.items()}
_CST = dt.timezone(dt.timedelta(hours=8))
_SKIP = frozenset({"signature"})
NO_SUCH_TXN = "34"
_IN_DOUBT = {"03", "04", "05"}

_DECLINES = {"51": rc.INSUFFICIENT_FUNDS, "54": rc.EXPIRED_CODE, "14": rc.INVALID_PAYMENT_CODE}
# Simulator verdicts in acp's vocabulary: (respCode, respMsg) of the answer, and for a query the
# original's origRespCode.
_PAY_CODES = {
    "SUCCESS": ("00", "成功[0000000]"),
    "USERPAYING": ("05", "交易已受理，请稍后查询交易结果"),
    "NOTENOUGH": ("51", "余额不足"),
    "EXPIRED": ("54", "付款码已过期"),
    "INVALID": ("14", "无效付款码"),
    "DECLINED": ("01", "交易失败"),
    "ORDERCLOSED": ("01", "交易失败，订单已关闭"),
    "SYSTEMERROR": ("04", "交易状态未明，请查询对账结果"),
}
_ORIG_CODE = {"PAID": "00", "PAYING": "05", "CLOSED": "01"}
_CANCEL_CODES = {
    "DONE": ("00", "成功"),
    "RETRY": ("04", "交易状态未明"),
    "NOTEXIST": (NO_SUCH_TXN, "查无此交易"),
    "REFUSED": ("01", "交易失败，已过撤销期限"),
}
_REFUND_CODES = {"DONE": ("00", "成功"), "REFUSED": ("01", "交易失败，可退金额不足")}


def signing_input(params: Mapping[str, str]) -> bytes:
    return hashlib.sha256(sorted_query(params, _SKIP).encode()).hexdigest().encode()


def _txn_time(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, _CST).strftime("%Y%m%d%H%M%S")


class UnionPayConnector:
    name = name

    def call(self, req: ChannelRequest, ident: ChannelIdentity, sign: Sign, now: float) -> HttpCall:
        params = {
            "version": "5.1.0",
            "encoding": "UTF-8",
            "signMethod": "01",
            "txnType": _TXN_TYPE[req.op],
            "txnSubType": "06" if req.op == PAY else "00",
            "bizType": "000000",
            "accessType": "0",
            "channelType": "08",
            "merId": req.merchant_channel_id or ident.mch_id,
            "orderId": req.out_trade_no,
            "txnTime": _txn_time(req.created or now),
            "certId": ident.cert_id,
        }
        if req.op == PAY:
            params |= {
                "txnAmt": str(req.amount_fen),
                "currencyCode": "156",
                "qrNo": req.auth_code,
                "termId": req.terminal_id,
            }
            if req.pin_block:  # card with PIN: ISO 9564 format 0 under the zone PIN key shared with UnionPay
                params["pinBlock"] = req.pin_block
        elif req.op == CANCEL:
            # An undo is an order of its own, tied to the original by its query id (and order id).
            params |= {
                "orderId": req.out_trade_no + "C",
                "txnTime": _txn_time(now),
                "origQryId": req.channel_txn_id,
                "origOrderId": req.out_trade_no,
                "txnAmt": str(req.amount_fen),
                "currencyCode": "156",
            }
        elif req.op == REFUND:
            params |= {
                "orderId": req.refund_no,
                "txnTime": _txn_time(now),
                "origQryId": req.channel_txn_id,
                "origOrderId": req.out_trade_no,
                "txnAmt": str(req.amount_fen),
                "currencyCode": "156",
            }
        params["signature"] = sign(signing_input(params))
        return HttpCall(paths[req.op], form_encode(params), "application/x-www-form-urlencoded;charset=UTF-8")

    def result(self, req: ChannelRequest, answer: HttpAnswer, verify: Verify) -> ChannelResult:
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
        if req.op == PAY:
            if code == "00":
                return approved(req, code, doc.get("queryId", ""))
            if code == "05":
                return pending(req, code, message, doc.get("queryId", ""))
            if code in _IN_DOUBT:
                return unknown(req, code, message)
            return declined(req, _DECLINES.get(code, rc.DO_NOT_HONOUR), code, message)
        if req.op == QUERY:
            if code == NO_SUCH_TXN:
                return not_found(req, message)
            if code != "00":
                return unknown(req, code, message)
            original = doc.get("origRespCode", "")
            if original == "00":
                return approved(req, original, doc.get("queryId", ""))
            if original in _IN_DOUBT:
                return pending(req, original, doc.get("origRespMsg", ""), doc.get("queryId", ""))
            return declined(req, rc.DO_NOT_HONOUR, original, doc.get("origRespMsg", ""))
        # CANCEL and REFUND
        if code == "00":
            return approved(req, code, doc.get("queryId", ""))
        if code in _IN_DOUBT:
            return unknown(req, code, message)
        if code == NO_SUCH_TXN and req.op == CANCEL:
            return approved(req, code, "")  # nothing to undo
        return declined(req, rc.DO_NOT_HONOUR, code, message)


class UnionPayChannelSide:
    name = name
    paths = paths

    def read(self, path: str, body: bytes, headers: Mapping[str, str], verify: Verify) -> RequestSeen | str:
        doc = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        if not verify(signing_input(doc), doc.get("signature", "")):
            return "验证签名失败"
        op = _OP_OF_TXN_TYPE.get(doc.get("txnType", ""))
        if op is None or path != paths[op]:
            return "交易类型错误"
        if op == PAY:
            if not doc.get("orderId") or not doc.get("qrNo") or not doc.get("txnAmt", "").isdigit():
                return "报文格式错误"
            return RequestSeen(
                op,
                doc["orderId"],
                doc["qrNo"],
                int(doc["txnAmt"]),
                doc.get("merId", ""),
                pin_block=doc.get("pinBlock", ""),
                fields=doc,
            )
        order = doc.get("orderId") if op == QUERY else doc.get("origOrderId")
        if not order or (op == REFUND and not doc.get("txnAmt", "").isdigit()):
            return "报文格式错误"
        amount = int(doc["txnAmt"]) if op == REFUND else 0
        return RequestSeen(
            op,
            order,
            amount_fen=amount,
            merchant=doc.get("merId", ""),
            channel_txn_id=doc.get("origQryId", ""),
            refund_no=doc.get("orderId", ""),
            fields=doc,
        )

    def write(self, seen: RequestSeen, verdict: ChannelVerdict, sign: Sign) -> HttpAnswer:
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
            )
        }
        status = verdict.status
        if seen.op == PAY:
            code, text = _PAY_CODES[status]
            doc |= {"respCode": code, "respMsg": text, "txnAmt": str(seen.amount_fen)}
            if status in ("SUCCESS", "USERPAYING"):
                doc["queryId"] = verdict.channel_txn_id
        elif seen.op == QUERY:
            if status in _ORIG_CODE:
                doc |= {
                    "respCode": "00",
                    "respMsg": "成功",
                    "origRespCode": _ORIG_CODE[status],
                    "origRespMsg": "",
                    "queryId": verdict.channel_txn_id,
                }
            elif status == "NOTEXIST":
                doc |= {"respCode": NO_SUCH_TXN, "respMsg": "查无此交易"}
            else:
                doc |= {"respCode": "04", "respMsg": "系统繁忙"}
        else:
            codes = _REFUND_CODES if seen.op == REFUND else _CANCEL_CODES
            code, text = codes.get(status, ("04", "交易状态未明"))
            doc |= {"respCode": code, "respMsg": text}
            if seen.op == REFUND and status == "DONE":
                doc["queryId"] = verdict.channel_txn_id
        doc["signature"] = sign(signing_input(doc))
        return HttpAnswer(200, form_encode(doc), {"Content-Type": "application/x-www-form-urlencoded"})

    def write_error(self, reason: str, sign: Sign) -> HttpAnswer:
        body = form_encode({"respCode": "30", "respMsg": reason})
        return HttpAnswer(200, body, {"Content-Type": "application/x-www-form-urlencoded"})


connector = UnionPayConnector()
channel_side = UnionPayChannelSide()
