"""A merchant's orders over HTTP: a QR order the customer scans, a code the customer presents, a
refund, and the close of an unpaid QR order. Each takes its number (``merchant_order``,
``merchant_refund``: a retry is the same transaction) and runs its scene's list of steps in the
``Processor`` (``steps.HTTP_STEPS``), as a terminal's message does. A QR order is then ended by
the channel's notification (``switch.merchant.notices``) or the resolver's queries, and an unpaid
one is closed once it expires (``switch.resolver``)."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field

import asyncpg

from protocols import response_codes as rc
from protocols.channels import channel_of
from protocols.iso8583 import Message
from protocols.messages import CLOSE, QUERY, ChannelResult, Outcome
from protocols.statements import CST
from switch.answers import auth_id_for
from switch.config import Config, Merchant
from switch.gateway import ChannelGateway, PaymentRef
from switch.journal import Event, Journal, Report, State
from switch.journal.machine import FINAL
from switch.journal.orders import (
    HTTP_TERMINAL,
    Order,
    Refund,
    Reserved,
    find_order,
    find_refund,
    reserve_order,
    reserve_refund,
)
from switch.lifecycle import Processor
from switch.merchant.settings import MerchantApiSection
from switch.routing import CODE_ENTRY
from switch.steps import QrTerms, Reply

QR, CODE, REFUND = "qr", "code", "refund"  # the scenes of ``steps.HTTP_STEPS``
CALL_TIMEOUT_S = 10.0


class Refused(Exception):
    """The order cannot be made: ``status`` (HTTP), ``code`` (the API's error code) and why."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True, slots=True)
class QrAsk:
    """A QR order as the merchant asks for it (validated by ``switch.merchant.api``)."""

    order_no: str
    amount_fen: int
    subject: str
    channel: str  # "": the merchant's first channel that takes QR orders
    notify_url: str  # "": the merchant's configured URL, if any
    expires_in_s: int  # 0: the section's default


@dataclass(frozen=True, slots=True)
class CodeAsk:
    """A payment by the code the customer presents, over HTTP (a cashier system's 0200)."""

    order_no: str
    amount_fen: int
    subject: str
    auth_code: str = field(repr=False)
    notify_url: str


# What the merchant is told of an order or refund its steps ended before writing it ahead (a
# retry runs again), by response code; any other code is in the order's state and code.
NOT_WRITTEN = {
    rc.CHANNEL_UNAVAILABLE: (503, "CHANNEL_UNAVAILABLE", "the switch or the channel is busy: ask again"),
    rc.INVALID_PAYMENT_CODE: (400, "INVALID_CODE", "no channel takes this payment code"),
    rc.NOT_PERMITTED: (403, "NOT_PERMITTED", "the merchant may not use this channel, or is suspended"),
    rc.INVALID_MERCHANT: (403, "NOT_PERMITTED", "unknown merchant"),
    rc.DUPLICATE_TRANSMISSION: (409, "ORDER_NO_USED", "the order number was used with other details"),
    rc.ORIGINAL_NOT_FOUND: (404, "ORDER_NOT_FOUND", "no such order to refund"),
    rc.INVALID_TRANSACTION: (409, "NOT_REFUNDABLE", "not paid, reversed, or past its refund window"),
    rc.ORIGINAL_AMOUNT_INCORRECT: (409, "AMOUNT_EXCEEDED", "more than is left to refund"),
}


def _not_written(code: str) -> tuple[int, str, str]:
    return NOT_WRITTEN.get(code, (502, "FAILED", f"refused before the channel: {code}"))


class Orders:
    def __init__(
        self, config: Config, section: MerchantApiSection, journal: Journal,
        gateways: dict[str, ChannelGateway], processor: Processor,
    ) -> None:  # fmt: skip
        self._processor = processor
        self._config = config
        self._section = section
        self._journal = journal
        self._gateways = gateways

    @property
    def pool(self) -> asyncpg.Pool:
        return self._journal.pool

    async def create_qr(self, merchant: Merchant, ask: QrAsk) -> Order:
        """A QR order, through a purchase's steps as a QR order runs them (``steps.HTTP_STEPS``):
        shedding, the channel's limits and the risk rules apply, the row is written ahead before
        the channel's precreate, and it is recorded PENDING."""
        channel = self._channel_for(merchant, ask.channel)
        now = dt.datetime.now(dt.UTC)
        rrn, transmitted = await self._journal.next_rrn(), f"{now:%m%d%H%M%S}"
        taken = await reserve_order(
            self.pool, merchant.id, ask.order_no, QR, ask.subject, ask.notify_url, rrn, now.date(), transmitted
        )
        if taken.what != f"{QR} {ask.subject}":
            raise Refused(409, "ORDER_NO_USED", f"order {ask.order_no} exists with other details")
        expires = now + dt.timedelta(seconds=ask.expires_in_s or self._section.qr_expiry_s)
        terms = QrTerms(channel, ask.subject, f"{self._section.notify_base()}/notify/{channel}", expires.timestamp())
        message = _message(merchant.id, taken, ask.amount_fen, "000000")
        reply = await self._processor.handle_order(message, QR, taken.rrn, terms)
        order = await self._written(merchant, ask.order_no, reply)
        if order.channel != channel:  # the same order asked again of another channel: not sent (a replay)
            raise Refused(409, "ORDER_NO_USED", f"order {ask.order_no} exists with other details")
        return order

    async def close(self, merchant: Merchant, order_no: str) -> Order:
        """Close an order nobody has paid, at the merchant's request: it can no longer be paid. A
        paid one is found paid (the query says so) and stays paid; a final one is as it is. Where
        the channel cannot close an order nobody has scanned (Alipay, UnionPay), it stays PENDING
        and ends when it expires."""
        order = await find_order(self._journal.pool, merchant.id, order_no)
        if order is None:
            raise Refused(404, "ORDER_NOT_FOUND", f"no order {order_no}")
        if order.state in FINAL:
            return order
        if order.scene != QR or order.state not in (State.PENDING, State.UNKNOWN) or self._late_may_come(order):
            # A code payment, or an order whose channel call is under way (or whose unanswered
            # precreate may yet reach the channel): a close could cross its payment, or its very
            # creation, at the channel. The resolver ends it; a paid one is refunded.
            raise Refused(409, "NOT_CLOSABLE", f"order {order_no} is being paid: ask again, or refund it once paid")
        too_soon = self._config.channels[order.channel].close_after_ms / 1000 - (
            time.time() - order.received_at.timestamp()
        )
        if too_soon > 0:  # WeChat Pay: no close within 5 minutes of the order
            raise Refused(
                409, "TOO_SOON", f"channel {order.channel} closes an order no sooner than {too_soon:.0f} s from now"
            )
        reason = self._gateways[order.channel].admit(merchant.id)
        if reason is not None:
            raise Refused(503, "CHANNEL_UNAVAILABLE", f"channel {order.channel} refuses calls now: {reason.lower()}")
        ref = PaymentRef(
            order.out_trade_no, order.amount_fen, merchant.channel_ids.get(order.channel, ""), HTTP_TERMINAL,
            order.received_at.timestamp(), order.channel_txn_id or "",
            expires=order.expires_at.timestamp() if order.expires_at else 0.0,
        )  # fmt: skip
        gateway = self._gateways[order.channel]
        closed = await gateway.call(CLOSE, ref, time.time() + CALL_TIMEOUT_S)
        if closed.sent and closed.outcome is Outcome.APPROVED:
            await self._move(order, Event.CANCELLED, rc.DO_NOT_HONOUR, closed)
        elif closed.sent and closed.outcome is Outcome.DECLINED:  # paid meanwhile
            found = await gateway.call(QUERY, ref, time.time() + CALL_TIMEOUT_S)
            if found.outcome is Outcome.APPROVED:
                await self._move(order, Event.ACCEPTED, rc.APPROVED, found)
        else:
            raise Refused(503, "CHANNEL_UNAVAILABLE", "the channel did not confirm the close: ask again")
        order = await find_order(self._journal.pool, merchant.id, order_no)
        assert order is not None
        return order

    def _late_may_come(self, order: Order) -> bool:
        """Whether an UNKNOWN order's precreate may still be on its way: until its actor's timeout
        has passed, a close could reach the channel before the order does."""
        timeout_s = self._config.channels[order.channel].actor.timeout_ms / 1000
        return order.state == State.UNKNOWN and time.time() < order.received_at.timestamp() + timeout_s + 1

    async def _move(self, order: Order, event: Event, code: str, result: ChannelResult) -> None:
        auth_id = auth_id_for(order.rrn) if event is Event.ACCEPTED else None
        report = Report(*order.key, event, code, auth_id, result.channel_code, result.channel_message[:200],
                        result.channel_txn_id, None)  # fmt: skip
        await self._journal.record(report)

    async def pay_code(self, merchant: Merchant, ask: CodeAsk) -> Order:
        """A code the customer presents, paid through the steps of a terminal's 0200."""
        now = dt.datetime.now(dt.UTC)
        rrn, transmitted = await self._journal.next_rrn(), f"{now:%m%d%H%M%S}"
        taken = await reserve_order(
            self.pool, merchant.id, ask.order_no, CODE, ask.subject, ask.notify_url, rrn, now.date(), transmitted
        )
        if taken.what != f"{CODE} {ask.subject}":
            raise Refused(409, "ORDER_NO_USED", f"order {ask.order_no} exists with other details")
        message = _message(merchant.id, taken, ask.amount_fen, "000000") | {"2": ask.auth_code, "22": CODE_ENTRY}
        reply = await self._processor.handle_order(message, CODE, taken.rrn)
        return await self._written(merchant, ask.order_no, reply)

    async def _written(self, merchant: Merchant, order_no: str, reply: Reply) -> Order:
        """The order as its steps left it; refused when they ended before writing it ahead."""
        order = await find_order(self.pool, merchant.id, order_no)
        if order is None or reply.code == rc.DUPLICATE_TRANSMISSION:
            raise Refused(*_not_written(reply.code))
        return order

    async def refund(self, merchant: Merchant, order_no: str, refund_no: str, amount_fen: int) -> Refund:
        """A refund of the merchant's order, through the steps of a terminal's refund: the same
        reservation of what is left, the same risk rules."""
        order = await find_order(self.pool, merchant.id, order_no)
        if order is None:
            raise Refused(404, "ORDER_NOT_FOUND", f"no order {order_no}")
        now = dt.datetime.now(dt.UTC)
        rrn, transmitted = await self._journal.next_rrn(), f"{now:%m%d%H%M%S}"
        taken = await reserve_refund(self.pool, merchant.id, refund_no, order_no, rrn, now.date(), transmitted)
        if taken.what != order_no:
            raise Refused(409, "REFUND_NO_USED", f"refund {refund_no} was made for another order")
        message = _message(merchant.id, taken, amount_fen, "200000") | {"37": order.rrn}
        reply = await self._processor.handle_order(message, REFUND, taken.rrn)
        refund = await find_refund(self.pool, merchant.id, refund_no)
        if reply.code == rc.DUPLICATE_TRANSMISSION:
            raise Refused(409, "REFUND_NO_USED", f"refund {refund_no} was made with other details")
        if refund is None or refund.state is None:
            raise Refused(*_not_written(reply.code))
        return refund

    def _channel_for(self, merchant: Merchant, asked: str) -> str:
        """The channel the order goes to: the one asked for, else the merchant's first that takes
        QR orders; it must be the merchant's, configured, switched on and take QR orders."""
        if merchant.suspended:
            raise Refused(403, "MERCHANT_SUSPENDED", "the merchant is suspended")
        takes_qr = [c for c in merchant.channels if c in self._config.channels and self._takes_qr(c)]
        channel = asked or (takes_qr[0] if takes_qr else "")
        if not channel:
            raise Refused(400, "NO_CHANNEL", "none of the merchant's channels takes QR orders")
        if channel not in merchant.channels:
            raise Refused(403, "CHANNEL_NOT_ALLOWED", f"the merchant may not use channel {channel!r}")
        if channel not in takes_qr:
            raise Refused(400, "CHANNEL_NO_QR", f"channel {channel!r} takes no QR orders")
        return channel

    def _takes_qr(self, channel: str) -> bool:
        return channel_of(self._config.channels[channel].kind).takes_qr


def _message(merchant_id: str, taken: Reserved, amount_fen: int, processing_code: str) -> Message:
    """The ISO 8583 request an order over HTTP amounts to: terminal ``HTTP``, its RRN for a STAN,
    every field from the reservation, so that a retry is the very same request (fields 12 and 13,
    the local time, are field 7's in Beijing time)."""
    utc = dt.datetime.strptime(f"{taken.tx_date.year}{taken.transmitted}", "%Y%m%d%H%M%S").replace(tzinfo=dt.UTC)
    local = utc.astimezone(CST)
    return {
        "t": "0200", "3": processing_code, "4": f"{amount_fen:012d}", "7": taken.transmitted, "11": taken.rrn,
        "12": f"{local:%H%M%S}", "13": f"{local:%m%d}", "25": "00", "41": HTTP_TERMINAL, "42": merchant_id, "49": "156",
    }  # fmt: skip
