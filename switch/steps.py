"""The path of each transaction type through the switch: an ordered list of steps, in the spirit
of jPOS's TransactionManager participants. ``STEPS`` is the one place the lists are read: the
``Processor`` (``switch/lifecycle.py``) binds each name to its method ``_step_<name>``.

A step either passes, possibly adding to the transaction's ``Context``, or ends the transaction
by returning its response code (having set ``Context.reply`` when the answer says more than a
code and an RRN). The last step of every list, ``answer``, always runs: a step that ends the
transaction skips to it.

Reversals and network management have no ``shed`` step: a reversal is how a terminal makes sure
of its money, and is never shed.

``HTTP_STEPS`` are the lists of a merchant's orders over HTTP (``switch.merchant``), by scene: a
code the customer presents and a refund run a terminal's lists (``over_http``); a QR order the
customer scans runs a purchase's, with the channel's precreate where the payment would be.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from prometheus_client import Histogram

from hsm import KeyRecord
from protocols.iso8583 import Message
from protocols.messages import ChannelResult
from protocols.validation import TxnType
from risk.engine import Decision
from switch.config import Merchant
from switch.journal import NewTxn, Original, TxnKey

# A void or refund refused before its channel is written so with its row: a resolver sends the
# undos it finds open (a purchase it only asks about), so it must never find a refused one open.
# One journaled already gets its first answer before it is judged again.
_UNDO = ("mac", "shed", "terminal_and_merchant", "transmission_date", "rrn", "original", "duplicate_check",
         "journaled", "admit", "write_ahead_undo", "send_undo", "record_undo", "answer")  # fmt: skip
STEPS: dict[TxnType, tuple[str, ...]] = {
    TxnType.PURCHASE: ("mac", "shed", "terminal_and_merchant", "route", "channel_allowed", "gray",
                       "transmission_date", "rrn", "duplicate_check", "risk_ask", "write_ahead", "risk", "admit",
                       "pin", "send_and_poll", "undelivered", "record", "answer"),
    TxnType.VOID: _UNDO,
    TxnType.REFUND: (*_UNDO[:8], "risk_ask", "risk_decide", *_UNDO[8:]),
    TxnType.INQUIRY: ("mac", "shed", "terminal_and_merchant", "rrn", "inquire", "answer"),
    # ``terminal``, not ``terminal_and_merchant``: a reversal undoes what the terminal did, even for
    # a merchant it no longer belongs to; and no ``admit``: even when suspended since.
    TxnType.REVERSAL: ("mac", "terminal", "rrn", "original_of_reversal", "reverse", "answer"),
    TxnType.NETWORK: ("mac", "terminal", "network_management", "answer"),
}  # fmt: skip


def over_http(names: tuple[str, ...]) -> tuple[str, ...]:
    """A list as it runs for a merchant's order over HTTP (``switch.merchant``): the merchant's
    signature was checked at the API and it names no terminal (no ``mac``; ``merchant`` for
    ``terminal_and_merchant``), its RRN was taken when its order number was (no ``rrn``), and it
    goes to the channel itself (no ``gray``: a legacy switch upstream knows terminals only), and
    its merchant asks for an answer it missed (no ``undelivered``)."""
    skipped = ("mac", "rrn", "gray", "undelivered")
    return tuple("merchant" if n == "terminal_and_merchant" else n for n in names if n not in skipped)


def scanned(names: tuple[str, ...]) -> tuple[str, ...]:
    """A purchase's list as it runs for a QR order the customer scans: the merchant chose the
    channel (no ``route``; ``channel_allowed`` checks it), there is no card (no ``pin``), and
    nothing is paid yet: the order is created at the channel (``precreate``, its code kept by
    ``qr_code``) and recorded PENDING, to be ended by a notification or the resolver."""
    swapped = {"send_and_poll": ("precreate", "qr_code"), "route": (), "pin": ()}
    return tuple(m for n in names for m in swapped.get(n, (n,)))


HTTP_STEPS: dict[str, tuple[str, ...]] = {  # by the order's scene
    "code": over_http(STEPS[TxnType.PURCHASE]),
    "qr": scanned(over_http(STEPS[TxnType.PURCHASE])),
    "refund": over_http(STEPS[TxnType.REFUND]),
}


@dataclass(frozen=True, slots=True)
class Reply:
    """What the terminal is told about a transaction (replayed to identical retransmissions)."""

    code: str
    rrn: str
    auth_id: str = ""
    channel_txn_id: str = ""


@dataclass(slots=True)
class Context:
    """One transaction on its way through its steps: the request, and what the steps found. The
    request's card number or code, its frame and the PIN block stay out of its repr."""

    message: Message = field(repr=False)
    frame: bytes = field(repr=False)
    arrived: float  # time.monotonic() when its bytes were read
    txn_type: TxnType
    mak: KeyRecord | None = None  # the MAK its MAC verified under: the answer is MAC'd under it
    overload: str | None = None  # why the switch was over capacity when it was read: shed (switch.intake)
    peer: str = ""  # whose share of the admission it takes: its connection's address, or its merchant (HTTP)
    connected: Callable[[], bool] | None = None  # whether its answer's connection is still open (None: HTTP)
    # The connections of the retransmissions waiting for this arrival's answer (``claim``): its answer
    # has somewhere to go while one is open (None: HTTP).
    resends: tuple[Callable[[], bool] | None, ...] = ()
    in_flight: bool = False  # counted in the load shedder's requests under way
    waiting: bool = False  # and in those waiting for their channel call (``switch.shedding.WaitingLimit``)
    channel: str = "-"  # set by ``route`` (or by the merchant, for a QR order)
    qr: QrTerms | None = None  # a QR order's terms
    merchant: Merchant | None = None  # as configured when its step read it (a reload meanwhile changes nothing here)
    tx_date: dt.date | None = None  # field 7's date
    rrn: str = ""
    pin_block: str = field(default="", repr=False)  # under the channel's zone PIN key
    original: Original | None = None  # the purchase a void or refund undoes
    reversed_key: TxnKey | None = None  # the purchase a reversal reverses
    txn: NewTxn | None = None  # the row written ahead
    claim: asyncio.Future[Reply] | None = None  # this arrival runs the transaction; retransmissions wait on it
    risk: asyncio.Future[Decision] | None = None  # the risk decision on its way (risk.control.Risk.begin)
    decision: Decision | None = None  # its risk decision, once awaited (a refund's is written with its row)
    result: ChannelResult | None = None  # the channel's (or its limits')
    reply: Reply | None = None
    answer_fields: Message | None = None  # fields the answer carries beyond a reply's


