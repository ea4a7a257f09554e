"""The ISO 8583 link to a legacy switch upstream: our request as its message, its answer as our
result. The messages are this switch's own dialect (``protocols.iso8583``, spec sections 1-3),
as the legacy switch took them from the terminals:

- pay: 0200, processing code 000000, the code or card in field 2;
- query: 0100, processing code 330000 (a status inquiry);
- cancel: 0400, a reversal naming the purchase in field 90;
- refund: 0200, processing code 200000, the purchase's order number in field 62.

Field 48 carries our order number (a refund's: its refund number), the legacy switch's key for
the transaction; field 32 our institution. Field 64 is the MAC over the message (spec section 7)
under the key shared with the legacy switch: the account's HMAC, cut to its first 8 bytes (as
ISO/IEC 9797-2 allows); an answer whose MAC, or order number, is not ours is not taken."""

from __future__ import annotations

import datetime as dt
import hmac
import zlib
from collections.abc import Callable
from typing import Annotated

from msgspec import Meta

from protocols import response_codes as rc
from protocols.channels.base import (
    Account,
    Crypto,
    HttpAnswer,
    HttpCall,
    approved,
    declined,
    pending,
    unknown,
    unprocessed,
)
from protocols.iso8583 import MAC_FIELD, DecodeFailure, Message, Unparseable, decode, encode_with_mac, mac_input
from protocols.messages import CANCEL, NOT_FOUND, PAY, QUERY, REFUND, ChannelRequest, ChannelResult

CST = dt.timezone(dt.timedelta(hours=8))
PURCHASE_CODE, REFUND_CODE, INQUIRY_CODE = "000000", "200000", "330000"  # field 3
ORDER, ORIGINAL, INSTITUTION = "48", "62", "32"
MAC_BYTES = 8
# The answers that say for certain that no money moved, by operation: any other code (one this
# switch does not know, 91, 96, 68, 94 a duplicate, 12 an inquiry it does not support) is UNKNOWN,
# for the resolver to ask again. A pay refused unread (30 format, A0 MAC) moved nothing either.
REFUSALS = frozenset({"03", "05", "13", "14", "51", "54", "55", "57", "59", "61", "62", "65"})
UNREAD = frozenset({"30", "A0"})


