"""Masking of payment codes and card numbers: first 6 and last 4 only (invariant 6)."""

import re

_LONG_DIGITS = re.compile(r"(?<!\d)\d{13,19}(?!\d)")  # whole runs: a 20-digit order number is not a card
# As a person types one: in groups, with spaces or dashes between them.
_TYPED_DIGITS = re.compile(r"(?<!\d)\d(?:[ -]?\d){12,18}(?!\d)")
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")


def mask_pan(pan: str | None) -> str:
    """Return ``pan`` with everything but the first 6 and last 4 characters replaced by ``*``.

    Anything of 10 characters or fewer is masked whole: showing 6 + 4 of it would show it all.
    """
    if not pan:
        return ""
    if len(pan) <= 10:
        return "*" * len(pan)
    return f"{pan[:6]}{'*' * (len(pan) - 10)}{pan[-4:]}"


def luhn_ok(digits: str) -> bool:
    """True when ``digits`` passes the Luhn (mod 10) check used by card numbers."""
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def scrub(text: str) -> str:
    """``text`` with every run of 13 to 19 digits (what a card number or payment code looks like)
    masked: the last line of defence for log lines and tracebacks."""
    return _LONG_DIGITS.sub(lambda m: mask_pan(m.group()), text)


def typed(text: str, limit: int) -> str:
    """What a person typed into a free-text field (a reason, a resolution), fit to keep, audit and
    show: control characters gone, every card number masked, also one written in groups ("6222
    0212 3456 7890"), then cut to ``limit`` (after masking, which keeps the length: a cut number
    would escape it)."""
    text = _UNPRINTABLE.sub(" ", text).strip()
    masked = _TYPED_DIGITS.sub(lambda m: mask_pan(re.sub(r"[ -]", "", m.group())), text)
    return masked[:limit]
