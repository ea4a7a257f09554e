"""The risk decision before a payment goes to its channel: every rule in scope is evaluated, each
hit is kept (so that a decline is explained, and shadow rules are seen), and the first enforced
``decline`` decides the answer.

Rules are grouped by scope once, when loaded, so a payment reads only the rules that can apply to
it; evaluation reads nothing but the payment's facts and the lists in memory."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import NamedTuple

import msgspec

from risk.lists import Lists
from risk.messages import Check, encode_checks
from risk.rules import (
    COUNTED,
    ON_REFUNDS,
    AmountLimit,
    Cumulative,
    Listed,
    NewMerchant,
    RefundRatio,
    Rule,
    RuleSet,
    TradingHours,
    Velocity,
    code_of,
    is_open,
    window_s,
)


class Facts(NamedTuple):
    """What a rule may look at in a payment."""

    channel: str
    merchant: str
    mcc: str
    terminal: str
    amount_fen: int
    code_fingerprint: str  # hex of the keyed fingerprint of the payment code or card (never the clear one)
    local_time: dt.time  # the terminal's field 12
    merchant_since: dt.date | None  # the merchant's onboarding date, if configured
    today: dt.date
    refund: bool = False  # a refund (judged by the refund rules), or a purchase (by the others)


class Hit(NamedTuple):
    rule_id: str
    action: str
    mode: str
    code: str  # what a decline of this rule answers


@dataclass(frozen=True, slots=True)
class Decision:
    hits: tuple[Hit, ...] = ()

    @property
    def decline(self) -> Hit | None:
        """The enforced decline that decides the answer, if any."""
        return next((h for h in self.hits if h.mode == "enforce" and h.action == "decline"), None)


NO_HITS = Decision()


class Scope(NamedTuple):
    """The rules that apply to payments of one (channel, merchant, MCC, terminal)."""

    alone: list[Rule]  # those that read the payment alone
    counted: dict[str, Cumulative | Velocity | RefundRatio]  # by id: those the risk actors judge
    pers: frozenset[str]  # the subjects those count (code, terminal, merchant)
    checks: msgspec.Raw  # ``counted`` as the risk actors read them, encoded once


SCOPES_KEPT = 100_000  # (channel, merchant, MCC, terminal) whose rules are remembered


class Engine:
    """A rule set, ready to decide."""

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        self._everywhere: list[Rule] = []
        self._by: dict[tuple[str, str], list[Rule]] = {}
        self._checks = {rule.id: _check_of(rule) for rule in rules.rules if isinstance(rule, COUNTED)}
        self._scopes: dict[tuple[str, str, str, str, bool], Scope] = {}  # the rules of each scope seen
        for rule in rules.rules:
            given = [(f, v) for f, v in _scope_fields(rule) if v]
            if not given:
                self._everywhere.append(rule)
            else:  # filed under its first field; the others are checked when it is read
                self._by.setdefault(given[0], []).append(rule)

    def __len__(self) -> int:
        return len(self.rules.rules)

    def decide(self, facts: Facts, lists: Lists, scope: Scope | None = None) -> Decision:
        """The rules that read the payment alone (the counted ones are the risk actors')."""
        hits = [
            Hit(rule.id, rule.action, rule.mode, code_of(rule))
            for rule in (scope or self.scope(facts)).alone
            if _fires(rule, facts, lists)
        ]
        return Decision(tuple(hits)) if hits else NO_HITS

    def scope(self, facts: Facts) -> Scope:
        """The rules in the payment's scope (remembered per scope)."""
        key = (facts.channel, facts.merchant, facts.mcc, facts.terminal, facts.refund)
        found = self._scopes.get(key)
        if found is None:
            if len(self._scopes) > SCOPES_KEPT:
                self._scopes.clear()
            rules = self._match(facts)
            counted = {rule.id: rule for rule in rules if isinstance(rule, COUNTED)}
            found = self._scopes[key] = Scope(
                [rule for rule in rules if not isinstance(rule, COUNTED)],
                counted,
                frozenset(rule.per for rule in counted.values()),
                encode_checks([self._checks[rule_id] for rule_id in counted]),
            )
        return found

    def _match(self, facts: Facts) -> list[Rule]:
        rules = list(self._everywhere)
        for key in (("channel", facts.channel), ("merchant", facts.merchant), ("mcc", facts.mcc),
                    ("terminal", facts.terminal)):  # fmt: skip
            for rule in self._by.get(key, ()):
                if all(not v or v == getattr(facts, f) for f, v in _scope_fields(rule)):
                    rules.append(rule)
        return [rule for rule in rules if isinstance(rule, ON_REFUNDS) == facts.refund]


def _check_of(rule: Cumulative | Velocity | RefundRatio) -> Check:
    seconds = window_s(rule.window)
    if isinstance(rule, RefundRatio):
        return Check(rule.id, rule.per, seconds, max_pct=rule.max_pct, min_sales_fen=rule.min_sales_fen)
    if isinstance(rule, Velocity):
        return Check(rule.id, rule.per, seconds, across=rule.across, max_distinct=rule.max_distinct)
    return Check(rule.id, rule.per, seconds, max_fen=rule.max_fen, max_count=rule.max_count)


def _scope_fields(rule: Rule) -> tuple[tuple[str, str], ...]:
    s = rule.scope
    return (("channel", s.channel), ("merchant", s.merchant), ("mcc", s.mcc), ("terminal", s.terminal))


def _fires(rule: Rule, facts: Facts, lists: Lists) -> bool:
    if isinstance(rule, AmountLimit):
        return facts.amount_fen > rule.max_fen
    if isinstance(rule, Listed):
        value = {"code": facts.code_fingerprint, "terminal": facts.terminal, "merchant": facts.merchant}[rule.of]
        return lists.holds(rule.colour, rule.of, value)
    if isinstance(rule, TradingHours):
        return not is_open(rule, facts.local_time)
    if isinstance(rule, NewMerchant):
        since = facts.merchant_since
        return since is not None and (facts.today - since).days < rule.days and facts.amount_fen > rule.max_fen
    raise AssertionError(f"a rule of no known kind: {rule!r}")
