"""Building requests of the wire contract: payment codes of each channel's shape, purchases,
network messages. Outcomes are chosen by the payment code's last two digits
(``bench.simulators.outcomes``)."""

from __future__ import annotations

import datetime as dt
import itertools
import random
import statistics
from pathlib import Path

from bench.demo_config import DEMO_SWITCH_CONFIG
from protocols.iso8583 import Message
from protocols.masking import luhn_ok
from switch.config import load_config


def code_shapes(config: Path = DEMO_SWITCH_CONFIG) -> dict[str, tuple[str, int]]:
    """A prefix and length that route a payment code to each channel (spec section 5), from the
    routing of ``config``: its first prefix and length for the channel."""
    return {route.channel: (route.prefixes[0], route.lengths[0]) for route in load_config(config).routing.codes}


CODE_SHAPES = code_shapes()  # the demo configuration's channels, in its order
APPROVING_SUFFIX = "00"
DEMO_MERCHANT = "898310048990001"  # the demo configuration's merchant on every channel
# A realistic share of purchases by channel, for the load tools.
CHANNEL_SHARES = {"wechat": 40, "alipay": 35, "unionpay": 10, "ecny": 10, "inbank": 5}


def quantile(values: list[float], q: int) -> float:
    """The ``q``-th percentile of ``values`` (inclusive method; 0 when empty)."""
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def payment_code(channel: str, suffix: str = APPROVING_SUFFIX, rng: random.Random | None = None) -> str:
    """A payment code routed to ``channel`` whose last two digits choose the outcome."""
    rng = rng or random.Random()
    prefix, length = CODE_SHAPES[channel]
    middle = "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - len(suffix)))
    return prefix + middle + suffix


def card_number(rng: random.Random | None = None) -> str:
    """A UnionPay card number (BIN 62, 19 digits) that passes Luhn and ends in the approving
    suffix (the simulators choose outcomes by the last two digits)."""
    rng = rng or random.Random()
    while True:
        body = "62" + "".join(rng.choice("0123456789") for _ in range(16))
        card = next(body + d for d in "0123456789" if luhn_ok(body + d))
        if card.endswith(APPROVING_SUFFIX):
            return card


class Stans:
    """STANs per terminal, 000001 to 999999, wrapping."""

    def __init__(self, start: int = 1) -> None:
        self._next: dict[str, itertools.cycle] = {}
        self._start = start

    def next(self, terminal: str) -> str:
        counter = self._next.setdefault(terminal, itertools.cycle(range(self._start, 1_000_000)))
        return f"{next(counter):06d}"


def purchase(
    terminal: str,
    merchant: str,
    pan: str,
    amount_fen: int,
    stan: str,
    when: dt.datetime | None = None,
    entry_mode: str = "031",
) -> Message:
    when = when or dt.datetime.now(dt.UTC)
    return {
        "t": "0200",
        "2": pan,
        "3": "000000",
        "4": f"{amount_fen:012d}",
        "7": when.strftime("%m%d%H%M%S"),
        "11": stan,
        "12": when.strftime("%H%M%S"),
        "13": when.strftime("%m%d"),
        "22": entry_mode,
        "25": "00",
        "41": terminal,
        "42": merchant,
        "49": "156",
    }


def network(terminal: str, stan: str, code: str = "301", when: dt.datetime | None = None) -> Message:
    when = when or dt.datetime.now(dt.UTC)
    return {"t": "0800", "7": when.strftime("%m%d%H%M%S"), "11": stan, "41": terminal, "70": code}


def inquiry(terminal: str, merchant: str, rrn: str, stan: str, when: dt.datetime | None = None) -> Message:
    """A status inquiry (0100, processing code 300000) of the transaction with RRN ``rrn``."""
    when = when or dt.datetime.now(dt.UTC)
    return {
        "t": "0100",
        "3": "300000",
        "7": when.strftime("%m%d%H%M%S"),
        "11": stan,
        "12": when.strftime("%H%M%S"),
        "13": when.strftime("%m%d"),
        "37": rrn,
        "41": terminal,
        "42": merchant,
    }


def reversal(original: Message, stan: str, when: dt.datetime | None = None) -> Message:
    """The 0400 of ``original`` (a 0200): field 90 names it by MTI, STAN and field 7."""
    when = when or dt.datetime.now(dt.UTC)
    out = {k: original[k] for k in ("2", "3", "4", "25", "41", "42", "49") if k in original}
    return out | {
        "t": "0400",
        "7": when.strftime("%m%d%H%M%S"),
        "11": stan,
        "12": when.strftime("%H%M%S"),
        "13": when.strftime("%m%d"),
        "90": original["t"] + original["11"] + original["7"] + "0" * 22,
    }


def void(original: Message, original_rrn: str, stan: str, when: dt.datetime | None = None) -> Message:
    """A void (0200, processing code 020000) of ``original`` by its RRN, for its whole amount."""
    return _undo(original, original_rrn, stan, "020000", int(original["4"]), when)


def refund(
    original: Message, original_rrn: str, amount_fen: int, stan: str, when: dt.datetime | None = None
) -> Message:
    """A refund (0200, processing code 200000) of ``amount_fen`` of ``original`` by its RRN."""
    return _undo(original, original_rrn, stan, "200000", amount_fen, when)


def _undo(
    original: Message, original_rrn: str, stan: str, code: str, amount_fen: int, when: dt.datetime | None
) -> Message:
    when = when or dt.datetime.now(dt.UTC)
    return {
        "t": "0200",
        "3": code,
        "4": f"{amount_fen:012d}",
        "7": when.strftime("%m%d%H%M%S"),
        "11": stan,
        "12": when.strftime("%H%M%S"),
        "13": when.strftime("%m%d"),
        "25": "00",
        "37": original_rrn,
        "41": original["41"],
        "42": original["42"],
        "49": "156",
    }
