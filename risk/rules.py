"""The risk rules, as data: their schema, and their loading, which takes a rule set whole or not at
all, from the rules file or from the journal (the console's edits: ``switch.live``).

A rules file is TOML:

    [[rule]]
    id = "amount-cap"
    kind = "amount"          # one payment over max_fen
    max_fen = 5_000_000
    scope = { mcc = "5411" } # all (the default), or one channel, merchant, MCC or terminal
    action = "decline"       # decline (with the rule's code), review (approve, flag), alert (count only)
    mode = "enforce"         # or "shadow": evaluated, counted and journaled, never applied

Every rule has an ``id``, a ``kind`` (the fields it takes are its own), a ``scope``, an ``action``,
a ``mode`` and the ``code`` a decline answers (each kind has its default, from the wire contract:
``61`` over an amount limit, ``62`` a restricted code, card, terminal or merchant, ``57`` outside
trading hours). Every kind is judged on purchases, except ``refund_ratio``, judged on refunds.
"""

from __future__ import annotations

from datetime import time
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from protocols import response_codes as rc
from switch.toml_file import read_toml

RuleId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]{1,40}$")]
# What a decline may answer (the wire contract, docs/iso8583.md): never an approval or "in progress".
DeclineCode = Literal["05", "57", "59", "61", "62", "65"]
Clock = Annotated[str, Meta(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]
Action = Literal["decline", "review", "alert"]
Per = Literal["code", "terminal", "merchant"]
# A sliding window: seconds, minutes or hours, at most a day (what the counters keep).
Window = Annotated[str, Meta(pattern=r"^([1-9][0-9]*)(s|m|h|d)$")]
MAX_WINDOW_S = 86_400
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
Mode = Literal["enforce", "shadow"]


class RulesError(Exception):
    """A rules file that cannot be used, and why (its path, then the field at fault)."""


class Scope(Struct, forbid_unknown_fields=True, frozen=True):
    """Where a rule applies: every field given must match; none given, everywhere."""

    channel: str = ""
    merchant: str = ""
    mcc: str = ""
    terminal: str = ""


class _Rule(Struct, forbid_unknown_fields=True, frozen=True, kw_only=True, tag_field="kind"):
    id: RuleId
    scope: Scope = Scope()
    action: Action = "decline"
    mode: Mode = "enforce"
    code: DeclineCode | None = None  # the decline's answer; None: the kind's own

    default_code = rc.SUSPECTED_FRAUD


class AmountLimit(_Rule, tag="amount", kw_only=True):
    """One payment of more than ``max_fen``."""

    max_fen: Annotated[int, Meta(ge=0)]
    default_code = rc.EXCEEDS_AMOUNT_LIMIT


class Listed(_Rule, tag="list", kw_only=True):
    """A payment code or card (by its keyed fingerprint), terminal or merchant on the black or grey
    list (``paysw risk list``)."""

    colour: Literal["black", "grey"] = "black"
    of: Literal["code", "terminal", "merchant"]
    default_code = rc.RESTRICTED_CODE


class TradingHours(_Rule, tag="hours", kw_only=True):
    """A payment outside ``opens``..``closes`` (China Standard Time, the terminal's field 12 being
    its local time; ``closes`` before ``opens`` spans midnight)."""

    opens: Clock
    closes: Clock
    default_code = rc.NOT_PERMITTED


class NewMerchant(_Rule, tag="new_merchant", kw_only=True):
    """A payment of more than ``max_fen`` at a merchant in its first ``days`` days (from its
    ``onboarded`` date in the switch configuration; a merchant without one is not new)."""

    days: Annotated[int, Meta(ge=1, le=3650)]
    max_fen: Annotated[int, Meta(ge=0)]
    default_code = rc.EXCEEDS_AMOUNT_LIMIT


class Cumulative(_Rule, tag="cumulative", kw_only=True):
    """The approved payments of one code or card, terminal or merchant (``per``) over the last
    ``window``: this payment would take their amount past ``max_fen`` (answered ``61``) or their
    count past ``max_count`` (``65``)."""

    per: Per
    window: Window
    max_fen: Annotated[int, Meta(ge=0)] | None = None
    max_count: Annotated[int, Meta(ge=0)] | None = None
    default_code = rc.EXCEEDS_AMOUNT_LIMIT


class Velocity(_Rule, tag="velocity", kw_only=True):
    """One code or card used at more than ``max_distinct`` merchants (or terminals: ``across``)
    within ``window``, this payment's included."""

    per: Literal["code"] = "code"
    across: Literal["merchant", "terminal"] = "merchant"
    window: Window
    max_distinct: Annotated[int, Meta(ge=1)]
    default_code = rc.EXCEEDS_FREQUENCY_LIMIT


class RefundRatio(_Rule, tag="refund_ratio", kw_only=True):
    """A refund that would take the merchant's refunds over the last ``window`` past ``max_pct``
    per cent of its sales over the same window (its approved purchases, less those reversed or
    voided), or of ``min_sales_fen`` if it sold less: a merchant with hardly any sales may still
    refund a little. Judged on refunds only."""

    per: Literal["merchant"] = "merchant"
    window: Window = "1d"
    max_pct: Annotated[int, Meta(ge=0, le=10_000)]
    min_sales_fen: Annotated[int, Meta(ge=0)] = 0
    default_code = rc.EXCEEDS_AMOUNT_LIMIT


Rule = AmountLimit | Listed | TradingHours | NewMerchant | Cumulative | Velocity | RefundRatio
COUNTED = (Cumulative, Velocity, RefundRatio)  # rules that read the counters (risk.counters), not the payment alone
ON_REFUNDS = (RefundRatio,)  # rules judged on refunds; every other kind is judged on purchases


class RuleSet(Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    # When the counters cannot answer in time: "open" lets the payment through as if no counted
    # rule fired, "closed" declines it (91). Either way it is counted (paysw_risk_unreachable_total).
    fail: Literal["open", "closed"] = "open"
    rule: list[Rule] = []

    @property
    def rules(self) -> list[Rule]:
        return self.rule


class RiskSection(Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """``[risk]`` of the switch configuration."""

    rules: str = ""  # the rules file, relative to the configuration's folder; empty: no rules
    shards: Annotated[int, Meta(ge=1, le=64)] = 1  # risk actors holding the counters, by subject hash
    counters_timeout_ms: Annotated[int, Meta(ge=1, le=5_000)] = 250  # then the rule set's fail policy
    # The risk actors' CPU priority (nice, every thread): an answer every payment waits for must not
    # wait for a CPU behind busier processes. Lowering it needs CAP_SYS_NICE; without, a warning.
    cpu_nice: Annotated[int, Meta(ge=-20, le=19)] = -10


def code_of(rule: Rule) -> str:
    return rule.code or rule.default_code


def window_s(window: str) -> int:
    return int(window[:-1]) * _UNIT_S[window[-1]]


def code_for(rule: Cumulative, over_count: bool) -> str:
    """A cumulative rule answers 65 when its count is what went over (unless it names its code)."""
    return rule.code or (rc.EXCEEDS_FREQUENCY_LIMIT if over_count else rc.EXCEEDS_AMOUNT_LIMIT)


def minutes(clock: str) -> int:
    hours, mins = clock.split(":")
    return int(hours) * 60 + int(mins)


def load_rules(path: str | Path, channels: set[str], merchants: set[str], terminals: set[str]) -> RuleSet:
    """The rules of ``path``, checked whole against the switch's channels, merchants and terminals
    (a scope naming none of them is a mistake, not a rule that never fires). Raises ``RulesError``."""
    return _checked(read_rules(path), str(path), channels, merchants, terminals)


def read_rules(path: str | Path) -> RuleSet:
    """The rules file read against the schema alone (``RulesError``); ``load_rules`` checks more."""
    return read_toml(Path(path), RuleSet, RulesError)


def rules_from(body: Any, source: str, channels: set[str], merchants: set[str], terminals: set[str]) -> RuleSet:
    """The rules of ``body`` (JSON values, as the journal keeps them: ``switch.live``), checked as
    ``load_rules`` checks a file's; ``RulesError`` naming ``source``."""
    try:
        rules = msgspec.convert(body, RuleSet)
    except msgspec.ValidationError as exc:
        raise RulesError(f"{source}: {exc}") from None
    return _checked(rules, source, channels, merchants, terminals)


def _checked(rules: RuleSet, source: str, channels: set[str], merchants: set[str], terminals: set[str]) -> RuleSet:
    problems = []
    seen: set[str] = set()
    for i, rule in enumerate(rules.rules):
        where = f"$.rule[{i}]"
        if rule.id in seen:
            problems.append(f"{where}.id: {rule.id!r} is used twice")
        seen.add(rule.id)
        for field, known in (("channel", channels), ("merchant", merchants), ("terminal", terminals)):
            value = getattr(rule.scope, field)
            if value and value not in known:
                problems.append(f"{where}.scope.{field}: {value!r} is not in the switch configuration")
        if isinstance(rule, TradingHours) and rule.opens == rule.closes:
            problems.append(f"{where}: opens and closes are the same time")
        if isinstance(rule, COUNTED) and window_s(rule.window) > MAX_WINDOW_S:
            problems.append(f"{where}.window: {rule.window} is longer than the counters keep (1d)")
        if isinstance(rule, Cumulative) and rule.max_fen is None and rule.max_count is None:
            problems.append(f"{where}: give max_fen, max_count or both")
    if problems:
        raise RulesError(f"{source}: " + "; ".join(problems))
    return rules


def is_open(rule: TradingHours, local: time) -> bool:
    opens, closes = minutes(rule.opens), minutes(rule.closes)
    now = local.hour * 60 + local.minute
    return opens <= now < closes if opens < closes else (now >= opens or now < closes)
