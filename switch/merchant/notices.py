"""The channels' payment notifications (``POST /notify/CHANNEL`` on the merchant listener):
verified by the channel's actor (which holds the account's keys), matched to the purchase by its
order number at the channel, and reported to the journal as the channel's word on it, through
the state machine like any other. They are idempotent (a second one moves nothing), may come
before the query's answer or never (the resolver's queries stay the safety net), and each is
kept in ``channel_notice``: one naming no purchase of the journal's, or another amount, or a
payment of one already ended otherwise (``paid_after_final``), moves nothing and is there for
reconciliation, logged as an error. One saying "not paid" ends nothing: the resolver asks the
channel (and closes the order there if it must). Nor does one naming a card's or payment code's
purchase, which a QR order's channel should never send: whether its money is kept is the
resolver's to decide by what its terminal was told. Acknowledged, in the channel's own words,
once kept."""

from __future__ import annotations

import logging

from protocols import response_codes as rc
from protocols.channels import channel_of
from protocols.channels.base import HttpAnswer, Notice
from switch.answers import auth_id_for
from switch.gateway import ChannelGateway, NoticeUnread
from switch.journal import Event, Journal, Report, State, hand_to_resolver
from switch.journal.orders import keep_notice, payment_named
from switch.lograte import RateLimitedLog
from switch.metrics import Metrics

log = logging.getLogger("paysw.notices")
_refused_log = RateLimitedLog(1.0)  # anyone can post to /notify: at most a line a second per channel
NOT_FOUND = HttpAnswer(404, b"no such channel", {"Content-Type": "text/plain"})
UNREAD = HttpAnswer(503, b"not read: send it again", {"Content-Type": "text/plain", "Retry-After": "1"})


class Notices:
    def __init__(self, journal: Journal, gateways: dict[str, ChannelGateway], kinds: dict[str, str], metrics: Metrics):
        self._journal = journal
        self._gateways = gateways
        self._kinds = kinds  # channel -> its package's kind
        self._metrics = metrics

    async def receive(self, channel: str, body: bytes, headers: dict[str, str]) -> HttpAnswer:
        gateway, kind = self._gateways.get(channel), self._kinds.get(channel)
        reader = channel_of(kind).notice if kind else None
        if gateway is None or reader is None:
            return NOT_FOUND
        try:
            notice = await gateway.read_notice(body, headers)
        except NoticeUnread as exc:
            self._metrics.channel_notices.labels(channel, exc.reason).inc()
            cause = type(exc.__cause__).__name__ if exc.__cause__ else ""
            _refused_log.warn(log, (channel, exc.reason), "channel notification not read: answered 503",
                              channel=channel, reason=exc.reason, cause=cause)  # fmt: skip
            return UNREAD
        if isinstance(notice, str):
            self._metrics.channel_notices.labels(channel, "refused").inc()
            _refused_log.warn(log, channel, "channel notification refused", channel=channel, reason=notice)
            return reader.nack(notice)
        result = await self._record(channel, notice)
        await keep_notice(
            self._journal.pool, channel, notice.out_trade_no, notice.amount_fen, notice.paid,
            notice.channel_txn_id, result.replace("_", " "),
        )  # fmt: skip
        self._metrics.channel_notices.labels(channel, result).inc()
        if result in ("unknown_order", "amount_differs", "paid_after_final"):
            # The channel has money the journal does not count as kept: reconciliation's STATUS or
            # LONG difference, for its handling (a refund) or a person.
            log.error(
                "channel notification of money the journal does not keep: kept for reconciliation",
                extra={"channel": channel, "out_trade_no": notice.out_trade_no, "result": result},
            )
        return reader.ack

    async def _record(self, channel: str, notice: Notice) -> str:
        paid = await payment_named(self._journal.pool, channel, notice.out_trade_no)
        if paid is None:
            return "unknown_order"
        if paid.amount_fen != notice.amount_fen:
            return "amount_differs"
        if not notice.paid or not paid.qr:
            # The resolver's to end: "not paid" may leave the order payable at the channel (it asks
            # and, if it must, closes it there), and a card's or payment code's purchase keeps its
            # money only if its terminal was told so (``promise``): a notice never tells it 00.
            async with self._journal.pool.acquire() as conn:
                handed = await hand_to_resolver(conn, paid.key)
            if handed or not notice.paid:
                return "queried"
        else:
            report = Report(
                *paid.key, Event.ACCEPTED, rc.APPROVED, auth_id_for(paid.rrn), notice.channel_code, "notification",
                notice.channel_txn_id, None,
            )  # fmt: skip
            if await self._journal.record(report) is not None:  # a failure answers 500: the channel sends it again
                return "recorded"
        return "unchanged" if paid.state == State.APPROVED else "paid_after_final"
