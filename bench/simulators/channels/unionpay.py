"""UnionPay's acp gateway as the channel reads and answers it (``protocols.channels.unionpay``),
and its notification that a QR code applied for is paid."""

from __future__ import annotations

import base64
import datetime as dt
import zlib
from collections.abc import Mapping

import msgspec

from bench.simulators.side import ChannelVerdict, Notification, Paid, RequestSeen, StatementAsk
from protocols.channels.base import HttpAnswer, Sign, Verify, form_encode
from protocols.channels.unionpay import download, statement
from protocols.channels.unionpay.flows import (
    FORMAT_ERROR,
    NO_SUCH_TXN,
    PATHS,
    read_form,
    signing_input,
)
from protocols.messages import CANCEL, PAY, PRECREATE, QUERY, REFUND
from protocols.statements import CST, StatementRow

_OP_OF_TXN_TYPE = {"01": PAY, "00": QUERY, "31": CANCEL, "04": REFUND}
_ECHOED = (
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
# Verdicts in acp's vocabulary: (respCode, respMsg) of the answer, and for a query the original's
# origRespCode.
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
_ORIG_CODE = {"PAID": "00", "PAYING": "05", "NOTPAY": "05", "CLOSED": "01"}  # NOTPAY: a code nobody paid yet
_CANCEL_CODES = {
    "DONE": ("00", "成功"),
    "RETRY": ("04", "交易状态未明"),
    "NOTEXIST": (NO_SUCH_TXN, "查无此交易"),
    "REFUSED": ("01", "交易失败，已过撤销期限"),
}
_REFUND_CODES = {"DONE": ("00", "成功"), "REFUSED": ("01", "交易失败，可退金额不足")}
_IN_DOUBT = ("04", "交易状态未明")
_FORM = {"Content-Type": "application/x-www-form-urlencoded"}


class UnionPaySide:
    def __init__(self) -> None:
        # acp names an order by its number and the time it was sent (txnTime) together: each order's
        # time, so that a query with another names no order (34), as at UnionPay.
        self._sent_at: dict[str, str] = {}

    paths = frozenset(PATHS.values()) | {download.PATH}
    qr_prefix = "https://qr.95516.com/00010000/"
    # UnionPay's own: again 1, 2, 4 and 5 minutes apart, five sends in all.
    notice_schedule_s = (60, 120, 240, 300)
    closes_unscanned = False  # no close in acp (the switch's close is a query)

    def read(
        self, path: str, body: bytes, headers: Mapping[str, str], verify: Verify
    ) -> RequestSeen | StatementAsk | str:
        doc = read_form(body)
        if not verify(signing_input(doc), doc.get("signature", "")):
            return "验证签名失败"
        if path == download.PATH:
            return _statement_ask(doc)
        op = _op(path, doc)
        if op is None:
            return "交易类型错误"
        if op in (PRECREATE, PAY, REFUND) and doc.get("orderId"):  # a refund is an order of its own
            self._sent_at.setdefault(doc["orderId"], doc.get("txnTime", ""))
        if op == PRECREATE:
            return _qr_apply(doc)
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
        # A query names the order itself; an undo, a close and a refund are orders of their own naming it.
        order = doc.get("orderId") if op == QUERY else doc.get("origOrderId")
        if not order or (op == REFUND and not doc.get("txnAmt", "").isdigit()):
            return "报文格式错误"
        return RequestSeen(
            op,
            order,
            amount_fen=int(doc["txnAmt"]) if op == REFUND else 0,
            merchant=doc.get("merId", ""),
            channel_txn_id=doc.get("origQryId", ""),
            refund_no=doc.get("orderId", ""),
            fields=doc,
        )

    def write(self, seen: RequestSeen, verdict: ChannelVerdict, sign: Sign) -> HttpAnswer:
        f = seen.fields
        doc = {k: str(f.get(k, "")) for k in _ECHOED}
        status = verdict.status
        if seen.op == PAY:
            code, text = _PAY_CODES[status]
            doc |= {"respCode": code, "respMsg": text, "txnAmt": str(seen.amount_fen)}
            if status in ("SUCCESS", "USERPAYING"):
                doc["queryId"] = verdict.channel_txn_id
        elif seen.op == QUERY:
            if self._sent_at.get(seen.out_trade_no, f.get("txnTime")) != f.get("txnTime"):
                status = "NOTEXIST"  # another order time names another order, which it has not
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
        elif seen.op == PRECREATE:
            if status == "CREATED":
                doc |= {"respCode": "00", "respMsg": "成功[0000000]", "qrCode": verdict.qr_code}
            else:
                doc |= {"respCode": _IN_DOUBT[0], "respMsg": _IN_DOUBT[1]}
        else:
            codes = {REFUND: _REFUND_CODES, CANCEL: _CANCEL_CODES}[seen.op]
            code, text = codes.get(status, _IN_DOUBT)
            doc |= {"respCode": code, "respMsg": text}
            if seen.op == REFUND and status == "DONE":
                doc["queryId"] = verdict.channel_txn_id
        doc["signature"] = sign(signing_input(doc))
        return HttpAnswer(200, form_encode(doc), _FORM)

    def write_error(self, reason: str, sign: Sign) -> HttpAnswer:
        # Unsigned, as the gateway answers what it could not read or verify.
        return HttpAnswer(200, form_encode({"respCode": FORMAT_ERROR, "respMsg": reason}), _FORM)

    def notice(self, order: RequestSeen, paid: Paid, sign: Sign) -> Notification:
        f = order.fields
        at = dt.datetime.fromtimestamp(paid.at, CST)
        doc = {k: str(f.get(k, "")) for k in _ECHOED} | {
            "txnAmt": str(paid.amount_fen),
            "currencyCode": str(f.get("currencyCode", "")),
            "reqReserved": str(f.get("reqReserved", "")),
            "queryId": paid.channel_txn_id,
            "respCode": "00",
            "respMsg": "成功[0000000]",
            "settleAmt": str(paid.amount_fen),
            "settleCurrencyCode": "156",
            "settleDate": at.strftime("%m%d"),
            "traceNo": at.strftime("%H%M%S"),  # six digits
            "traceTime": at.strftime("%m%d%H%M%S"),
        }
        doc["signature"] = sign(signing_input(doc))
        return Notification(form_encode(doc), _FORM["Content-Type"])

    def notice_acked(self, status: int, body: bytes) -> bool:
        return status in (200, 302)  # the body is not read

    def statement(self, rows: list[StatementRow], ask: StatementAsk) -> bytes:
        return statement.write([self._as_sent(row) for row in rows])

    def _as_sent(self, row: StatementRow) -> StatementRow:
        """The file's time is the order's txnTime (a refund's own), as the switch sent it, not when
        the channel took it: what a query must name the order by."""
        try:
            sent = dt.datetime.strptime(self._sent_at.get(row.refund_no or row.out_trade_no, ""), "%Y%m%d%H%M%S")
        except ValueError:  # an order the ledger has from elsewhere (a fault's), or sent without a time
            return row
        return msgspec.structs.replace(row, at=sent.replace(tzinfo=CST))

    def write_statement(self, content: bytes, sign: Sign, link: str) -> HttpAnswer:
        doc = {"respCode": "00", "respMsg": "成功", "fileName": "INN_ZM.txt"}
        doc["fileContent"] = base64.b64encode(zlib.compress(content)).decode()
        doc["signature"] = sign(signing_input(doc))
        return HttpAnswer(200, form_encode(doc), _FORM)


def _op(path: str, doc: Mapping[str, str]) -> str | None:
    """The operation a request is, by its path and transaction type (None: not one of ours)."""
    txn_type = doc.get("txnType", "")
    op = _OP_OF_TXN_TYPE.get(txn_type)
    if op == PAY and doc.get("txnSubType") == "07":
        op = PRECREATE
    return op if op is not None and path == PATHS[op] else None


def _qr_apply(doc: Mapping[str, str]) -> RequestSeen | str:
    try:
        expires = dt.datetime.strptime(doc.get("payTimeout", ""), "%Y%m%d%H%M%S").replace(tzinfo=CST)
    except ValueError:
        return "报文格式错误"
    if not doc.get("orderId") or not doc.get("backUrl") or not doc.get("txnAmt", "").isdigit():
        return "报文格式错误"
    return RequestSeen(
        PRECREATE,
        doc["orderId"],
        amount_fen=int(doc["txnAmt"]),
        merchant=doc.get("merId", ""),
        fields={**doc, "notify_url": doc["backUrl"], "expires_at": expires.timestamp()},
    )


def _statement_ask(doc: Mapping[str, str]) -> StatementAsk | str:
    try:
        asked_at = dt.datetime.strptime(doc.get("txnTime", ""), "%Y%m%d%H%M%S").date()
    except ValueError:
        return "报文格式错误"
    day = _settle_day(doc.get("settleDate", ""), asked_at)
    if day is None:
        return "报文格式错误"
    return StatementAsk(day, doc.get("merId", ""))


def _settle_day(month_day: str, asked_at: dt.date) -> dt.date | None:
    """The day ``MMDD`` names: the latest such day not after the asking, this year or last
    (December's file is asked for in January; 29 February is only in a leap year)."""
    if len(month_day) != 4 or not month_day.isdigit():
        return None
    for year in (asked_at.year, asked_at.year - 1):
        try:
            day = dt.date(year, int(month_day[:2]), int(month_day[2:]))
        except ValueError:
            continue
        if day <= asked_at:
            return day
    return None


side = UnionPaySide()