class LegacyAccount(Account, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The switch at the legacy switch: our institution id (field 32), and the MAC key shared
    with it (``keys``: hmac-sha256, the same label to sign and to verify)."""

    institution: Annotated[str, Meta(pattern=r"^\d{1,11}$")]


def mac_of(sign: Callable[[bytes], str]) -> Callable[[bytes], bytes]:
    """Field 64's MAC function from a signer: the first 8 bytes of its HMAC."""
    return lambda data: bytes.fromhex(sign(data))[:MAC_BYTES]


def sealed(message: Message, sign: Callable[[bytes], str]) -> bytes:
    """``message`` encoded with its MAC, without the frame's length (the pool adds it)."""
    return encode_with_mac(message, mac_of(sign))[2:]


def mac_ok(body: bytes, message: Message, sign: Callable[[bytes], str]) -> bool:
    given = message.get(MAC_FIELD, "").encode()
    return hmac.compare_digest(given, mac_of(sign)(mac_input(body, message)).hex().upper().encode())


def stan_of(order_no: str) -> str:
    """Field 11 of a message about ``order_no``: its last six digits (a terminal's order number
    ends in its RRN), else six digits derived from it."""
    tail = order_no[-6:]
    return tail if tail.isdigit() and len(tail) == 6 else f"{zlib.crc32(order_no.encode()) % 1_000_000:06d}"


def _message(mti: str, code: str, req: ChannelRequest, account: LegacyAccount, at: float, order_no: str) -> Message:
    """A request about ``order_no``, its fields 7, 12 and 13 at ``at``."""
    when = dt.datetime.fromtimestamp(at, CST)
    message = {
        "t": mti,
        "3": code,
        "4": f"{req.amount_fen:012d}",
        "7": f"{when:%m%d%H%M%S}",
        "11": stan_of(order_no),
        "12": f"{when:%H%M%S}",
        "13": f"{when:%m%d}",
        INSTITUTION: account.institution,
        "37": order_no[-12:].rjust(12, "0"),
        "41": req.terminal_id[:8].ljust(8),
        ORDER: order_no,
        "49": "156",
    }
    if req.merchant_channel_id:  # the merchant's id at the legacy switch, when configured
        message["42"] = req.merchant_channel_id[:15].ljust(15)
    return message


def _call(message: Message, crypto: Crypto) -> HttpCall:
    return HttpCall("", sealed(message, crypto.sign), "application/iso8583")


def build_pay(req: ChannelRequest, account: LegacyAccount, crypto: Crypto, now: float) -> HttpCall:
    # Field 7 is the write-ahead's time, the order's own: a reversal's field 90 names it again.
    message = _message("0200", PURCHASE_CODE, req, account, req.created or now, req.out_trade_no)
    return _call({**message, "2": req.auth_code}, crypto)


def build_query(req: ChannelRequest, account: LegacyAccount, crypto: Crypto, now: float) -> HttpCall:
    return _call(_message("0100", INQUIRY_CODE, req, account, now, req.out_trade_no), crypto)


def build_cancel(req: ChannelRequest, account: LegacyAccount, crypto: Crypto, now: float) -> HttpCall:
    message = _message("0400", PURCHASE_CODE, req, account, now, req.out_trade_no)
    message["11"] = stan_of(f"{req.out_trade_no}R")  # its own STAN; field 90 names the purchase's
    original = f"0200{stan_of(req.out_trade_no)}{dt.datetime.fromtimestamp(req.created or now, CST):%m%d%H%M%S}"
    return _call({**message, "90": f"{original}{account.institution.zfill(11)}{'0' * 11}"}, crypto)


def build_refund(req: ChannelRequest, account: LegacyAccount, crypto: Crypto, now: float) -> HttpCall:
    message = _message("0200", REFUND_CODE, req, account, now, req.refund_no)
    return _call({**message, ORIGINAL: req.out_trade_no}, crypto)


ASKED = {PAY: "0210", QUERY: "0110", CANCEL: "0410", REFUND: "0210"}  # the answer's MTI, by operation


def _answer(req: ChannelRequest, answer: HttpAnswer, crypto: Crypto, order_no: str) -> Message | ChannelResult:
    """The legacy switch's answer, if it is one to this very request: our MAC, the answer MTI of
    the request's, our order number and amount echoed. Anything else is UNKNOWN: believed, an
    answer to another message (a late one on the same connection, say) could end this one."""
    try:
        decoded = decode(answer.body)
    except Unparseable as exc:
        return unknown(req, "BADANSWER", f"not ISO 8583: {exc}"[:120])
    if isinstance(decoded, DecodeFailure):
        return unknown(req, "BADANSWER", f"not ISO 8583: {decoded.reason}"[:120])
    if not mac_ok(answer.body, decoded, crypto.sign):
        return unknown(req, "BADMAC", "the answer's MAC is not the legacy switch's")
    echoed = (decoded.get("t"), decoded.get(ORDER), decoded.get("4"))
    if echoed != (ASKED[req.op], order_no, f"{req.amount_fen:012d}") or "39" not in decoded:
        return unknown(req, "MISMATCH", "not the answer to this request")
    return decoded


Said = Callable[[ChannelRequest, Message], ChannelResult]
Parse = Callable[[ChannelRequest, HttpAnswer, Crypto], ChannelResult]


def _done(req: ChannelRequest, got: Message) -> ChannelResult:
    return approved(req, got["39"], got.get("38", ""))


def _paying(req: ChannelRequest, got: Message) -> ChannelResult:
    return pending(req, got["39"], "in progress at the legacy switch")


def _never_had(req: ChannelRequest, got: Message) -> ChannelResult:
    return declined(req, rc.ORIGINAL_NOT_FOUND, NOT_FOUND, "the legacy switch has no such order")


def _refused(why: str) -> Said:
    def said(req: ChannelRequest, got: Message) -> ChannelResult:
        return declined(req, got["39"], got["39"], why)

    return said


def _unread(req: ChannelRequest, got: Message) -> ChannelResult:
    return unprocessed(req, got["39"], "the legacy switch refused the message unread")


def _parser(order_of: Callable[[ChannelRequest], str], said: dict[str, Said]) -> Parse:
    """An operation's answer read by its code, as ``said`` says; any other code is UNKNOWN."""

    def parse(req: ChannelRequest, answer: HttpAnswer, crypto: Crypto) -> ChannelResult:
        got = _answer(req, answer, crypto, order_of(req))
        if isinstance(got, ChannelResult):
            return got
        read = said.get(got["39"])
        return read(req, got) if read is not None else unknown(req, got["39"], "the legacy switch did not say")

    return parse


def _order(req: ChannelRequest) -> str:
    return req.out_trade_no


def _codes(codes: frozenset[str], read: Said) -> dict[str, Said]:
    return dict.fromkeys(codes, read)


# The code relayed to the terminal is the legacy switch's own.
parse_pay = _parser(
    _order,
    {rc.APPROVED: _done, rc.IN_PROGRESS: _paying}
    | _codes(REFUSALS | {"12"}, _refused("declined by the legacy switch"))
    | _codes(UNREAD, _unread),
)
parse_query = _parser(  # a purchase declined or reversed there answers its refusal (a reversed one 05)
    _order,
    {rc.APPROVED: _done, rc.IN_PROGRESS: _paying, rc.ORIGINAL_NOT_FOUND: _never_had}
    | _codes(REFUSALS, _refused("not paid at the legacy switch")),
)
# Reversed, or never had: either way it keeps no money, and it bars the purchase should it come
# after (docs/iso8583.md section 8, as this switch does itself).
parse_cancel = _parser(_order, {rc.APPROVED: _done, rc.ORIGINAL_NOT_FOUND: _done})
parse_refund = _parser(
    lambda req: req.refund_no,
    {rc.APPROVED: _done} | _codes(REFUSALS | {"12", rc.ORIGINAL_NOT_FOUND}, _refused("refused by the legacy switch")),
)
