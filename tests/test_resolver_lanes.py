"""The resolver, on a real journal, with two channels: one whose calls hang and one that answers.
The answering channel's transactions are settled at once; the hung one holds only its own lane."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator

import msgspec

from bench.demo_config import DEMO_SWITCH_CONFIG
from protocols import response_codes as rc
from protocols.messages import ChannelResult, Outcome
from switch.config import load_config
from switch.journal import Event, Journal, NewTxn, Report, TxnKey, hand_to_resolver, retry_dead_letter
from switch.metrics import Metrics
from switch.resolver import Resolver
from tests.conftest import run


class StandInGateway:
    """Answers every call "paid" / "done" after ``delay`` seconds, or once ``until`` is set (the
    channel side of the test)."""

    def __init__(self, delay: float, until: asyncio.Event | None = None) -> None:
        self.delay = delay
        self.until = until
        self.calls = 0
        self.ops: list[str] = []

    async def call(self, op, ref, deadline, auth_code="", on_late=None) -> ChannelResult:
        self.calls += 1
        self.ops.append(op)
        await (self.until.wait() if self.until else asyncio.sleep(self.delay))
        return ChannelResult(1, Outcome.APPROVED, rc.APPROVED, "OK", "", "CH1")


async def unknown_txn(journal: Journal, channel: str, paying: bool = False) -> str:
    """A purchase whose outcome is not known (or, ``paying``, that its customer is paying: the
    terminal was told 09)."""
    now = dt.datetime.now(dt.UTC)
    rrn = await journal.next_rrn()
    txn = NewTxn(
        now.date(),
        f"L{uuid.uuid4().hex[:7].upper()}",
        "000001",
        now.strftime("%m%d%H%M%S"),
        rrn,
        "purchase",
        "0200",
        "000000",
        "898310048990001",
        100,
        "156",
        "120000",
        "1123",
        "031",
        "134567********6700",
        b"h",
        channel,
        f"{now:%Y%m%d}{rrn}",
        b"r",
        now,
        now,
    )
    assert await journal.write_ahead(txn)
    told = (Event.PAYING, rc.IN_PROGRESS, "USERPAYING") if paying else (Event.UNSURE, rc.CHANNEL_UNAVAILABLE, "TIMEOUT")
    assert await journal.record(Report(*txn.key, *told[:2], "", told[2], "", "", now))
    return rrn


def test_a_hung_channel_holds_only_its_own_lane(database_url):
    async def scenario():
        channel = load_config(DEMO_SWITCH_CONFIG).channels["wechat"]
        fast = msgspec.structs.replace(channel, cancel_after_ms=0)
        journal = await Journal.open(database_url, pool_size=6, max_batch=64)
        hung, fine = StandInGateway(delay=30), StandInGateway(delay=0.01)
        names = {"hung": f"lane-hung-{uuid.uuid4().hex[:6]}", "fine": f"lane-fine-{uuid.uuid4().hex[:6]}"}
        resolver = Resolver(
            journal,
            {names["hung"]: hung, names["fine"]: fine},
            {names["hung"]: fast, names["fine"]: fast},
            {},
            Metrics(),
            poll_s=0.1,
        )
        try:
            hung_rrns = [await unknown_txn(journal, names["hung"]) for _ in range(30)]
            resolver.start()
            while hung.calls < 16:  # the hung channel's calls are under way
                await asyncio.sleep(0.05)
            fine_rrns = [await unknown_txn(journal, names["fine"]) for _ in range(30)]  # due after them
            for _ in range(50):
                states = {
                    r["rrn"]: r["state"]
                    for r in await journal.pool.fetch(
                        "SELECT rrn, state FROM txn WHERE rrn = ANY($1)", hung_rrns + fine_rrns
                    )
                }
                if all(states[r] == "CANCELLED" for r in fine_rrns):
                    break
                await asyncio.sleep(0.1)
            assert all(states[r] == "CANCELLED" for r in fine_rrns), "the answering channel waited for the hung one"
            assert all(states[r] == "UNKNOWN" for r in hung_rrns)
            assert hung.calls == 16  # one lane's width under way, the rest waiting, none twice
        finally:
            await resolver.stop()
            await journal.close()

    run(scenario())


async def settled(journal: Journal, rrn: str) -> str:
    """The transaction's state once it is no longer UNKNOWN or PENDING (or after 10 s)."""
    for _ in range(200):
        state = await journal.pool.fetchval("SELECT state FROM txn WHERE rrn = $1", rrn)
        if state not in ("UNKNOWN", "PENDING"):
            return state
        await asyncio.sleep(0.05)
    return state


