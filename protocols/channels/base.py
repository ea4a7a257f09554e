"""The connector contract: one module per channel turns our request into theirs and their
answer into ours. Crypto is injected (``sign`` / ``verify`` bound to keys held by ``hsm/``), so
this code stays pure and never sees key material.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from protocols import response_codes as rc
from protocols.messages import NOT_FOUND, ChannelRequest, ChannelResult, Outcome

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


@dataclass(frozen=True, slots=True)
class ChannelIdentity:
    """Non-secret identifiers of the switch at a channel (app id, merchant number, cert id)."""

    app_id: str = ""
    mch_id: str = ""
    cert_id: str = ""


class Connector(Protocol):
    """Switch side of one channel's API: turn our request into theirs, their answer into ours.
    Both dispatch on ``req.op`` (pay, query, cancel)."""

    name: str

    def call(self, req: ChannelRequest, ident: ChannelIdentity, sign: Sign, now: float) -> HttpCall: ...

    def result(self, req: ChannelRequest, answer: HttpAnswer, verify: Verify) -> ChannelResult: ...


@dataclass(frozen=True, slots=True)
class ChannelVerdict:
    """What a simulated channel decided, in a vocabulary shared by the five simulators:

    - pay: SUCCESS, USERPAYING, NOTENOUGH, EXPIRED, INVALID, DECLINED, ORDERCLOSED, SYSTEMERROR
    - query: PAID, PAYING, CLOSED, NOTEXIST, SYSTEMERROR
    - cancel: DONE, RETRY, NOTEXIST, REFUSED, SYSTEMERROR
    - refund: DONE, REFUSED, SYSTEMERROR
    """

    status: str
    channel_txn_id: str = ""


@dataclass(frozen=True, slots=True)
class RequestSeen:
    """A request as the channel reads it."""

    op: str
    out_trade_no: str
    auth_code: str = ""
    amount_fen: int = 0
    merchant: str = ""
    channel_txn_id: str = ""
    refund_no: str = ""
    pin_block: str = ""
    fields: Mapping[str, str] = field(default_factory=dict)


class ChannelSide(Protocol):
    """Channel side of the same API, for the simulators: read their request, write their answer."""

    name: str
    paths: Mapping[str, str]  # op -> path

    def read(self, path: str, body: bytes, headers: Mapping[str, str], verify: Verify) -> RequestSeen | str: ...

    def write(self, seen: RequestSeen, verdict: ChannelVerdict, sign: Sign) -> HttpAnswer: ...

    def write_error(self, reason: str, sign: Sign) -> HttpAnswer: ...


def sorted_query(params: Mapping[str, str], skip: frozenset[str] = frozenset({"sign"})) -> str:
    """``k1=v1&k2=v2`` over the non-empty parameters sorted by key (ASCII): the signing input
    shape shared by WeChat Pay v2, Alipay and UnionPay."""
    return "&".join(f"{k}={params[k]}" for k in sorted(params) if k not in skip and params[k] != "")


# What ``urllib.parse.quote_plus`` keeps as it is; every other byte of the UTF-8 text is %XX and a
# space is "+". As one table for ``str.translate`` over the text's bytes read as latin-1.
_UNRESERVED = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~"
_FORM = {b: chr(b) if b in _UNRESERVED else "+" if b == 0x20 else f"%{b:02X}" for b in range(256)}


def form_encode(params: Mapping[str, str]) -> bytes:
    """``urllib.parse.urlencode(params).encode()``, byte for byte, in a third of its time: a
    signature's base64 is quoted there one byte at a time in Python, here in one C call."""
    return "&".join(
        f"{k.encode().decode('latin-1').translate(_FORM)}={v.encode().decode('latin-1').translate(_FORM)}"
        for k, v in params.items()
    ).encode("ascii")


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


def declined(req: ChannelRequest, iso_code: str, channel_code: str, message: str = "") -> ChannelResult:
    """The channel refused it: certainly no money moved."""
    return ChannelResult(req.key, Outcome.DECLINED, iso_code, channel_code, message)


def unknown(req: ChannelRequest, channel_code: str, message: str = "") -> ChannelResult:
    """The channel may have it: resolved later by query, never resent."""
    return ChannelResult(req.key, Outcome.UNKNOWN, rc.CHANNEL_UNAVAILABLE, channel_code, message)


def not_sent(
    req: ChannelRequest, channel_code: str, message: str, iso_code: str = rc.CHANNEL_UNAVAILABLE
) -> ChannelResult:
    """The request certainly never reached the channel."""
    return ChannelResult(req.key, Outcome.DECLINED, iso_code, channel_code, message, sent=False)


def not_found(req: ChannelRequest, message: str = "") -> ChannelResult:
    """A query's answer that the channel has no such order."""
    return ChannelResult(req.key, Outcome.DECLINED, rc.DO_NOT_HONOUR, NOT_FOUND, message)
