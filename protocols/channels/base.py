"""What every channel package is made of: a ``Channel`` descriptor holding its ``Account``
schema, one ``Flow`` per operation (our request into theirs, their answer into ours) and its
statement ``Download``. Crypto is injected (``Crypto``: sign / verify / seal bound to keys held by
``hsm/``), so channel code stays pure and never sees key material.
"""

from __future__ import annotations

import binascii
import datetime as dt
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Annotated, Any, Literal
from urllib.parse import unquote_plus, urlsplit

from msgspec import Meta, Struct

from protocols import response_codes as rc
from protocols.messages import (
    CANCEL,
    CLOSE,
    NOT_FOUND,
    PAY,
    PRECREATE,
    QUERY,
    REFUND,
    ChannelRequest,
    ChannelResult,
    Outcome,
)
from protocols.statements import StatementRow

OPERATIONS = (PAY, QUERY, CANCEL, REFUND)  # every channel has a flow for each
QR_OPERATIONS = (PRECREATE, CLOSE)  # a channel that takes QR orders has both, and reads notices
Sign = Callable[[bytes], str]
Verify = Callable[[bytes, str], bool]


@dataclass(frozen=True, slots=True)
class HttpCall:
    """An HTTP request to a channel, ready to send."""

    path: str
    body: bytes
    content_type: str
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


