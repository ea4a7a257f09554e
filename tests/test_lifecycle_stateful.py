"""Random sequences of purchase, retransmission, conflicting retransmission, refund, void,
reversal and inquiry (with unknown channel outcomes mixed in) against the real switch. Every
answer is checked against a model of what the spec allows, and after every step the journal must
show the money adding up: no purchase refunded beyond its amount, every approved refund and void
counted exactly once."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field

import asyncpg
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from bench.client import IsoClient
from bench.traffic import CODE_SHAPES, refund, reversal, void
from tests.support import STANS, new_purchase

CHANNELS = list(CODE_SHAPES)


@dataclass
class Purchase:
    request: dict[str, str]
    answer: dict[str, str]
    refunds: list[int] = field(default_factory=list)
    voided: bool = False
    reversed: bool = False

    @property
    def approved(self) -> bool:
        return self.answer["39"] == "00"

    @property
    def amount(self) -> int:
        return int(self.request["4"])

    def stan(self) -> str:
        return STANS.next(self.request["41"])


class LifecycleMachine(RuleBasedStateMachine):
    host: str
    port: int
    database_url: str
    purchases = Bundle("purchases")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.client = self.loop.run_until_complete(IsoClient.connect(self.host, self.port))
        self.db = self.loop.run_until_complete(asyncpg.connect(self.database_url))
        self.known: list[Purchase] = []

    def teardown(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.run_until_complete(self.db.close())
        self.loop.close()

    def ask(self, message: dict[str, str]) -> dict[str, str]:
        return self.loop.run_until_complete(self.client.request(message))

    @rule(
        target=purchases,
        channel=st.sampled_from(CHANNELS),
        outcome=st.sampled_from(["00", "00", "51", "96"]),
        amount=st.integers(min_value=1, max_value=5000),
    )
    def purchase(self, channel: str, outcome: str, amount: int) -> Purchase:
        request = new_purchase(channel, outcome, amount=amount)
        answer = self.ask(request)
        assert answer["39"] == {"00": "00", "51": "51", "96": "91"}[outcome]
        bought = Purchase(request, answer)
        self.known.append(bought)
        return bought

    @rule(p=purchases)
    def retransmit(self, p: Purchase) -> None:
        again = self.ask(dict(p.request))
        assert {k: again.get(k) for k in ("37", "38", "39")} == {k: p.answer.get(k) for k in ("37", "38", "39")} or (
            p.answer["39"] == "91" and again["39"] in ("09", "91", "05")  # an unknown one may have been settled
        )

    @rule(p=purchases)
    def conflicting_retransmission(self, p: Purchase) -> None:
        assert self.ask(p.request | {"4": f"{p.amount + 1:012d}"})["39"] == "94"

    @rule(p=purchases, share=st.sampled_from([0.25, 0.5, 1.0]))
    def refund_some(self, p: Purchase, share: float) -> None:
        amount = max(1, int(p.amount * share))
        answer = self.ask(refund(p.request, p.answer["37"], amount, p.stan()))
        if not p.approved or p.voided or p.reversed:
            assert answer["39"] == "12"
        elif sum(p.refunds) + amount > p.amount:
            assert answer["39"] == "64"
        else:
            assert answer["39"] == "00"
            p.refunds.append(amount)

    @rule(p=purchases)
    def void_it(self, p: Purchase) -> None:
        answer = self.ask(void(p.request, p.answer["37"], p.stan()))
        if p.approved and not (p.voided or p.reversed or p.refunds):
            assert answer["39"] == "00"
            p.voided = True
        else:
            assert answer["39"] == "12"

    @rule(p=purchases)
    def reverse_it(self, p: Purchase) -> None:
        answer = self.ask(reversal(p.request, p.stan()))
        if p.refunds and not p.voided:
            assert answer["39"] == "12"  # partly refunded: a reversal would return that part twice
        else:
            assert answer["39"] == "00"
            p.reversed = p.reversed or not p.voided

    @rule(p=purchases)
    def inquire(self, p: Purchase) -> None:
        import datetime as dt

        now = dt.datetime.now(dt.UTC)
        answer = self.ask(
            {
                "t": "0100",
                "3": "300000",
                "7": now.strftime("%m%d%H%M%S"),
                "11": p.stan(),
                "12": now.strftime("%H%M%S"),
                "13": now.strftime("%m%d"),
                "37": p.answer["37"],
                "41": p.request["41"],
                "42": p.request["42"],
            }
        )
        if p.approved and not (p.voided or p.reversed):
            assert answer["39"] == "00"
        elif p.approved:
            assert answer["39"] in ("00", "05")  # a reversal is carried out in the background
        elif p.answer["39"] == "91":
            assert answer["39"] in ("09", "05")  # unknown, then settled
        else:
            assert answer["39"] == "05"

    @invariant()
    def money_adds_up(self) -> None:
        if not self.known:
            return
        rows = self.loop.run_until_complete(
            self.db.fetch(
                "SELECT rrn, amount_fen, refunded_fen, state FROM txn WHERE rrn = ANY($1)",
                [p.answer["37"] for p in self.known],
            )
        )
        by_rrn = {r["rrn"]: r for r in rows}
        for p in self.known:
            row = by_rrn[p.answer["37"]]
            assert 0 <= row["refunded_fen"] <= row["amount_fen"]
            expected = p.amount if p.voided else sum(p.refunds)
            assert row["refunded_fen"] == expected, f"{p.answer['37']}: journal {row['refunded_fen']}, model {expected}"
            if p.voided:
                assert row["state"] == "VOIDED"


def test_random_lifecycles_keep_the_invariants(switch, database_url):
    LifecycleMachine.host, LifecycleMachine.port = switch.host, switch.port
    LifecycleMachine.database_url = database_url
    run_state_machine_as_test(
        LifecycleMachine,
        settings=settings(
            max_examples=int(os.environ.get("PAYSW_STATEFUL_EXAMPLES", "6")),  # more for a longer hunt
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
