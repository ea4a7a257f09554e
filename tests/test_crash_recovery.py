"""``kill -9`` of the switch at random moments under steady traffic loses nothing: after a
restart, recovery settles every transaction, and the journal agrees with every channel's ledger
(nothing lost, nothing charged that the journal does not show APPROVED, nothing left open).
The test has a journal and simulators of its own, so every order the channels hold is one it sent
and must be in the journal. Its draws are seeded (``PAYSW_TEST_SEED`` replays a failed run's codes,
amounts and kill moments; not the scheduling). CI runs 3 kills; ``-m slow`` runs 10."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from bench.client import IsoClient
from bench.traffic import CODE_SHAPES, Stans, payment_code, purchase, reversal
from tests.conftest import SwitchProcess, fresh_database, run, simulators_running, with_own_simulators
from tests.support import MERCHANT, sim_ledger

TERMINALS = ("T0000002", "T0000003", "T0000004")
# Mostly approvals, with every outcome that leaves a transaction open for a while.
SUFFIXES = ["00"] * 12 + ["51", "05", "09", "08", "96", "98"]
OPEN = ("RECEIVED", "PENDING", "UNKNOWN")
REVERSAL_SHARE = 0.1


async def steady_traffic(
    port: int,
    answers: dict[str, str],
    reversed_rrns: set[str],
    maybe_reversed: set[str],
    stop: asyncio.Event,
    rng: random.Random,
) -> None:
    """Purchases on every channel from three terminals, 8 outstanding each, until ``stop`` or the
    connection dies with the switch."""
    stans = Stans(start=rng.randrange(1, 900_000))
    channels = list(CODE_SHAPES)

    async def terminal_loop(terminal: str) -> None:
        try:
            client = await IsoClient.connect("127.0.0.1", port)
        except OSError:
            return
        try:

            async def one() -> None:
                while not stop.is_set():
                    request = purchase(
                        terminal,
                        MERCHANT,
                        payment_code(rng.choice(channels), rng.choice(SUFFIXES), rng),
                        rng.randrange(1, 100_000),
                        stans.next(terminal),
                    )
                    answer = await client.request(request, timeout=30)
                    answers[answer["37"]] = answer["39"]
                    if rng.random() < REVERSAL_SHARE:  # the terminal gives up on some of them
                        maybe_reversed.add(answer["37"])  # sent: whether it was committed, a kill may hide
                        await client.request(reversal(request, stans.next(terminal)), timeout=30)
                        reversed_rrns.add(answer["37"])  # answered 00: committed, must be carried out

            await asyncio.gather(*(one() for _ in range(8)))
        except (ConnectionError, TimeoutError):
            pass  # the switch was killed under us: that is the test
        finally:
            await client.close()

    await asyncio.gather(*(terminal_loop(t) for t in TERMINALS))


async def kill_rounds(
    switch: SwitchProcess, kills: int, rng: random.Random
) -> tuple[dict[str, str], set[str], set[str]]:
    answers: dict[str, str] = {}
    reversed_rrns: set[str] = set()
    maybe_reversed: set[str] = set()
    for _ in range(kills):
        switch.start()
        stop = asyncio.Event()
        traffic = asyncio.create_task(steady_traffic(switch.port, answers, reversed_rrns, maybe_reversed, stop, rng))
        await asyncio.sleep(rng.uniform(1.0, 3.0))
        switch.kill()  # at a random moment, with transactions under way
        stop.set()
        await asyncio.wait_for(traffic, 40)
    return answers, reversed_rrns, maybe_reversed - reversed_rrns


async def settle_and_compare(
    database_url: str,
    simulators: dict[str, int],
    answers: dict[str, str],
    reversed_rrns: set[str],
    unanswered_reversals: set[str],
    replay: str,
) -> None:
    """The journal (the test's own: all of it) once recovery has settled it, against every order
    the test's simulators hold."""
    assert answers, f"no purchase was answered before the kills: the test sent no traffic ({replay})"
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + 90
        unsettled = (
            "SELECT count(*) FROM txn WHERE state = ANY($1) "
            "OR (state = 'APPROVED' AND reversal_requested_at IS NOT NULL)"
        )
        while await conn.fetchval(unsettled, list(OPEN)):
            assert time.monotonic() < deadline, f"transactions still open 90 s after the restart ({replay})"
            await asyncio.sleep(0.5)
        rows = await conn.fetch("SELECT rrn, channel, out_trade_no, state FROM txn")
    finally:
        await conn.close()
    journal = {(r["channel"], r["out_trade_no"]): r for r in rows}
    ledgers = {channel: sim_ledger(simulators, channel) for channel in CODE_SHAPES}
    charged = 0
    for channel, ledger in ledgers.items():
        for order, entry in ledger.items():
            row = journal.get((channel, order))
            assert row is not None, f"lost: {channel} order {order} ({entry['status']}) not in the journal ({replay})"
            kept = entry["status"] == "PAID"
            charged += kept
            assert kept == (row["state"] == "APPROVED"), (
                f"{channel} {order}: channel {entry}, journal {row['state']} ({replay})"
            )
    for (channel, order), row in journal.items():
        if row["state"] == "APPROVED":
            entry = ledgers.get(channel, {}).get(order)
            assert entry is not None, f"{channel} {order}: APPROVED in the journal, unknown to the channel ({replay})"
    by_rrn = {r["rrn"]: r["state"] for r in rows}
    for rrn, code in answers.items():
        if code == "00":
            if rrn in reversed_rrns:
                expected = {"REVERSED"}
            elif rrn in unanswered_reversals:
                expected = {"APPROVED", "REVERSED"}
            else:
                expected = {"APPROVED"}
            assert by_rrn.get(rrn) in expected, (
                f"told 00, expected {expected}, journal {by_rrn.get(rrn)} ({rrn}; {replay})"
            )
    states = {s: sum(1 for r in rows if r["state"] == s) for s in ("APPROVED", "DECLINED", "CANCELLED", "REVERSED")}
    orders = sum(len(ledger) for ledger in ledgers.values())
    print(
        f"\ncrash test: {len(rows)} transactions, {len(answers)} answered before the kills, {states}, "
        f"{orders} orders at the channels, all in the journal, {charged} kept, 0 open ({replay})"
    )


@pytest.fixture
def own_stack(config_dir, ports, database_url, tmp_path, request) -> Iterator[tuple[Path, str, dict[str, int]]]:
    """(switch configuration, journal, simulator ports), all of the test's own."""
    own = with_own_simulators(config_dir, ports, tmp_path)
    url = run(fresh_database(database_url, f"paysw_{request.node.name}"))
    with simulators_running(tmp_path / "simulators.toml", own, url) as channels:
        yield tmp_path / "switch.toml", url, channels


def crash_test(kills: int, stack: tuple[Path, str, dict[str, int]], seed: int, log: Path) -> None:
    config, database_url, simulators = stack
    rng = random.Random(seed)
    replay = f"replay with PAYSW_TEST_SEED={seed}"
    switch = SwitchProcess(config, database_url, log)

    async def scenario() -> None:
        answers, reversed_rrns, unanswered_reversals = await kill_rounds(switch, kills, rng)
        switch.start()  # the restart whose recovery settles what the kills left open
        try:
            await settle_and_compare(database_url, simulators, answers, reversed_rrns, unanswered_reversals, replay)
        finally:
            assert switch.stop() == 0

    run(scenario())


def test_kill_9_loses_nothing(own_stack, seed, tmp_path):
    crash_test(3, own_stack, seed, tmp_path / "crash.log")


@pytest.mark.slow
def test_kill_9_ten_times_loses_nothing(own_stack, seed, tmp_path):
    crash_test(10, own_stack, seed, tmp_path / "crash.log")