class Keys(Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """The switch's keys for a channel's API, by their labels in the key store (``paysw keys``),
    and the signature schemes (``hsm.algorithms.SCHEMES``) they are used with."""

    sign_algorithm: str
    sign_key: str
    verify_algorithm: str
    verify_key: str

    def labels(self) -> dict[str, str]:
        """The key store labels of the account's keys, by use (sign, verify, seal)."""
        return {"sign": self.sign_key, "verify": self.verify_key}


class SealingKeys(Keys, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Keys of a channel that wants sensitive fields sent encrypted (``Crypto.seal``)."""

    seal_key: Annotated[str, Meta(min_length=1)]  # an SM4 data key shared with the channel

    def labels(self) -> dict[str, str]:
        return {**super().labels(), "seal": self.seal_key}


class Account(Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """The switch's account at a channel: the ``[channels.NAME.account]`` table. A channel
    subclasses it with its own identity fields (app id, merchant number, certificate id) and,
    where it needs more keys, a ``Keys`` subclass."""

    keys: Keys


@dataclass(frozen=True, slots=True)
class Crypto:
    """The account's keys at work, from the HSM: the flows sign, verify and seal with these and
    never see key material. ``seal`` (hex of the SM4-CBC text) is there when the account's keys
    are ``SealingKeys``."""

    sign: Sign
    verify: Verify
    seal: Callable[[str], str] | None = None


@dataclass(frozen=True, slots=True)
class Flow:
    """One API of a channel (pay, query, cancel, refund, ...): ``build`` turns our request into
    theirs, signed and ready to send; ``parse`` reads their answer, verified, into ours. Neither
    does I/O."""

    build: Callable[[ChannelRequest, Any, Crypto, float], HttpCall]  # (request, account, crypto, now)
    parse: Callable[[ChannelRequest, HttpAnswer, Crypto], ChannelResult]


class Notice(Struct, frozen=True, kw_only=True):
    """A channel's notification, read and verified: the order it names is ``paid`` (the amount
    and the channel's id of the payment as it says), or closed or failed (``paid`` False)."""

    out_trade_no: str
    amount_fen: int
    paid: bool
    channel_txn_id: str = ""
    channel_code: str = ""  # the channel's own word for the state (SUCCESS, TRADE_SUCCESS, ...)


@dataclass(frozen=True, slots=True)
class NoticeReader:
    """How a channel's notifications read: ``read(body, headers, account, crypto)`` verifies one
    (its signature, and that it is meant for our account) and returns the ``Notice``, or why it is
    refused. ``ack`` is the answer the channel expects once the switch has recorded it (anything
    else makes the channel send it again, on its own schedule); ``nack`` answers a refused one."""

    read: Callable[[bytes, Mapping[str, str], Any, Crypto], Notice | str]
    ack: HttpAnswer
    nack: Callable[[str], HttpAnswer]


@dataclass(frozen=True, slots=True)
class Link:
    """A statement download's answer that names where to fetch the file (Alipay's
    ``bill_download_url``) rather than holding it."""

    url: str


def fetchable(url: str) -> bool:
    """Whether a file may be fetched from ``url``: over https, or plain http on this host (a
    simulator's), with no user or password."""
    parts = urlsplit(url)
    if parts.username is not None or not parts.hostname:
        return False
    if parts.scheme == "https":
        return True
    try:
        return parts.scheme == "http" and (parts.hostname == "localhost" or ip_address(parts.hostname).is_loopback)
    except ValueError:  # a name: it may resolve anywhere
        return False


class StatementRefused(Exception):
    """The channel refused or garbled a statement download: the text says what it answered."""


@dataclass(frozen=True, slots=True)
class Download:
    """A channel's statement download: ``build`` asks for a day's file, ``parse`` reads the answer
    (the file, or a ``Link`` to it; ``StatementRefused`` otherwise), and ``read`` reads the file
    into statement rows."""

    build: Callable[[dt.date, Any, Crypto, float], HttpCall]  # (day, account, crypto, now)
    parse: Callable[[HttpAnswer, Crypto], bytes | Link]
    read: Callable[[bytes], list[StatementRow]]


@dataclass(frozen=True, slots=True)
class Channel:
    """Everything the switch knows of one kind of channel, from its package: the account it needs
    (validated against ``account`` when the configuration is read), one ``Flow`` per operation,
    the statement download, and where its simulated counterpart lives (test equipment, named by
    module so the switch never imports it)."""

    kind: str  # as the configuration names it: the package's name here, or its dotted path
    account: type[Account]
    flows: Mapping[str, Flow]  # PAY, QUERY, CANCEL, REFUND
    statement: Download | None  # None: it keeps none for the switch (reconciled on its own side)
    simulator: str
    notice: NoticeReader | None = None  # QR orders: how its notifications read
    # How its calls travel: HTTP, or ISO 8583 frames (actors.frames) to another switch.
    wire: Literal["http", "iso8583"] = "http"

    def __post_init__(self) -> None:
        # A missing operation would fail only when first needed (a reversal's cancel, say).
        missing = [op for op in OPERATIONS if op not in self.flows]
        if missing:
            raise TypeError(f"channel {self.kind!r} has no flow for {', '.join(missing)}")
        qr = [op for op in QR_OPERATIONS if op in self.flows]
        if qr and (len(qr) < len(QR_OPERATIONS) or self.notice is None):
            raise TypeError(f"channel {self.kind!r} takes QR orders: it needs precreate, close and a notice reader")

    @property
    def takes_qr(self) -> bool:
        """Whether the customer can scan the merchant's QR code on this channel (precreate)."""
        return PRECREATE in self.flows


def sorted_query(params: Mapping[str, str], skip: frozenset[str] = frozenset({"sign"})) -> str:
    """``k1=v1&k2=v2`` over the non-empty parameters sorted by key (ASCII): the signing input
    shape shared by WeChat Pay v2, Alipay and UnionPay."""
    return "&".join(f"{k}={params[k]}" for k in sorted(params) if k not in skip and params[k] != "")


# What ``urllib.parse.quote_plus`` keeps as it is; every other byte of the UTF-8 text is %XX and a
# space is "+".
_UNRESERVED = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~"
_FORM = {chr(b): "+" if b == 0x20 else f"%{b:02X}" for b in range(256) if b not in _UNRESERVED}


def _quote_plus(text: str) -> str:
    """``urllib.parse.quote_plus(text, safe="")``: one C ``str.replace`` per distinct byte to
    escape (a signature's base64 has three, a JSON body about ten), "%" first and "+" before the
    space, so that no escape is escaped again. UTF-8 bytes are read as latin-1 characters."""
    raw = text.encode()
    escaped = raw.translate(None, _UNRESERVED)
    if not escaped:
        return text
    if len(raw) != len(text):
        text = raw.decode("latin-1")
    chars = set(escaped.decode("latin-1"))
    for char in ("%", "+"):
        if char in chars:
            chars.discard(char)
            text = text.replace(char, _FORM[char])
    for char in chars:
        text = text.replace(char, _FORM[char])
    return text


def form_encode(params: Mapping[str, str]) -> bytes:
    """``urllib.parse.urlencode(params).encode()``, byte for byte, in a fraction of its time."""
    return "&".join(f"{_quote_plus(k)}={_quote_plus(v)}" for k, v in params.items()).encode("ascii")


def _unquote_plus(text: str) -> str:
    """``urllib.parse.unquote_plus(text, errors="replace")``. Its escapes are made quoted-printable's
    =XX, which binascii decodes in C (urllib loops over each in Python), unless the text has a raw
    "=", a line break or a byte past ASCII. Each "%" that starts no escape leaves more than it
    should (binascii keeps it, or drops it whole at the end), so the length tells: then urllib."""
    if "%" not in text:
        return text.replace("+", " ")
    if text.isascii() and "=" not in text and "\n" not in text and "\r" not in text:
        raw = binascii.a2b_qp(text.replace("+", " ").replace("%", "="))
        if len(raw) == len(text) - 2 * text.count("%"):
            return raw.decode("utf-8", "replace")
    return unquote_plus(text, errors="replace")


def form_decode(text: str, strict: bool = False) -> dict[str, str]:
    """``dict(urllib.parse.parse_qsl(text, keep_blank_values=True, strict_parsing=strict))``, key
    for key and value for value: a field without "=" is an empty value (``strict``: a
    ``ValueError``), and the last of a repeated name wins."""
    fields: dict[str, str] = {}
    for pair in text.split("&") if text else ():
        if not pair and not strict:
            continue
        name, eq, value = pair.partition("=")
        if not eq and strict:
            raise ValueError(f"bad form field: {pair!r}")
        fields[_unquote_plus(name)] = _unquote_plus(value)
    return fields


def yuan(amount_fen: int) -> str:
    """Fen to the ``12.34`` yuan string of APIs that take yuan; integer arithmetic, no float."""
    return f"{amount_fen // 100}.{amount_fen % 100:02d}"


def fen(yuan_text: str) -> int:
    """``12.34`` yuan to fen, exactly."""
    whole, _, frac = yuan_text.partition(".")
    if not whole.isdigit() or (frac and (not frac.isdigit() or len(frac) > 2)):
        raise ValueError(f"not a yuan amount: {yuan_text!r}")
    return int(whole) * 100 + int(frac.ljust(2, "0") or 0)


# Results, named by what they establish about the money.


def approved(req: ChannelRequest, channel_code: str, channel_txn_id: str) -> ChannelResult:
    return ChannelResult(req.key, Outcome.APPROVED, rc.APPROVED, channel_code, "", channel_txn_id)


def pending(req: ChannelRequest, channel_code: str, message: str, channel_txn_id: str = "") -> ChannelResult:
    return ChannelResult(req.key, Outcome.PENDING, rc.IN_PROGRESS, channel_code, message, channel_txn_id)


def created(req: ChannelRequest, channel_code: str, qr_code: str, channel_txn_id: str = "") -> ChannelResult:
    """A QR order the channel created: nothing paid yet, ``qr_code`` for the customer to scan."""
    return ChannelResult(req.key, Outcome.PENDING, rc.IN_PROGRESS, channel_code, "", channel_txn_id, qr_code=qr_code)


def declined(req: ChannelRequest, iso_code: str, channel_code: str, message: str = "") -> ChannelResult:
    """The channel refused it: certainly no money moved."""
    return ChannelResult(req.key, Outcome.DECLINED, iso_code, channel_code, message)


def unknown(req: ChannelRequest, channel_code: str, message: str = "") -> ChannelResult:
    """The channel may have it: resolved later by query, never resent."""
    return ChannelResult(req.key, Outcome.UNKNOWN, rc.CHANNEL_UNAVAILABLE, channel_code, message)


def unprocessed(req: ChannelRequest, channel_code: str, message: str = "") -> ChannelResult:
    """The channel refused our request unread (its signature or parameters): this request did
    nothing. That ends a pay, which is never sent twice: refused (96). A query, a cancel or a
    refund is asked again, and may be a retry of one whose first answer was lost: it tells nothing
    of the order or of that first attempt, so UNKNOWN (never taken for the order's being closed, or
    an undo's being refused while the channel may have done it)."""
    if req.op == PAY:
        return declined(req, rc.SYSTEM_MALFUNCTION, channel_code, message)
    return unknown(req, channel_code, message)


def not_sent(
    req: ChannelRequest, channel_code: str, message: str, iso_code: str = rc.CHANNEL_UNAVAILABLE
) -> ChannelResult:
    """The request certainly never reached the channel."""
    return ChannelResult(req.key, Outcome.DECLINED, iso_code, channel_code, message, sent=False)


def another_order(req: ChannelRequest, named: str, ours: str) -> ChannelResult | None:
    """An answer, signed and all, that names another order than ours (a genuine answer replayed,
    or the channel's mix-up) tells nothing about ours: UNKNOWN, to be queried. Checked wherever
    the answer names an order (``named``) at all."""
    if named and named != ours:
        return unknown(req, "MISMATCH", "answer names another order")
    return None


def another_amount(req: ChannelRequest, named_fen: int) -> ChannelResult | None:
    """The same for a pay's amount, where the answer echoes one (0: it names none)."""
    if named_fen and named_fen != req.amount_fen:
        return unknown(req, "MISMATCH", "answer names another amount")
    return None


CLOCK_GRACE_S = 60.0  # the channel's clock and ours may differ by this much


def lapsed(req: ChannelRequest, grace_s: float = CLOCK_GRACE_S) -> bool:
    """Whether a QR order can no longer be paid at the channel because it expired (``expires``,
    as the precreate told the channel, ``grace_s`` ago: by default the clocks' grace): where a
    channel cannot close an order nobody has scanned, only its expiry does."""
    return 0 < req.expires <= time.time() - grace_s


def not_found(req: ChannelRequest, message: str = "") -> ChannelResult:
    """A query's answer that the channel has no such order."""
    return ChannelResult(req.key, Outcome.DECLINED, rc.DO_NOT_HONOUR, NOT_FOUND, message)
