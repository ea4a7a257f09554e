"""The resolver, on a real journal, with two channels: one whose calls hang and one that answers.
The answering channel's transactions are settled at once; the hung one holds only its own lane."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import msgspec

from bench.demo_config import DEMO_SWITCH_CONFIG
from protocols import response_codes as rc
from protocols.messages import ChannelResult, Outcome
from switch.config import load_config
from switch.journal import Event, Journal, NewTxn, Report
from switch.metrics import Metrics
from switch.resolver import Resolver
from tests.conftest import run


class StandInGateway:
    """Answers every call "paid" / "done" after ``delay`` seconds (the channel side of the test)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.calls = 0

    async def call(self, op, ref, deadline, auth_code="", on_late=None) -> ChannelResult:
        self.calls += 1
        await asyncio.sleep(self.delay)
        return ChannelResult(1, Outcome.APPROVED, rc.APPROVED, "OK", "", "CH1")


async def unknown_txn(journal: Journal, channel: str) -> str:
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
    assert await journal.record(Report(*txn.key, Event.UNSURE, rc.CHANNEL_UNAVAILABLE, "", "TIMEOUT", "", "", now))
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
