"""What front ends and risk actors say on their links (``actors.link``), MessagePack-encoded."""

from __future__ import annotations

from typing import NamedTuple

import msgspec


class Subject(NamedTuple):
    """What a count is kept for: a code or card (by its fingerprint), a terminal or a merchant."""

    per: str  # code, terminal or merchant
    value: str


class Check(msgspec.Struct, array_like=True, frozen=True):
    """A counted rule, as the asking front end has it (rules reload there; the actors keep only
    the payments): over ``seconds``, the subject of kind ``per``."""

    rule_id: str
    per: str
    seconds: int
    max_fen: int | None = None  # cumulative
    max_count: int | None = None  # cumulative
    across: str = ""  # velocity: merchant or terminal
    max_distinct: int = 0  # velocity
    max_pct: int | None = None  # refund ratio: refunds over sales, per cent
    min_sales_fen: int = 0  # refund ratio: the sales it is taken of, at least


class Ask(msgspec.Struct, array_like=True, frozen=True):
    """``check`` a payment against counted rules (subjects of this shard only), or ``add`` an
    approved payment to its subjects' counts (``add_refund``: an approved refund, to its
    merchant's), or ``remove`` one (reversed, voided)."""

    key: int  # correlation id within the asking front end
    op: str  # CHECK, ADD or REMOVE
    subjects: list[Subject]  # of this shard
    rrn: str = ""
    amount_fen: int = 0
    merchant: str = ""
    terminal: str = ""
    # The counted rules to judge, MessagePack-encoded once per rule set and scope (``encode_checks``):
    # a shard reads the same few lists over and over, and decodes each once (``Book``).
    checks: msgspec.Raw = msgspec.Raw(b"\x90")


class Answer(msgspec.Struct, array_like=True, frozen=True):
    key: int
    fired: list[tuple[str, str]] = []  # (rule id, the code its decline answers)


CHECK, ADD, ADD_REFUND, REMOVE = "check", "add", "add_refund", "remove"
ASKS = msgspec.msgpack.Decoder(list[Ask])
ANSWERS = msgspec.msgpack.Decoder(list[Answer])
CHECKS = msgspec.msgpack.Decoder(list[Check])


def encode_checks(checks: list[Check]) -> msgspec.Raw:
    return msgspec.Raw(msgspec.msgpack.encode(checks))
