"""A simulated channel's side of its API (one module per channel under ``channels/``, named by
the channel package's ``simulator``): read the switch's requests, write the channel's answers and
statement files, in a vocabulary the simulators share."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from importlib import import_module
from typing import Protocol

from protocols.channels import channel_of
from protocols.channels.base import HttpAnswer, Sign, Verify
from protocols.statements import StatementRow


@dataclass(frozen=True, slots=True)
class ChannelVerdict:
    """What a simulated channel decided:

    - pay: SUCCESS, USERPAYING, NOTENOUGH, EXPIRED, INVALID, DECLINED, ORDERCLOSED, SYSTEMERROR
    - query: PAID, PAYING, CLOSED, NOTEXIST, SYSTEMERROR
    - cancel: DONE, RETRY, NOTEXIST, REFUSED, SYSTEMERROR
    - refund: DONE, REFUSED, SYSTEMERROR
    - precreate: CREATED (with ``qr_code``), SYSTEMERROR
    - close: DONE, PAID (paid: not closed), NOTEXIST, SYSTEMERROR
    - query of a QR order nobody has paid yet: NOTPAY
    """

    status: str
    channel_txn_id: str = ""
    qr_code: str = ""


@dataclass(frozen=True, slots=True)
class RequestSeen:
    """A payment request as the channel reads it."""

    op: str
    out_trade_no: str
    auth_code: str = ""
    amount_fen: int = 0
    merchant: str = ""
    channel_txn_id: str = ""
    refund_no: str = ""
    pin_block: str = ""
    fields: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Paid:
    """A QR order the customer paid, as the channel's notification tells it."""

    channel_txn_id: str
    amount_fen: int
    at: float  # epoch seconds


@dataclass(frozen=True, slots=True)
class Notification:
    """A notification to POST to the order's ``notify_url``."""

    body: bytes
    content_type: str


@dataclass(frozen=True, slots=True)
class StatementAsk:
    """A statement request as the channel reads it."""

    day: dt.date
    merchant: str


class ChannelSide(Protocol):
    paths: Collection[str]  # every path it answers POSTs on (its APIs and the statement download)
    qr_prefix: str  # how the content of its QR codes begins
    notice_schedule_s: tuple[float, ...]  # its notifications' retry schedule
    closes_unscanned: bool  # whether its close ends a QR order nobody has scanned (Alipay's does not)

    def read(
        self, path: str, body: bytes, headers: Mapping[str, str], verify: Verify
    ) -> RequestSeen | StatementAsk | str:
        """The request, or the channel's reason for refusing it (answered by ``write_error``)."""
        ...

    def write(self, seen: RequestSeen, verdict: ChannelVerdict, sign: Sign) -> HttpAnswer: ...

    def write_error(self, reason: str, sign: Sign) -> HttpAnswer: ...

    def notice(self, order: RequestSeen, paid: Paid, sign: Sign) -> Notification:
        """The channel's notification that the QR order ``order`` (its precreate request) is paid."""
        ...

    def notice_acked(self, status: int, body: bytes) -> bool:
        """Whether the answer to a notification is the acknowledgement that stops its retries."""
        ...

    def statement(self, rows: list[StatementRow], ask: StatementAsk) -> bytes:
        """The statement file of ``rows``, in the channel's format."""
        ...

    def write_statement(self, content: bytes, sign: Sign, link: str) -> HttpAnswer:
        """The answer to a statement request: the file, or ``link`` to fetch it from."""
        ...


def side_of(kind: str) -> ChannelSide:
    return import_module(channel_of(kind).simulator).side