class QrTerms(NamedTuple):
    """A QR order's channel (the merchant's choice), and what it tells the channel beyond a
    payment's: what is sold, where the channel's notification goes, when the code lapses (epoch
    seconds)."""

    channel: str
    subject: str
    notify_url: str
    expires: float


Step = Callable[[Context], Any]  # returns None (passes) or a response code (ends); awaited when async


class Path(NamedTuple):
    """A transaction type's steps bound to their owner, each with whether it is to be awaited,
    and its answer step."""

    steps: tuple[tuple[Step, bool], ...]
    answer: Callable[[Context], Message]


def bind(owner: object, names: tuple[str, ...], label: str, timing: Histogram | None) -> Path:
    """The list ``names``, each name bound to ``owner._step_<name>``; with ``timing``, each step
    observes its seconds (waits included) under its name and ``label`` (the transaction type, or
    the order's scene). Without, the methods themselves: timing costs nothing unless switched on."""
    assert names[-1] == "answer", f"{label}: every list ends with answer"
    bound = []
    for name in names:
        method = getattr(owner, f"_step_{name}")
        is_async = inspect.iscoroutinefunction(method)
        if timing is not None:
            method = _timed(method, is_async, timing.labels(name, label).observe)
        bound.append((method, is_async))
    answer, _ = bound.pop()
    return Path(tuple(bound), answer)


def _timed(step: Step, is_async: bool, observe: Callable[[float], None]) -> Step:
    if is_async:

        async def timed_async(t: Context) -> Any:
            started = time.perf_counter()
            try:
                return await step(t)
            finally:
                observe(time.perf_counter() - started)

        return timed_async

    def timed(t: Context) -> Any:
        started = time.perf_counter()
        try:
            return step(t)
        finally:
            observe(time.perf_counter() - started)

    return timed
