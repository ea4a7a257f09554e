"""Deterministic outcomes, drawn from the payment code's last two digits so that tests and load
can ask for any outcome. The digits mirror the ISO 8583 code the switch answers:

| digits | the channel                                            | the switch answers              |
| ------ | ------------------------------------------------------ | ------------------------------- |
| 51     | refuses: insufficient funds                            | 51                              |
| 54     | refuses: payment code expired                          | 54                              |
| 14     | refuses: invalid payment code                          | 14                              |
| 05     | refuses                                                | 05                              |
| 09     | user paying; the customer confirms after ``paying_ms`` | 00 within the deadline, else 09 |
| 08     | user paying; the customer never confirms               | 09, then cancels it             |
| 96     | charges, but answers "system error"                    | 91 (UNKNOWN), then reverses it  |
| 98     | charges, answering after ``slow_ms``                   | 00, or 91 past the timeout      |
| 07     | charges; refuses any cancel (reverse window expired)   | 00; a reversal goes to a person |
| 03     | charges, then drops the connection without answering  | 91 (UNKNOWN); then reverses it  |
| 06     | charges; does the first cancel or refund but answers   | 00; the void / refund is 09,    |
|        | "system error" (then answers truthfully)               | then completed, once            |
| other  | charges                                                | 00                              |
"""

from __future__ import annotations

import datetime as dt
import math
import time
from dataclasses import dataclass, field

from protocols.statements import CST, PAID, PAY, REFUND, REVOKED, StatementRow, fee_fen

VERDICT_BY_SUFFIX = {
    "51": "NOTENOUGH",
    "54": "EXPIRED",
    "14": "INVALID",
    "05": "DECLINED",
    "09": "USERPAYING",
    "08": "USERPAYING",
    "96": "SYSTEMERROR",
}
SLOW_SUFFIX = "98"
REFUSES_CANCEL_SUFFIX = "07"
DROPS_ANSWER_SUFFIX = "03"
GARBLES_FIRST_UNDO_SUFFIX = "06"
NEVER_CONFIRMS_SUFFIX = "08"


def verdict_for(auth_code: str) -> str:
    return VERDICT_BY_SUFFIX.get(auth_code[-2:], "SUCCESS")


def is_slow(auth_code: str) -> bool:
    return auth_code.endswith(SLOW_SUFFIX)


def drops_answer(auth_code: str) -> bool:
    return auth_code.endswith(DROPS_ANSWER_SUFFIX)


@dataclass(slots=True)
class Order:
    """One order in a simulated channel's ledger (slots, and no refunds' table until its first
    refund: a held run's ledger grows by an order a payment: 529 bytes each before, 345 now, traced)."""

    amount_fen: int
    # PAID, PAYING, NOTPAY (a QR order not paid yet), FAILED, CLOSED (never paid), REVERSED (paid,
    # money returned)
    status: str
    channel_txn_id: str
    pay_verdict: str = ""
    confirms_at: float = math.inf  # while PAYING: when the customer confirms
    refuses_cancel: bool = False
    refunds: dict[str, tuple[int, float]] | None = None  # refund number -> (fen, when)
    garbles_next_undo: bool = False
    created_at: float = field(default_factory=time.time)
    qr_code: str = ""  # a QR order: what the customer scans
    notify_url: str = ""  # a QR order: where its notifications go
    expires_at: float = math.inf  # a QR order: no scan after this

    def answer(self, status: str) -> str:
        """What the channel says about what it just did (an order may garble its first answer)."""
        if self.garbles_next_undo:
            self.garbles_next_undo = False
            return "SYSTEMERROR"
        return status

    def refunded_fen(self) -> int:
        return sum(fen for fen, _ in self.refunds.values()) if self.refunds else 0

    def refresh(self, now: float | None = None) -> None:
        if self.status == "PAYING" and (now or time.time()) >= self.confirms_at:
            self.status = "PAID"


