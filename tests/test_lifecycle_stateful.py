"""Random sequences of purchase, retransmission, conflicting retransmission, refund, void,
reversal and inquiry (with unknown channel outcomes mixed in) against the real switch, with
reconciliation batches and waits for the resolver interleaved. Every answer is checked against a
model of what the spec allows, and after every step the journal must show the money adding up: no
purchase refunded beyond its amount, every approved refund and void counted exactly once, no
acknowledged reversal left without a resolver to carry it out. Once the resolver has settled
everything, journal and channel agree on every purchase: the money is kept exactly where the
terminal was promised it."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from dataclasses import dataclass, field

import asyncpg
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from bench.client import IsoClient
from bench.traffic import CODE_SHAPES, refund, reversal, void
from protocols.statements import CST
from switch.journal.machine import DUE_SQL, KEPT, OPEN, sql_set
from switch.recon.batch import ReconBatch
from switch.recon.handling import Handler, Threshold
from tests.support import STANS, new_purchase, out_trade_no, sim_ledger

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
    simulators: dict[str, int]
    config_dir: object
    purchases = Bundle("purchases")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.client = self.loop.run_until_complete(IsoClient.connect(self.host, self.port))
        self.db = self.loop.run_until_complete(asyncpg.connect(self.database_url))
        pool = asyncpg.create_pool(self.database_url, min_size=1, max_size=4, loop=self.loop)
        self.pool = self.loop.run_until_complete(pool)
        self.known: list[Purchase] = []
        self.batches: list[int] = []

    def teardown(self) -> None:
        # The batches were this test's: the reconciliation tests make the same hours' batches afresh.
        self.loop.run_until_complete(self.db.execute("DELETE FROM recon_batch WHERE id = ANY($1)", self.batches))
        self.loop.run_until_complete(self.client.close())
        self.loop.run_until_complete(self.pool.close())
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
        expected = {"00": "00", "51": "51", "96": "91"}[outcome]
        if answer["39"] != expected:
            # A run of 96s (channel errors) may have opened the channel's circuit: the breaker at
            # work, the payment refused before the channel and journaled so; nothing else.
            sql = "SELECT channel_code FROM txn WHERE rrn = $1 AND terminal_id = $2"
            row = self.loop.run_until_complete(self.db.fetchrow(sql, answer["37"], request["41"]))
            assert (answer["39"], row and row["channel_code"]) == ("91", "CIRCUIT_OPEN"), (expected, answer)
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
            assert answer["39"] == "05"  # voided, or its reversal acknowledged (carried out in the background)
        elif p.answer["39"] == "91":
            assert answer["39"] in ("09", "05")  # unknown, then settled
        else:
            assert answer["39"] == "05"

    @rule(channel=st.sampled_from(CHANNELS))
    def reconcile(self, channel: str) -> None:
        """This hour's batch of the channel, run afresh, its differences handled automatically.
        For this test's purchases the journal and the statement may differ only while the
        resolver still owes an outcome (open, or a reversal to carry out), or by the statement's
        moment: cancelled or reversed after the statement was cut, which the channel, asked again,
        confirms (``agrees_now``)."""
        from tests.test_recon import CountingFetch, channel_worker

        now = dt.datetime.now(CST)

        async def batch() -> list[asyncpg.Record]:
            await self.pool.execute(
                "DELETE FROM recon_batch WHERE channel = $1 AND day = $2 AND hour = $3", channel, now.date(), now.hour
            )
            worker = channel_worker(self.config_dir, channel)
            try:
                run = ReconBatch(self.pool, channel, channel, now.date(), now.hour, CountingFetch(self.config_dir),
                                 Handler(self.pool, worker.call, Threshold(1000, 10**9)))  # fmt: skip
                assert await run.run() == "done"
                self.batches.append(run.id)
                return await self.pool.fetch(
                    "SELECT i.class, i.status, a.rule, i.out_trade_no, i.journal_state, "
                    "t.reversal_requested_at IS NOT NULL AS reversing "
                    "FROM recon_item i JOIN txn t ON t.rrn = i.rrn AND t.out_trade_no = i.out_trade_no "
                    "LEFT JOIN recon_action a ON a.item_id = i.id "
                    "WHERE i.batch_id = $1 AND i.entry = 'PAY' AND i.rrn = ANY($2)",
                    run.id,
                    [p.answer["37"] for p in self.known],
                )
            finally:
                await worker.close()

        for item in self.loop.run_until_complete(batch()):
            owed = item["journal_state"] in OPEN or (item["journal_state"] in KEPT and item["reversing"])
            moment = (item["status"], item["rule"]) == ("FIXED", "agrees_now") and item["journal_state"] not in KEPT
            assert item["class"] == "MATCHED" or (item["class"] == "STATUS" and (owed or moment)), dict(item)

    @rule()
    def resolver_settles_everything(self) -> None:
        """Wait for the resolver to owe nothing for this test's purchases; then every purchase's
        money is where the terminal was promised it, in the journal and at the channel."""
        rrns = [p.answer["37"] for p in self.known]
        deadline = time.monotonic() + 40
        while True:
            owed = self.loop.run_until_complete(
                self.db.fetchval(
                    f"SELECT count(*) FROM txn WHERE rrn = ANY($1) AND {DUE_SQL}",
                    rrns,
                )
            )
            if owed == 0:
                break
            assert time.monotonic() < deadline, f"the resolver still owes {owed} outcomes after 40 s"
            time.sleep(0.5)
        rows = {r["rrn"]: r for r in self.loop.run_until_complete(
            self.db.fetch("SELECT rrn, state, channel FROM txn WHERE rrn = ANY($1)", rrns))}  # fmt: skip
        ledgers = {channel: sim_ledger(self.simulators, channel) for channel in CHANNELS}
        for p in self.known:
            row = rows[p.answer["37"]]
            at_channel = ledgers[row["channel"]].get(out_trade_no(p.answer["37"]), {}).get("status")
            if p.approved and not (p.reversed or p.voided):
                assert (row["state"], at_channel) == ("APPROVED", "PAID"), p.answer["37"]
            elif p.reversed or p.voided:
                assert row["state"] in ("REVERSED", "VOIDED", "DECLINED", "CANCELLED"), (p.answer["37"], row["state"])
                assert at_channel != "PAID", (p.answer["37"], at_channel)  # the money went back
            kept = row["state"] == "APPROVED"
            assert kept == (at_channel == "PAID"), (p.answer["37"], row["state"], at_channel)

    @invariant()
    def no_reversal_is_forgotten(self) -> None:
        """An acknowledged reversal of a kept purchase always has the resolver coming (or a person)."""
        if not self.known:
            return
        forgotten = self.loop.run_until_complete(
            self.db.fetch(
                f"SELECT t.rrn FROM txn t WHERE t.rrn = ANY($1) AND t.state IN {sql_set(KEPT)} "
                "AND t.reversal_requested_at IS NOT NULL AND t.next_check_at IS NULL AND NOT EXISTS "
                "(SELECT 1 FROM dead_letter d WHERE d.rrn = t.rrn)",
                [p.answer["37"] for p in self.known],
            )
        )
        assert forgotten == [], [r["rrn"] for r in forgotten]

    @invariant()
    def money_adds_up(self) -> None:
        if not self.known:
            return
        rows = self.loop.run_until_complete(
            self.db.fetch(
                "SELECT rrn, amount_fen, reserved_fen, refunded_fen, state FROM txn WHERE rrn = ANY($1)",
                [p.answer["37"] for p in self.known],
            )
        )
        by_rrn = {r["rrn"]: r for r in rows}
        for p in self.known:
            row = by_rrn[p.answer["37"]]
            assert 0 <= row["reserved_fen"] + row["refunded_fen"] <= row["amount_fen"]
            assert row["reserved_fen"] == 0  # every void and refund was answered final: none under way
            expected = sum(p.refunds)  # a voided purchase has none: a void takes an untouched purchase whole
            assert row["refunded_fen"] == expected, f"{p.answer['37']}: journal {row['refunded_fen']}, model {expected}"
            if p.voided:
                assert row["state"] == "VOIDED"


def test_random_lifecycles_keep_the_invariants(switch, database_url, simulators, config_dir):
    LifecycleMachine.host, LifecycleMachine.port = switch.host, switch.port
    LifecycleMachine.database_url = database_url
    LifecycleMachine.simulators, LifecycleMachine.config_dir = simulators, config_dir
    run_state_machine_as_test(
        LifecycleMachine,
        settings=settings(
            max_examples=int(os.environ.get("PAYSW_STATEFUL_EXAMPLES", "6")),  # more for a longer hunt
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
