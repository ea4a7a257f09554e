"""Request validation of the wire contract (spec section 3), as data.

Each transaction type lists its mandatory fields; each field has one format rule and the response
code a violation becomes. A rejection names the field, the rule and the code, like pyiso8583's
errors. Most rules need the message alone (``validate``); a few need today's date or run only
once the terminal is known, and the lifecycle's steps apply them where they stand in a
transaction's path (``transmitted_on``, ``original_of_reversal``, ``mac_present``).
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from protocols import response_codes as rc
from protocols.iso8583 import MAC_FIELD, Message


class TxnType(StrEnum):
    """The transaction type, as ISO's processing code calls it."""

    PURCHASE = "purchase"
    VOID = "void"
    REFUND = "refund"
    INQUIRY = "inquiry"
    REVERSAL = "reversal"
    NETWORK = "network"


@dataclass(frozen=True, slots=True)
class Rule:
    """A named check of the wire contract and the response code a violation becomes. Its name is
    a metrics label: it comes from this module, never from the peer's bytes."""

    name: str
    code: str

    def reject(self, field: str, reason: str) -> Rejection:
        return Rejection(self.code, field, reason, self.name)


@dataclass(frozen=True, slots=True)
class Rejection:
    code: str
    field: str
    reason: str  # may quote the peer's values: for logs, never a label
    rule: str  # the Rule's name: a metrics label

    def __str__(self) -> str:
        return f"field {self.field}: {self.rule}: {self.reason} -> {self.code}"


DECODES = Rule("decodes", rc.FORMAT_ERROR)
SUPPORTED = Rule("supported", rc.INVALID_TRANSACTION)
PRESENT = Rule("mandatory", rc.FORMAT_ERROR)
NOT_ZERO = Rule("not zero", rc.INVALID_AMOUNT)
NETWORK_CODE = Rule("network code", rc.INVALID_TRANSACTION)
MAC_PRESENT = Rule("MAC present", rc.FORMAT_ERROR)  # a request that needs a MAC and has none
MAC_VERIFIES = Rule("MAC verifies", rc.MAC_FAILED)
WITHIN_A_DAY = Rule("within a day of today", rc.FORMAT_ERROR)  # field 7: stale or future-dated
ORIGINAL_MTI = Rule("original MTI 0200", rc.FORMAT_ERROR)  # field 90 of a reversal
ORIGINAL_TRANSMITTED = Rule("original transmission MMDDhhmmss", rc.FORMAT_ERROR)
ORIGINAL_WITHIN_A_DAY = Rule("original within a day of today", rc.ORIGINAL_NOT_FOUND)
ROUTED = Rule("routed", rc.INVALID_PAYMENT_CODE)  # field 2: a code or card no channel takes (switch.routing)


# (MTI, processing code) -> transaction type; a reversal carries the original's processing code.
_TXN_TYPE_BY_MTI_AND_CODE = {
    ("0200", "000000"): TxnType.PURCHASE,
    ("0200", "020000"): TxnType.VOID,
    ("0200", "200000"): TxnType.REFUND,
    ("0100", "300000"): TxnType.INQUIRY,
}

MANDATORY: dict[TxnType, tuple[str, ...]] = {
    TxnType.PURCHASE: ("2", "3", "4", "7", "11", "12", "13", "22", "25", "41", "42", "49"),
    TxnType.VOID: ("3", "4", "7", "11", "12", "13", "25", "37", "41", "42", "49"),
    TxnType.REFUND: ("3", "4", "7", "11", "12", "13", "25", "37", "41", "42", "49"),
    TxnType.INQUIRY: ("3", "7", "11", "12", "13", "37", "41", "42"),
    TxnType.REVERSAL: ("2", "3", "4", "7", "11", "12", "13", "25", "41", "42", "49", "90"),
    TxnType.NETWORK: ("7", "11", "41", "70"),
}

_MMDD = r"(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])"
_HHMMSS = r"([01]\d|2[0-3])[0-5]\d[0-5]\d"


FORMAT = "format"  # the rule of each field's format


@dataclass(frozen=True, slots=True)
class FieldRule:
    pattern: re.Pattern[str]
    what: str
    code: str = rc.FORMAT_ERROR
    check: Callable[[str], bool] | None = None  # what a pattern cannot say (calendar days)

    def accepts(self, value: str) -> bool:
        return self.pattern.fullmatch(value) is not None and (self.check is None or self.check(value))

    def reject(self, field: str) -> Rejection:
        return Rejection(self.code, field, f"expected {self.what}", FORMAT)


def _rule(
    pattern: str, what: str, code: str = rc.FORMAT_ERROR, check: Callable[[str], bool] | None = None
) -> FieldRule:
    return FieldRule(re.compile(pattern), what, code, check)


def _real_day(mmdd: str) -> bool:
    """A calendar day in some year (29 February included)."""
    try:
        dt.date(2000, int(mmdd[:2]), int(mmdd[2:4]))
    except ValueError:
        return False
    return True


FIELD_RULES: dict[str, FieldRule] = {
    "2": _rule(r"\d{1,19}", "digits only", rc.INVALID_PAYMENT_CODE),
    "3": _rule(r"\d{6}", "6 digits"),
    "4": _rule(r"\d{12}", "12 digits of fen", rc.INVALID_AMOUNT),
    "7": _rule(_MMDD + _HHMMSS, "MMDDhhmmss", check=_real_day),
    "11": _rule(r"\d{6}", "6 digits"),
    "12": _rule(_HHMMSS, "hhmmss"),
    "13": _rule(_MMDD, "MMDD", check=_real_day),
    "22": _rule(r"0[235]1", "entry mode 031, 021 or 051"),
    "25": _rule(r"00", "condition code 00"),
    "37": _rule(r"[0-9A-Za-z]{12}", "12 alphanumerics"),
    "41": _rule(r"[!-~][ -~]{7}", "8 printable characters"),
    "42": _rule(r"[!-~][ -~]{14}", "15 printable characters"),
    "49": _rule(r"156", "currency 156 (CNY)"),
    "52": _rule(r"[0-9A-Fa-f]{16}", "16 hex characters"),
    "64": _rule(r"[0-9A-Fa-f]{16}", "16 hex characters"),
    "70": _rule(r"\d{3}", "3 digits"),
    "90": _rule(r"\d{42}", "42 digits"),
}

