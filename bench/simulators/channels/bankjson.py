"""The bank JSON shape as a bank reads and answers it (``protocols.channels.bankjson``), on the
paths one bank serves it on, and its notifications that a QR order is paid: e-CNY's and the
in-bank code's simulators are each one of these.

A sealed payment code is passed on as it came: the simulator opens it with its data key."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Mapping

import msgspec

from bench.simulators.side import ChannelVerdict, Notification, Paid, RequestSeen, StatementAsk
from protocols.channels.bankjson import Paths, statement
from protocols.channels.bankjson.download import BillAnswer, BillRequest
from protocols.channels.bankjson.flows import (
    ACKED,
    NO_SUCH_ORDER,
    OK,
    ORDER_PAID,
    SIGNATURE_HEADER,
    SYSTEM_ERROR,
    Answer,
    Cancel,
    CancelAnswer,
    CloseAnswer,
    NotifyData,
    Pay,
    PayAnswer,
    QrAnswer,
    QrClose,
    QrCreate,
    Query,
    Refund,
    RefundAnswer,
    SignedNotice,
    TradeAnswer,
    encode,
    timestamp,
)
from protocols.channels.base import HttpAnswer, Sign, Verify
from protocols.messages import CANCEL, CLOSE, PAY, PRECREATE, QUERY, REFUND
from protocols.statements import CST, StatementRow

# Verdicts in this API's vocabulary: (code, trade_status / cancel_status / refund_status, message).
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
    (QUERY, "NOTPAY"): (OK, "NOTPAY", "等待用户付款"),
    (CANCEL, "DONE"): (OK, "CANCELLED", "已撤销"),
    (CANCEL, "RETRY"): (OK, "RETRY", "请重试"),
    (CANCEL, "NOTEXIST"): (NO_SUCH_ORDER, "", "订单不存在"),
    (CANCEL, "REFUSED"): ("1006", "REFUSED", "已过撤销期限"),
    (REFUND, "DONE"): (OK, "SUCCESS", "退款成功"),
    (REFUND, "REFUSED"): ("1007", "FAILED", "可退金额不足"),
    (PRECREATE, "CREATED"): (OK, "NOTPAY", "成功"),
    (CLOSE, "DONE"): (OK, "CLOSED", "已关闭"),
    (CLOSE, "NOTEXIST"): (NO_SUCH_ORDER, "", "订单不存在"),
    (CLOSE, "PAID"): (ORDER_PAID, "", "订单已支付，不能关闭"),
}
_SYSTEM_BUSY = (SYSTEM_ERROR, "", "系统繁忙")
_SHAPES = ((PAY, Pay), (QUERY, Query), (CANCEL, Cancel), (REFUND, Refund), (PRECREATE, QrCreate), (CLOSE, QrClose))
_REQUESTS = {op: msgspec.json.Decoder(shape) for op, shape in _SHAPES}
_BILL_REQUEST = msgspec.json.Decoder(BillRequest)
_ANSWER = msgspec.json.Decoder(Answer)
_JSON = "application/json"


class BankJsonSide:
    # The bank's notification schedule: again after 15s, 1m, 5m, 15m and 1h.
    notice_schedule_s = (15, 60, 300, 900, 3600)
    closes_unscanned = True

    def __init__(self, paths: Paths, qr_prefix: str) -> None:
        self._op_of_path = {path: op for op, path in paths.flows.items()}
        self._statement_path = paths.statement
        self.paths = frozenset(self._op_of_path) | {paths.statement}
        self.qr_prefix = qr_prefix

    def read(
        self, path: str, body: bytes, headers: Mapping[str, str], verify: Verify
    ) -> RequestSeen | StatementAsk | str:
        if path == self._statement_path:
            return _read_statement_ask(body, headers, verify)
        op = self._op_of_path.get(path)
        if op is None:
            return "no such API"
        if not verify(body, headers.get(SIGNATURE_HEADER, "")):
            return "signature verification failed"
        try:
            request = _REQUESTS[op].decode(body)
        except msgspec.DecodeError:  # ValidationError included: a missing field, an amount not above 0
            return "invalid request body"
        if isinstance(request, Pay):
            return RequestSeen(PAY, request.out_trade_no, request.pay_code, request.amount, request.mch_id)
        if isinstance(request, QrCreate):
            return _qr_create(request)
        if isinstance(request, Refund):
            return RequestSeen(
                REFUND,
                request.out_trade_no,
                amount_fen=request.refund_amount,
                merchant=request.mch_id,
                refund_no=request.out_refund_no,
            )
        return RequestSeen(op, request.out_trade_no, merchant=request.mch_id)

    def write(self, seen: RequestSeen, verdict: ChannelVerdict, sign: Sign) -> HttpAnswer:
        code, status, message = _ANSWERS.get((seen.op, verdict.status), _SYSTEM_BUSY)
        head = {"code": code, "text": message, "out_trade_no": seen.out_trade_no}
        answer: Answer
        if seen.op == REFUND:
            done = status == "SUCCESS"
            answer = RefundAnswer(
                **head,
                refund_status=status,
                refund_id=verdict.channel_txn_id if done else "",
                out_refund_no=seen.refund_no if done else "",
            )
        elif seen.op == CANCEL:
            answer = CancelAnswer(**head, cancel_status=status)
        elif seen.op == CLOSE:
            answer = CloseAnswer(**head, close_status=status)
        elif seen.op == PRECREATE:
            answer = QrAnswer(**head, qr_code=verdict.qr_code if code == OK else "", amount=seen.amount_fen)
        else:
            trade_no = verdict.channel_txn_id if status in ("SUCCESS", "PAYING") else ""
            if seen.op == PAY:
                answer = PayAnswer(**head, trade_status=status, trade_no=trade_no, amount=seen.amount_fen)
            else:
                answer = TradeAnswer(**head, trade_status=status, trade_no=trade_no)
        return _signed(encode(answer), sign)

    def write_error(self, reason: str, sign: Sign) -> HttpAnswer:
        return HttpAnswer(401, encode(Answer(code="4010", text=reason)), {"Content-Type": _JSON})

    def notice(self, order: RequestSeen, paid: Paid, sign: Sign) -> Notification:
        data = NotifyData(
            app_id=str(order.fields.get("app_id", "")),
            mch_id=order.merchant,
            out_trade_no=order.out_trade_no,
            trade_no=paid.channel_txn_id,
            amount=paid.amount_fen,
            trade_status="SUCCESS",
            pay_time=timestamp(paid.at),
        )
        text = encode(data)
        return Notification(encode(SignedNotice(data=msgspec.Raw(text), signature=sign(text))), _JSON)

    def notice_acked(self, status: int, body: bytes) -> bool:
        try:
            return status == 200 and _ANSWER.decode(body).code == ACKED
        except msgspec.DecodeError:
            return False

    def statement(self, rows: list[StatementRow], ask: StatementAsk) -> bytes:
        return statement.write(rows)

    def write_statement(self, content: bytes, sign: Sign, link: str) -> HttpAnswer:
        answer = BillAnswer(code=OK, message="成功", content=base64.b64encode(content).decode())
        return _signed(encode(answer), sign)


def _qr_create(request: QrCreate) -> RequestSeen | str:
    if not request.notify_url:
        return "invalid request body"
    try:
        expires = dt.datetime.strptime(request.expire_time, "%Y%m%d%H%M%S").replace(tzinfo=CST)
    except ValueError:
        return "invalid request body"
    return RequestSeen(
        PRECREATE,
        request.out_trade_no,
        amount_fen=request.amount,
        merchant=request.mch_id,
        fields={"app_id": request.app_id, "notify_url": request.notify_url, "expires_at": expires.timestamp()},
    )


def _read_statement_ask(body: bytes, headers: Mapping[str, str], verify: Verify) -> StatementAsk | str:
    if not verify(body, headers.get(SIGNATURE_HEADER, "")):
        return "signature verification failed"
    try:
        ask = _BILL_REQUEST.decode(body)
        return StatementAsk(dt.datetime.strptime(ask.bill_date, "%Y%m%d").date(), ask.mch_id)
    except (msgspec.DecodeError, ValueError):
        return "invalid request body"


def _signed(body: bytes, sign: Sign) -> HttpAnswer:
    return HttpAnswer(200, body, {"Content-Type": _JSON, SIGNATURE_HEADER: sign(body)})