class Ledger:
    """What the channel believes: which orders it charged, which it closed or reversed."""

    def __init__(self, paying_s: float) -> None:
        self._orders: dict[str, Order] = {}
        self._paying_s = paying_s

    def pay(self, out_trade_no: str, auth_code: str, amount_fen: int, channel_txn_id: str) -> Order:
        """Record a pay request; a resent order number gets its first outcome again."""
        order = self._orders.get(out_trade_no)
        if order is not None:
            order.refresh()
            return order
        verdict = verdict_for(auth_code)
        if verdict in ("SUCCESS", "SYSTEMERROR"):
            status = "PAID"
        elif verdict == "USERPAYING":
            status = "PAYING"
        else:
            status = "FAILED"
        confirms_at = math.inf
        if status == "PAYING" and not auth_code.endswith(NEVER_CONFIRMS_SUFFIX):
            confirms_at = time.time() + self._paying_s
        order = Order(
            amount_fen,
            status,
            channel_txn_id,
            verdict,
            confirms_at,
            refuses_cancel=auth_code.endswith(REFUSES_CANCEL_SUFFIX),
            garbles_next_undo=auth_code.endswith(GARBLES_FIRST_UNDO_SUFFIX),
        )
        self._orders[out_trade_no] = order
        return order

    def query(self, out_trade_no: str) -> Order | None:
        order = self._orders.get(out_trade_no)
        if order is not None:
            order.refresh()
        return order

    def precreate(self, out_trade_no: str, amount_fen: int, qr_code: str, notify_url: str, expires_at: float) -> Order:
        """A QR order for the customer to scan (NOTPAY); a resent order number gets the same order."""
        order = self._orders.get(out_trade_no)
        if order is None:
            order = Order(amount_fen, "NOTPAY", "", qr_code=qr_code, notify_url=notify_url, expires_at=expires_at)
            self._orders[out_trade_no] = order
        return order

    def scan(self, out_trade_no: str, channel_txn_id: str) -> Order | str:
        """The customer scans the order's code and pays: the order, PAID; or why not (NOTEXIST,
        EXPIRED, CLOSED, PAID: it was paid before)."""
        order = self._orders.get(out_trade_no)
        if order is None or not order.qr_code:
            return "NOTEXIST"
        if order.status != "NOTPAY":
            return order.status
        if time.time() > order.expires_at:
            return "EXPIRED"
        order.status, order.channel_txn_id, order.created_at = "PAID", channel_txn_id, time.time()
        return order

    def close(self, out_trade_no: str, unscanned_too: bool = True) -> str:
        """Close a QR order unpaid: DONE (also one closed before), PAID (paid: not closed), or
        NOTEXIST (the number is closed anyway, so it is never paid). A channel that has no trade
        until the customer scans (Alipay: not ``unscanned_too``) answers NOTEXIST for an order
        nobody has scanned, and it stays payable until it expires."""
        order = self._orders.get(out_trade_no)
        if order is not None and order.status == "NOTPAY" and not unscanned_too:
            return "NOTEXIST"
        if order is None:
            self._orders[out_trade_no] = Order(0, "CLOSED", "")
            return "NOTEXIST"
        if order.status in ("PAID", "REVERSED"):
            return "PAID"
        order.status = "CLOSED"
        return "DONE"

    def cancel(self, out_trade_no: str) -> str:
        """Close or reverse an order: DONE, REFUSED, or NOTEXIST when there was none (the number
        is closed anyway, so a pay that arrives late is refused)."""
        order = self._orders.get(out_trade_no)
        if order is None:
            self._orders[out_trade_no] = Order(0, "CLOSED", "")
            return "NOTEXIST"
        order.refresh()
        if order.refuses_cancel:
            return "REFUSED"
        if order.status == "PAID":
            order.status = "REVERSED"
        elif order.status in ("PAYING", "NOTPAY"):
            order.status = "CLOSED"
        return order.answer("DONE")

    def refund(self, out_trade_no: str, refund_no: str, amount_fen: int) -> str:
        """DONE (also for a refund number seen before: refunds are idempotent) or REFUSED (not
        paid, or more than what is left to refund)."""
        order = self._orders.get(out_trade_no)
        if order is None:
            return "REFUSED"
        order.refresh()
        if order.refunds and refund_no in order.refunds:
            return "DONE"
        if order.status != "PAID" or order.refunded_fen() + amount_fen > order.amount_fen:
            return "REFUSED"
        if order.refunds is None:
            order.refunds = {}
        order.refunds[refund_no] = (amount_fen, time.time())
        return order.answer("DONE")

    def statement(self, start: float, end: float, fee_per_10000: int) -> list[StatementRow]:
        """The channel's statement rows for orders created and refunds made in [start, end):
        orders it kept the money of (SUCCESS) or gave it back whole (REVOKED), and refunds."""
        rows = []
        for no, order in self._orders.items():
            order.refresh()
            at = dt.datetime.fromtimestamp(order.created_at, CST)
            if start <= order.created_at < end and order.status in ("PAID", "REVERSED"):
                kept = order.status == "PAID"
                rows.append(
                    StatementRow(
                        entry=PAY,
                        out_trade_no=no,
                        channel_txn_id=order.channel_txn_id,
                        amount_fen=order.amount_fen,
                        status=PAID if kept else REVOKED,
                        at=at,
                        fee_fen=fee_fen(order.amount_fen, fee_per_10000) if kept else 0,
                    )
                )
            for refund_no, (amount, when) in (order.refunds or {}).items():
                if start <= when < end:
                    rows.append(
                        StatementRow(
                            entry=REFUND,
                            out_trade_no=no,
                            channel_txn_id=order.channel_txn_id,
                            amount_fen=amount,
                            status=PAID,
                            at=dt.datetime.fromtimestamp(when, CST),
                            refund_no=refund_no,
                            fee_fen=-fee_fen(amount, fee_per_10000),
                        )
                    )
        return sorted(rows, key=lambda r: r.at)

    def snapshot(self) -> dict[str, dict[str, object]]:
        for order in self._orders.values():
            order.refresh()
        return {
            no: {"status": o.status, "amount_fen": o.amount_fen, "refunded_fen": o.refunded_fen()}
            for no, o in self._orders.items()
        }