class Stage:
    """A journal and a channel of a test's own (the demo's WeChat Pay, cancelling as soon as asked),
    and the resolvers the test makes on them: stopped, and the journal closed, at the end."""

    def __init__(self, journal: Journal, name: str) -> None:
        self.journal = journal
        self.name = name
        self.channel = msgspec.structs.replace(load_config(DEMO_SWITCH_CONFIG).channels["wechat"], cancel_after_ms=0)
        self.resolvers: list[Resolver] = []

    def resolver(self, gateway: StandInGateway, metrics: Metrics | None = None, **timing: float) -> Resolver:
        metrics = metrics or Metrics()
        made = Resolver(self.journal, {self.name: gateway}, {self.name: self.channel}, {}, metrics, **timing)
        self.resolvers.append(made)
        return made


@contextlib.asynccontextmanager
async def stage(database_url: str, prefix: str) -> AsyncIterator[Stage]:
    journal = await Journal.open(database_url, pool_size=4, max_batch=64)
    staged = Stage(journal, f"{prefix}-{uuid.uuid4().hex[:6]}")
    try:
        yield staged
    finally:
        for resolver in staged.resolvers:
            await resolver.stop()
        await journal.close()


def test_a_reversal_asked_for_while_a_resolver_works_lets_no_other_resolver_in(database_url):
    """A resolver is querying a transaction when something hands it to the resolver (a reversal,
    a notification): due now, but leased. Another resolver takes nothing; the first finds it paid
    and cancels it (the terminal was told 91), once."""

    async def scenario():
        async with stage(database_url, "busy") as on:
            working, idle = StandInGateway(delay=1.0), StandInGateway(delay=0.01)
            first, other = on.resolver(working, poll_s=0.1), on.resolver(idle, poll_s=0.1)
            rrn = await unknown_txn(on.journal, on.name)
            first.start()
            while not working.ops:  # claimed, its query under way
                await asyncio.sleep(0.02)
            key = TxnKey(*await on.journal.pool.fetchrow(
                "SELECT tx_date, terminal_id, stan, transmitted FROM txn WHERE rrn = $1", rrn
            ))  # fmt: skip
            async with on.journal.pool.acquire() as conn:
                assert await hand_to_resolver(conn, key)
            other.start()
            assert await settled(on.journal, rrn) == "CANCELLED"
            assert (working.ops, idle.ops) == (["query", "cancel"], [])

    run(scenario())


def test_a_resolver_stuck_past_its_lease_sends_no_cancel(database_url):
    """A lane stuck past its lease (its query answers only once the other has cancelled; the
    lease is 1 s): another resolver takes the transaction meanwhile, finds it paid and cancels it
    (the terminal was told 91). The first, back with its own "paid", sends no second cancel: its
    claim is no longer the transaction's, whatever the journal says now is the other's to act on."""

    async def scenario():
        async with stage(database_url, "lapse") as on:
            answered = asyncio.Event()
            slow, quick = StandInGateway(delay=0, until=answered), StandInGateway(delay=0.01)
            metrics = Metrics()
            stuck = on.resolver(slow, metrics, poll_s=60, lease_s=1, call_timeout_s=0.5)
            other = on.resolver(quick, poll_s=0.1)
            rrn = await unknown_txn(on.journal, on.name)
            stuck.start()
            while not slow.ops:  # claimed (once: its next claim is a minute away), its query under way
                await asyncio.sleep(0.02)
            other.start()
            assert await settled(on.journal, rrn) == "CANCELLED"
            answered.set()

            def lost() -> float | None:
                return metrics.registry.get_sample_value("paysw_resolver_leases_lost_total", {"channel": on.name})

            for _ in range(100):  # the stuck lane's query answers, and its lane ends
                if lost():
                    break
                await asyncio.sleep(0.05)
            assert (slow.ops, quick.ops, lost()) == (["query"], ["query", "cancel"], 1)

    run(scenario())


