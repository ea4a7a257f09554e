"""Alipay as the channel reads and answers it (``protocols.channels.alipay``): the trade methods
and the bill download link, all on the one gateway path, told apart by ``method``; and the
notification that a precreated order is paid."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping

import msgspec

from bench.simulators.side import ChannelVerdict, Notification, Paid, RequestSeen, StatementAsk
from protocols.channels.alipay import download, statement
from protocols.channels.alipay.flows import (
    ERROR_NODE,
    FAILED,
    GATEWAY,
    INVALID_ARGUMENTS,
    METHODS,
    NOT_EXIST,
    NOTICE_UNSIGNED,
    NOTIFY_TYPE,
    SIGN_TYPE,
    STATUS_ERROR,
    SUCCESS,
    UNKNOWN,
    WAITING,
    TradeCancel,
    TradeClose,
    TradePay,
    TradePrecreate,
    TradeQuery,
    TradeRefund,
    beijing,
    response_node,
)
from protocols.channels.base import HttpAnswer, Sign, Verify, fen, form_decode, form_encode, sorted_query, yuan
from protocols.messages import CANCEL, CLOSE, PAY, PRECREATE, QUERY, REFUND
from protocols.statements import CST, StatementRow

_OP_OF_METHOD = {method: op for op, method in METHODS.items()}
_CONTENT = {
    PAY: TradePay,
    QUERY: TradeQuery,
    CANCEL: TradeCancel,
    REFUND: TradeRefund,
    PRECREATE: TradePrecreate,
    CLOSE: TradeClose,
}
# Verdicts in Alipay's own vocabulary: (code, msg, sub_code, sub_msg).
_FAILED = "Business Failed"
_ANSWERS = {
    (PAY, "USERPAYING"): (WAITING, "Waiting for buyer to pay", "", ""),
    (PAY, "NOTENOUGH"): (FAILED, _FAILED, "ACQ.BUYER_BALANCE_NOT_ENOUGH", "买家余额不足"),
    (PAY, "EXPIRED"): (FAILED, _FAILED, "ACQ.AUTH_CODE_EXPIRED", "付款码已过期"),
    (PAY, "INVALID"): (FAILED, _FAILED, "ACQ.PAYMENT_AUTH_CODE_INVALID", "支付失败，获取顾客账户信息失败"),
    (PAY, "DECLINED"): (FAILED, _FAILED, "ACQ.TRADE_HAS_CLOSE", "交易已经关闭"),
    (PAY, "ORDERCLOSED"): (FAILED, _FAILED, "ACQ.TRADE_HAS_CLOSE", "交易已经关闭"),
    (QUERY, "NOTEXIST"): (FAILED, _FAILED, NOT_EXIST, "交易不存在"),
    (QUERY, "NOTPAY"): (FAILED, _FAILED, NOT_EXIST, "交易不存在"),  # no trade until the customer scans
    (CANCEL, "NOTEXIST"): (FAILED, _FAILED, NOT_EXIST, "交易不存在"),
    (CANCEL, "REFUSED"): (FAILED, _FAILED, "ACQ.REASON_TRADE_BEEN_FREEZEN", "交易已冻结，不能撤销"),
    (REFUND, "REFUSED"): (FAILED, _FAILED, "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额超限"),
    (CLOSE, "NOTEXIST"): (FAILED, _FAILED, NOT_EXIST, "交易不存在"),
    (CLOSE, "PAID"): (FAILED, _FAILED, STATUS_ERROR, "交易状态不合法"),
}
_SYSTEM_ERROR = (UNKNOWN, "Service Currently Unavailable", "aop.unknow-error", "系统繁忙")
_TRADE_STATUS = {"PAID": "TRADE_SUCCESS", "PAYING": "WAIT_BUYER_PAY", "CLOSED": "TRADE_CLOSED"}
_JSON = {"Content-Type": "application/json;charset=utf-8"}
_SELLER_ID = "2088101117955611"


class AlipaySide:
    paths = frozenset({GATEWAY})
    qr_prefix = "https://qr.alipay.com/bax0"
    # Alipay's own: 4m, 10m, 10m, 1h, 2h, 6h, 15h after the first, 24 h 24 min in all.
    notice_schedule_s = (240, 600, 600, 3600, 7200, 21600, 54000)
    closes_unscanned = False  # no trade until the customer scans: its close finds none

    def read(
        self, path: str, body: bytes, headers: Mapping[str, str], verify: Verify
    ) -> RequestSeen | StatementAsk | str:
        params = form_decode(body.decode("utf-8", "replace"))
        method = params.get("method", "")
        if path != GATEWAY or (method not in _OP_OF_METHOD and method != download.METHOD):
            return "isv.invalid-method"
        if params.get("sign_type") != SIGN_TYPE or not verify(sorted_query(params).encode(), params.get("sign", "")):
            return "isv.invalid-signature"
        biz = params.get("biz_content", "")
        try:
            if method == download.METHOD:
                return StatementAsk(
                    msgspec.json.decode(biz, type=download.BillQuery).bill_date, params.get("app_id", "")
                )
            return _seen(_OP_OF_METHOD[method], msgspec.json.decode(biz, type=_CONTENT[_OP_OF_METHOD[method]]), params)
        except ValueError:  # msgspec's DecodeError and ValidationError, and amounts that are not yuan
            return "isv.invalid-parameter"

    def write(self, seen: RequestSeen, verdict: ChannelVerdict, sign: Sign) -> HttpAnswer:
        status = verdict.status
        if status == "SYSTEMERROR":
            code, msg, sub_code, sub_msg = _SYSTEM_ERROR
        else:
            code, msg, sub_code, sub_msg = _ANSWERS.get((seen.op, status), (SUCCESS, "Success", "", ""))
        node = {"code": code, "msg": msg}
        if sub_code:
            node |= {"sub_code": sub_code, "sub_msg": sub_msg}
        node["out_trade_no"] = seen.out_trade_no
        if seen.op == PAY:
            node["total_amount"] = yuan(seen.amount_fen)
        if seen.op in (PAY, QUERY) and (status in ("SUCCESS", "USERPAYING") or status in _TRADE_STATUS):
            node["trade_no"] = verdict.channel_txn_id
        if seen.op == QUERY and status in _TRADE_STATUS:
            node["trade_status"] = _TRADE_STATUS[status]
        if seen.op == REFUND and status == "DONE":
            node |= {"trade_no": verdict.channel_txn_id, "refund_fee": yuan(seen.amount_fen), "fund_change": "Y"}
        if seen.op == CANCEL and status in ("DONE", "RETRY"):
            node |= {"retry_flag": "Y" if status == "RETRY" else "N", "action": "close"}
        if seen.op == PRECREATE and status == "CREATED":
            node["qr_code"] = verdict.qr_code
        return _signed(str(seen.fields.get("method", METHODS[seen.op])), node, sign)

    def write_error(self, reason: str, sign: Sign) -> HttpAnswer:
        node = {"code": INVALID_ARGUMENTS, "msg": "Invalid Arguments", "sub_code": reason, "sub_msg": reason}
        return HttpAnswer(200, msgspec.json.encode({ERROR_NODE: node}), _JSON)  # unsigned, as Alipay sends it

    def notice(self, order: RequestSeen, paid: Paid, sign: Sign) -> Notification:
        f = order.fields
        amount, at = yuan(paid.amount_fen), beijing(paid.at)
        params = {
            "notify_time": at,
            "notify_type": NOTIFY_TYPE,
            "notify_id": hashlib.sha256(f"{order.out_trade_no}|{paid.channel_txn_id}".encode()).hexdigest()[:34],
            "app_id": str(f.get("app_id", "")),
            "charset": "utf-8",
            "version": "1.0",
            "trade_no": paid.channel_txn_id,
            "out_trade_no": order.out_trade_no,
            "buyer_id": "2088102177846880",
            "buyer_logon_id": "159****5620",
            "seller_id": _SELLER_ID,
            "trade_status": "TRADE_SUCCESS",
            "total_amount": amount,
            "receipt_amount": amount,
            "buyer_pay_amount": amount,
            "subject": str(f.get("subject", "")),
            "gmt_create": at,
            "gmt_payment": at,
        }
        params |= {"sign_type": SIGN_TYPE, "sign": sign(sorted_query(params, NOTICE_UNSIGNED).encode())}
        return Notification(form_encode(params), "application/x-www-form-urlencoded;charset=utf-8")

    def notice_acked(self, status: int, body: bytes) -> bool:
        return status == 200 and body == b"success"

    def statement(self, rows: list[StatementRow], ask: StatementAsk) -> bytes:
        return statement.write(rows, _SELLER_ID, ask.day.isoformat())

    def write_statement(self, content: bytes, sign: Sign, link: str) -> HttpAnswer:
        return _signed(download.METHOD, {"code": SUCCESS, "msg": "Success", "bill_download_url": link}, sign)


_Content = TradePay | TradeQuery | TradeCancel | TradeRefund | TradePrecreate | TradeClose


def _seen(op: str, content: _Content, params: dict[str, str]) -> RequestSeen | str:
    """The request ``content`` makes; ValueError where a field is malformed."""
    if isinstance(content, TradePrecreate):
        if not params.get("notify_url"):
            return "isv.missing-notify-url"
        expires = dt.datetime.strptime(content.time_expire, "%Y-%m-%d %H:%M:%S").replace(tzinfo=CST)
        return RequestSeen(
            op,
            content.out_trade_no,
            amount_fen=fen(content.total_amount),
            merchant=content.store_id,
            fields=params | {"subject": content.subject, "expires_at": expires.timestamp()},
        )
    if isinstance(content, TradePay):
        return RequestSeen(
            op, content.out_trade_no, content.auth_code, fen(content.total_amount), content.store_id, fields=params
        )
    if isinstance(content, TradeRefund):
        return RequestSeen(
            op,
            content.out_trade_no,
            amount_fen=fen(content.refund_amount),
            refund_no=content.out_request_no,
            fields=params,
        )
    return RequestSeen(op, content.out_trade_no, fields=params)


def _signed(method: str, node: Mapping[str, str], sign: Sign) -> HttpAnswer:
    """``{"<method>_response": node, "sign": ...}``, signed over the node's text as written."""
    node_text = msgspec.json.encode(node).decode()
    body = f'{{"{response_node(method)}":{node_text},"sign":"{sign(node_text.encode())}"}}'
    return HttpAnswer(200, body.encode(), _JSON)


side = AlipaySide()