NETWORK_CODES = {"001": "sign-on", "002": "sign-off", "301": "echo", "101": "key change"}


def carries_mac(message: Message) -> bool:
    """Spec section 7: the requests a terminal MACs (field 64): 0200, 0100, 0400 and the key
    change (0800 ``101``) under its MAK, and the sign-on (0800 ``001``) under its master key's
    sign-on variant (a terminal signs on when it has lost its MAK)."""
    mti = message.get("t")
    return mti in ("0200", "0100", "0400") or (mti == "0800" and message.get("70") in ("001", "101"))


def is_sign_on(message: Message) -> bool:
    return message.get("t") == "0800" and message.get("70") == "001"


def classify(message: Message) -> TxnType | Rejection:
    """The request's transaction type, or ``12`` for an MTI / processing code the switch does not do."""
    mti = message.get("t", "")
    if mti == "0800":
        return TxnType.NETWORK
    if mti == "0400":
        return TxnType.REVERSAL
    code = message.get("3")
    if code is None:
        return PRESENT.reject("3", "missing")
    txn_type = _TXN_TYPE_BY_MTI_AND_CODE.get((mti, code))
    if txn_type is None:
        return SUPPORTED.reject("3", f"MTI {mti} with processing code {code} not supported")
    return txn_type


def validate(txn_type: TxnType, message: Message) -> Rejection | None:
    """Check the mandatory fields of ``txn_type`` and the format of every field present."""
    for field in MANDATORY[txn_type]:
        if not message.get(field):
            return PRESENT.reject(field, "mandatory field missing")
    for field, value in message.items():
        rule = FIELD_RULES.get(field)
        if rule is not None and not rule.accepts(value):
            return rule.reject(field)
    if "4" in message and int(message["4"]) == 0 and txn_type is not TxnType.INQUIRY:
        return NOT_ZERO.reject("4", "amount is zero")
    if txn_type is TxnType.NETWORK and message["70"] not in NETWORK_CODES:
        return NETWORK_CODE.reject("70", f"network management code {message['70']} not supported")
    return None


def mac_present(message: Message) -> Rejection | None:
    """For a request that must be MAC'd: field 64 is there."""
    return None if MAC_FIELD in message else MAC_PRESENT.reject(MAC_FIELD, "no MAC")


def transmission_date(field7: str, today: dt.date) -> dt.date | None:
    """The date of field 7 (MMDD...), with the year that puts it nearest ``today``; None when
    it is more than a day away (a stale or future-dated transmission)."""
    return _nearest(field7[:4], today)


def transmitted_at(field7: str, now: dt.datetime) -> dt.datetime | None:
    """Field 7 (MMDDhhmmss, UTC) as a moment, in the year nearest ``now``; None when it is more
    than a day away."""
    day = transmission_date(field7, now.date())
    if day is None:
        return None
    try:
        return dt.datetime(
            day.year, day.month, day.day, int(field7[4:6]), int(field7[6:8]), int(field7[8:10]), tzinfo=dt.UTC
        )
    except ValueError:  # no such time of day
        return None


@functools.lru_cache(maxsize=64)  # every request asks, and of a few days only
def _nearest(mmdd: str, today: dt.date) -> dt.date | None:
    month, day = int(mmdd[:2]), int(mmdd[2:4])
    candidates = []
    for year in (today.year - 1, today.year, today.year + 1):
        try:
            candidates.append(dt.date(year, month, day))
        except ValueError:
            continue
    if not candidates:
        return None
    best = min(candidates, key=lambda d: abs((d - today).days))
    return best if abs((best - today).days) <= 1 else None


def transmitted_on(message: Message, today: dt.date) -> dt.date | Rejection:
    """The date of the request's field 7, or ``30`` when it is more than a day from ``today``."""
    date = transmission_date(message["7"], today)
    return date if date is not None else WITHIN_A_DAY.reject("7", "more than a day from today")


class OriginalOfReversal(NamedTuple):
    """Field 90 of a reversal, read: the purchase it reverses."""

    stan: str
    transmitted: str  # its field 7
    date: dt.date


def original_of_reversal(message: Message, today: dt.date) -> OriginalOfReversal | Rejection:
    """Field 90 (original MTI, STAN, field 7, ...): ``30`` unless it names a 0200 with a valid
    transmission time; ``25`` when that time is more than a day from ``today`` (no such
    purchase can be reversed here)."""
    original = message["90"]
    stan, transmitted = original[4:10], original[10:20]
    if original[:4] != "0200":
        return ORIGINAL_MTI.reject("90", f"original MTI {original[:4]}")
    if not FIELD_RULES["7"].accepts(transmitted):
        return ORIGINAL_TRANSMITTED.reject("90", f"expected {FIELD_RULES['7'].what} at offset 10")
    date = transmission_date(transmitted, today)
    if date is None:
        return ORIGINAL_WITHIN_A_DAY.reject("90", "original transmitted more than a day from today")
    return OriginalOfReversal(stan, transmitted, date)