def test_a_transaction_that_waited_past_its_lease_for_a_lane_here_is_that_lanes(database_url):
    """Seventeen transactions of one channel, whose calls hang until released: sixteen lanes take
    the first sixteen; the last waits for one past its lease, and this resolver claims it again
    meanwhile. The lane that finally takes it works on the newer claim: it is settled, and no
    lease counts as lost to another resolver."""

    async def scenario():
        async with stage(database_url, "wait") as on:
            released = asyncio.Event()
            gateway = StandInGateway(delay=0, until=released)
            metrics = Metrics()
            resolver = on.resolver(gateway, metrics, poll_s=0.1, lease_s=0.5)
            rrns = [await unknown_txn(on.journal, on.name) for _ in range(17)]
            resolver.start()
            while gateway.calls < 16:  # every lane busy
                await asyncio.sleep(0.02)
            checks = "SELECT checks FROM txn WHERE rrn = $1"
            last = await on.journal.pool.fetchval(checks, rrns[-1])
            for _ in range(100):  # claimed again here while it waits
                if await on.journal.pool.fetchval(checks, rrns[-1]) > last:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the waiting transaction was never claimed again")
            released.set()
            assert [await settled(on.journal, rrn) for rrn in rrns] == ["CANCELLED"] * 17
            assert metrics.registry.get_sample_value("paysw_resolver_leases_lost_total", {"channel": on.name}) is None

    run(scenario())


def test_a_transaction_waiting_for_a_lane_is_worked_as_it_is_when_its_turn_comes(database_url):
    """Seventeen transactions on sixteen lanes, whose calls hang until released; the terminal
    reverses the last, whose customer was paying, while it waits for a lane. The lane that takes
    it works from the journal as it is then: its one query finds the purchase paid, and it
    reverses it, never recording it approved on the way."""

    async def scenario():
        async with stage(database_url, "fresh") as on:
            released = asyncio.Event()
            gateway = StandInGateway(delay=0, until=released)
            resolver = on.resolver(gateway, poll_s=0.1)
            rrns = [await unknown_txn(on.journal, on.name) for _ in range(16)]
            rrns.append(await unknown_txn(on.journal, on.name, paying=True))
            # The sixteen rewritten (unchanged), after the last in the table's heap, as a busy
            # journal's rows come: the claim still hands them lanes the most overdue first.
            await on.journal.pool.execute("UPDATE txn SET checks = checks WHERE rrn = ANY($1)", rrns[:16])
            resolver.start()
            while gateway.calls < 16:  # every lane busy, the last transaction claimed and waiting
                await asyncio.sleep(0.02)
            row = await on.journal.pool.fetchrow(
                "SELECT tx_date, terminal_id, stan, transmitted, amount_fen, checks FROM txn WHERE rrn = $1", rrns[-1]
            )
            assert row["checks"] == 1  # claimed with the others, before its reversal
            key = TxnKey(*list(row.values())[:4])
            reversal = await on.journal.next_rrn()
            await on.journal.request_reversal(key, "000002", key.transmitted, row["amount_fen"], reversal)
            released.set()
            assert [await settled(on.journal, rrn) for rrn in rrns] == ["CANCELLED"] * 16 + ["REVERSED"]
            moves = "SELECT to_state FROM txn_move WHERE rrn = $1 ORDER BY moved_at"
            assert [m["to_state"] for m in await on.journal.pool.fetch(moves, rrns[-1])] == [
                "RECEIVED", "PENDING", "REVERSED",
            ]  # fmt: skip
            assert gateway.ops.count("query") == 17  # asked about once: its first look saw the reversal

    run(scenario())


def test_a_stopping_resolver_lets_go_at_once_of_what_made_no_call(database_url):
    """Seventeen transactions on sixteen lanes, whose calls hang: stopped, the resolver lets go of
    the one waiting for a lane (it made no call), and another resolver settles it at once; the
    sixteen whose calls may still be under way keep their leases until they lapse."""

    async def scenario():
        async with stage(database_url, "stop") as on:
            hung = StandInGateway(delay=3600)
            stopping = on.resolver(hung, poll_s=0.1)
            rrns = [await unknown_txn(on.journal, on.name) for _ in range(17)]
            stopping.start()
            while hung.calls < 16:
                await asyncio.sleep(0.02)
            await stopping.stop()
            leased = "SELECT rrn FROM txn WHERE rrn = ANY($1) AND leased_until > now()"
            assert {r["rrn"] for r in await on.journal.pool.fetch(leased, rrns)} == set(rrns[:16])
            on.resolver(StandInGateway(delay=0.01), poll_s=0.1).start()
            assert await settled(on.journal, rrns[-1]) == "CANCELLED"
            assert hung.calls == 16

    run(scenario())


