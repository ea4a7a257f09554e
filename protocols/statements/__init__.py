"""Channel statement (bill) files: the row every channel's format reads into, and the helpers
the formats share. Each format lives with its channel (``protocols.channels.<kind>.statement``:
``parse``, what reconciliation reads, and ``write``, what the channel's simulator produces). Pure
code: bytes in, rows out. Amounts are integer fen everywhere, whatever the file shows.
"""

from __future__ import annotations

import datetime as dt
from decimal import ROUND_HALF_UP, Decimal

import msgspec

PAY, REFUND = "PAY", "REFUND"
PAID, REVOKED, REFUNDED = "SUCCESS", "REVOKED", "REFUND"  # a paid order, one reversed, a refund row
CST = dt.timezone(dt.timedelta(hours=8))
# A statement's size at most: as downloaded (compressed), and its text once unpacked. A day's file
# is tens of MB at the reference banks' rates; past these it is a bomb, never a bill, and a
# channel actor that read it whole would take the channel's payments down with it.
MAX_DOWNLOAD_BYTES = 256 << 20
MAX_TEXT_BYTES = 2 << 30


class StatementRow(msgspec.Struct, frozen=True, kw_only=True):
    """One line of a statement. ``entry`` PAY: an order the channel took (``status`` SUCCESS) or
    took and gave back whole (REVOKED: cancelled / reversed); REFUND: money returned on an order
    (``refund_no``). ``amount_fen`` is the order amount for PAY, the refunded amount for REFUND;
    ``fee_fen`` what the channel keeps (negative: fee returned with a refund)."""

    entry: str
    out_trade_no: str
    channel_txn_id: str
    amount_fen: int
    status: str
    at: dt.datetime  # in CST, as channels write times
    refund_no: str = ""
    fee_fen: int = 0


class StatementError(Exception):
    """A statement that cannot be read: names the line and what was wrong there."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line


def yuan_text(fen: int, places: int = 2) -> str:
    """Fen as yuan with ``places`` decimals (WeChat writes fees with five)."""
    return f"{Decimal(fen) / 100:.{places}f}"


def fen_of(text: str, line: int) -> int:
    """Yuan text to fen, exactly; more than two decimals must be zeros beyond the fen."""
    try:
        value = Decimal(text.strip()) * 100
    except ArithmeticError:
        raise StatementError(line, f"not an amount: {text!r}") from None
    if value != value.to_integral_value():
        raise StatementError(line, f"amount {text!r} has a part smaller than a fen")
    return int(value)


def fee_fen(amount_fen: int, rate_per_10000: int) -> int:
    """A fee of ``rate_per_10000`` (60 = 0.60 %) on ``amount_fen``, rounded half up to the fen."""
    return int((Decimal(amount_fen) * rate_per_10000 / 10000).quantize(Decimal(1), ROUND_HALF_UP))


def cst_time(text: str, line: int) -> dt.datetime:
    """``YYYY-MM-DD hh:mm:ss``, Beijing time."""
    t = text.strip()
    try:
        if len(t) != 19 or (t[4], t[7], t[10], t[13], t[16]) != ("-", "-", " ", ":", ":"):
            raise ValueError(t)
        return digits_time(t[0:4] + t[5:7] + t[8:10] + t[11:13] + t[14:16] + t[17:19])
    except ValueError:
        raise StatementError(line, f"not a time (YYYY-MM-DD hh:mm:ss): {text!r}") from None


def digits_time(digits: str) -> dt.datetime:
    """``YYYYMMDDhhmmss``, Beijing time (ValueError if not one). Cut, not ``strptime``: its lock,
    one for the whole process, made five statements parsed in threads at once take three times as
    long as one after another."""
    if len(digits) != 14 or not (digits.isascii() and digits.isdigit()):
        raise ValueError(digits)
    d = [int(digits[a:b]) for a, b in ((0, 4), (4, 6), (6, 8), (8, 10), (10, 12), (12, 14))]
    return dt.datetime(*d, tzinfo=CST)


def time_text(at: dt.datetime) -> str:
    return at.astimezone(CST).strftime("%Y-%m-%d %H:%M:%S")
