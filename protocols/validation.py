"""Request validation of the wire contract (spec section 3), as data.

Each message kind lists its mandatory fields; each field has one format rule and the response
code a violation becomes. A rejection names the field and the rule, like pyiso8583's errors.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from protocols import response_codes as rc
from protocols.iso8583 import Message


class Kind(StrEnum):
    PURCHASE = "purchase"
    VOID = "void"
    REFUND = "refund"
    INQUIRY = "inquiry"
    REVERSAL = "reversal"
    NETWORK = "network"


@dataclass(frozen=True, slots=True)
class Rejection:
    code: str
    field: str
    reason: str

    def __str__(self) -> str:
        return f"field {self.field}: {self.reason} -> {self.code}"


# (MTI, processing code) -> kind; a reversal carries the original's processing code.
_KIND_BY_MTI_AND_CODE = {
    ("0200", "000000"): Kind.PURCHASE,
    ("0200", "020000"): Kind.VOID,
    ("0200", "200000"): Kind.REFUND,
    ("0100", "300000"): Kind.INQUIRY,
}

MANDATORY: dict[Kind, tuple[str, ...]] = {
    Kind.PURCHASE: ("2", "3", "4", "7", "11", "12", "13", "22", "25", "41", "42", "49"),
    Kind.VOID: ("3", "4", "7", "11", "12", "13", "25", "37", "41", "42", "49"),
    Kind.REFUND: ("3", "4", "7", "11", "12", "13", "25", "37", "41", "42", "49"),
    Kind.INQUIRY: ("3", "7", "11", "12", "13", "37", "41", "42"),
    Kind.REVERSAL: ("2", "3", "4", "7", "11", "12", "13", "25", "41", "42", "49", "90"),
    Kind.NETWORK: ("7", "11", "41", "70"),
}

_MMDD = r"(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])"
_HHMMSS = r"([01]\d|2[0-3])[0-5]\d[0-5]\d"


@dataclass(frozen=True, slots=True)
class FieldRule:
    pattern: re.Pattern[str]
    what: str
    code: str = rc.FORMAT_ERROR
    check: Callable[[str], bool] | None = None  # what a pattern cannot say (calendar days)

    def accepts(self, value: str) -> bool:
        return self.pattern.fullmatch(value) is not None and (self.check is None or self.check(value))


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


def classify(message: Message) -> Kind | Rejection:
    """Which kind of request this is, or ``12`` for an MTI / processing code the switch does not do."""
    mti = message.get("t", "")
    if mti == "0800":
        return Kind.NETWORK
    if mti == "0400":
        return Kind.REVERSAL
    code = message.get("3")
    if code is None:
        return Rejection(rc.FORMAT_ERROR, "3", "missing")
    kind = _KIND_BY_MTI_AND_CODE.get((mti, code))
    if kind is None:
        return Rejection(rc.INVALID_TRANSACTION, "3", f"MTI {mti} with processing code {code} not supported")
    return kind


def validate(kind: Kind, message: Message) -> Rejection | None:
    """Check the mandatory fields of ``kind`` and the format of every field present."""
    for field in MANDATORY[kind]:
        if not message.get(field):
            return Rejection(rc.FORMAT_ERROR, field, "mandatory field missing")
    for field, value in message.items():
        rule = FIELD_RULES.get(field)
        if rule is not None and not rule.accepts(value):
            return Rejection(rule.code, field, f"expected {rule.what}")
    if "4" in message and int(message["4"]) == 0 and kind is not Kind.INQUIRY:
        return Rejection(rc.INVALID_AMOUNT, "4", "amount is zero")
    if kind is Kind.NETWORK and message["70"] not in NETWORK_CODES:
        return Rejection(rc.INVALID_TRANSACTION, "70", f"network management code {message['70']} not supported")
    return None