def test_a_stopping_resolver_lets_its_lanes_end_until_told(database_url):
    """Stopped while its lanes' calls are under way, with time to spare (more than a call may
    take): they end, their transactions are settled, and nothing is left leased."""

    async def scenario():
        async with stage(database_url, "drain") as on:
            gateway = StandInGateway(delay=0.5)
            resolver = on.resolver(gateway, poll_s=0.1, call_timeout_s=2)
            rrns = [await unknown_txn(on.journal, on.name) for _ in range(4)]
            resolver.start()
            while gateway.calls < 4:
                await asyncio.sleep(0.02)
            await resolver.stop(until=asyncio.get_running_loop().time() + 10)
            rows = await on.journal.pool.fetch("SELECT state, leased_until FROM txn WHERE rrn = ANY($1)", rrns)
            assert [(r["state"], r["leased_until"]) for r in rows] == [("CANCELLED", None)] * 4

    run(scenario())


def test_a_stopping_resolver_starts_no_call_it_could_not_see_through(database_url):
    """Stopped while a lane's query is under way, with less time left than a call may take: the
    query ends, and the lane sends no cancel it might have to abandon; it lets the transaction go,
    due at once, unleased, and another resolver cancels it."""

    async def scenario():
        async with stage(database_url, "late") as on:
            gateway = StandInGateway(delay=0.5)
            resolver = on.resolver(gateway, poll_s=0.1)
            rrn = await unknown_txn(on.journal, on.name)
            resolver.start()
            while not gateway.calls:
                await asyncio.sleep(0.02)
            await resolver.stop(until=asyncio.get_running_loop().time() + 5)  # a call may take 15 s
            row = await on.journal.pool.fetchrow(
                "SELECT state, leased_until, next_check_at <= now() AS due FROM txn WHERE rrn = $1", rrn
            )
            assert (gateway.ops, row["state"], row["leased_until"], row["due"]) == (["query"], "UNKNOWN", None, True)
            other = StandInGateway(delay=0.01)
            on.resolver(other, poll_s=0.1).start()
            assert await settled(on.journal, rrn) == "CANCELLED"
            assert other.ops == ["query", "cancel"]

    run(scenario())


def test_a_transaction_a_person_hands_back_is_tried_afresh(database_url):
    """A transaction past the resolver's tries goes to the dead letters; handed back by a person,
    its tries count from then: it is queried and cancelled, and its letter says what was done."""

    async def scenario():
        async with stage(database_url, "retry") as on:
            gateway = StandInGateway(delay=0.01)
            rrn = await unknown_txn(on.journal, on.name)
            await on.journal.pool.execute("UPDATE txn SET checks = 250 WHERE rrn = $1", rrn)
            on.resolver(gateway, poll_s=0.1).start()
            letter = "SELECT reason, resolved_at, resolution FROM dead_letter WHERE rrn = $1"
            for _ in range(100):
                if await on.journal.pool.fetchrow(letter, rrn):
                    break
                await asyncio.sleep(0.05)
            given_up = await on.journal.pool.fetchrow(letter, rrn)
            assert given_up["reason"].startswith("unresolved after 251 tries") and gateway.ops == []
            async with on.journal.pool.acquire() as conn, conn.transaction():
                assert await retry_dead_letter(conn, rrn, "handed back: the channel's outage is over")
            assert await settled(on.journal, rrn) == "CANCELLED"
            assert gateway.ops == ["query", "cancel"]
            done = await on.journal.pool.fetchrow(letter, rrn)
            assert done["resolved_at"] and done["resolution"] == "handed back: the channel's outage is over"
            async with on.journal.pool.acquire() as conn, conn.transaction():  # final now: nothing to hand back
                assert not await retry_dead_letter(conn, rrn, "again")

    run(scenario())
