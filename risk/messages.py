"""What front ends and risk actors say on their links (``actors.link``), MessagePack-encoded."""

from __future__ import annotations

import msgspec


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


class Ask(msgspec.Struct, array_like=True, frozen=True):
    """``check`` a payment against counted rules (subjects of this shard only), or ``add`` an
    approved payment to its subjects' counts, or ``remove`` one (reversed, voided)."""

    key: int  # correlation id within the asking front end
    op: str  # CHECK, ADD or REMOVE
    subjects: list[tuple[str, str]]  # (per, value) of this shard
    rrn: str = ""
    amount_fen: int = 0
    merchant: str = ""
    terminal: str = ""
    checks: list[Check] = []


class Answer(msgspec.Struct, array_like=True, frozen=True):
    key: int
    fired: list[tuple[str, str]] = []  # (rule id, the code its decline answers)


CHECK, ADD, REMOVE = "check", "add", "remove"
ASKS = msgspec.msgpack.Decoder(list[Ask])
ANSWERS = msgspec.msgpack.Decoder(list[Answer])
