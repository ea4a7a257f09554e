"""Helpers shared by the end-to-end tests: purchases, a connected client, the journal and the
simulators' views of a transaction."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator

import asyncpg
import psutil

from bench.client import IsoClient
from bench.traffic import CODE_SHAPES, Stans, payment_code, purchase, reversal

MERCHANT = "898310048990001"
# Orders the reconciliation tests pay at a channel directly, never through the switch (LONG on purpose).
CHANNEL_ONLY_PREFIX = "LONG"
TERMINAL = "T0000001"
RNG = random.Random()
STANS = Stans(start=RNG.randrange(1, 900_000))
SENT_PANS: list[str] = []


def new_purchase(
    channel: str, suffix: str = "00", terminal: str = TERMINAL, merchant: str = MERCHANT, amount: int = 1234
) -> dict[str, str]:
    pan = payment_code(channel, suffix, RNG)
    SENT_PANS.append(pan)
    return purchase(terminal, merchant, pan, amount, STANS.next(terminal))


@contextlib.asynccontextmanager
async def connected(switch, source: str | None = None):
    """A terminal connection to ``switch`` (from the local address ``source``, another peer)."""
    client = await IsoClient.connect(switch.host, switch.port, source)
    try:
        yield client
    finally:
        await client.close()


async def journal_row(database_url: str, rrn: str) -> asyncpg.Record | None:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchrow("SELECT * FROM txn WHERE rrn = $1", rrn)
    finally:
        await conn.close()


async def waits_for_a_lock(watcher: asyncpg.Connection, pid: int) -> None:
    """Return once PostgreSQL's backend ``pid`` waits for a lock (seen from ``watcher``)."""
    for _ in range(250):
        if await watcher.fetchval("SELECT count(*) FROM pg_locks WHERE pid = $1 AND NOT granted", pid):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"backend {pid} never waited for a lock")


def sim_audit(simulators: dict[str, int], channel: str, out_trade_no: str) -> list[dict]:
    with urllib.request.urlopen(f"http://127.0.0.1:{simulators[channel]}/_sim/audit", timeout=5) as response:
        return [a for a in json.load(response) if a["out_trade_no"] == out_trade_no]


async def received_ago(database_url: str, rrn: str, ago: dt.timedelta) -> None:
    """The purchase ``rrn`` as though received ``ago`` earlier (the journal's guards forbid the
    change: the test steps around them to age a row)."""
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute("UPDATE txn SET received_at = received_at - $2::interval WHERE rrn = $1", rrn, ago)
    finally:
        await conn.close()


def sim_ledger(simulators: dict[str, int], channel: str) -> dict[str, dict]:
    with urllib.request.urlopen(f"http://127.0.0.1:{simulators[channel]}/_sim/ledger", timeout=5) as response:
        return json.load(response)


def sim_stats(simulators: dict[str, int], channel: str) -> dict[str, int]:
    """What the channel's simulator saw, counted by operation and verdict."""
    with urllib.request.urlopen(f"http://127.0.0.1:{simulators[channel]}/_sim/stats", timeout=5) as response:
        return json.load(response)


@contextlib.contextmanager
def reading_nothing(ports, channel: str) -> Iterator[None]:
    """Meanwhile the channel's simulator refuses every request unread (``paysw sim fault --unread``)."""
    from bench.simulators.control import set_fault
    from bench.simulators.faults import NO_FAULT, Fault

    control = f"127.0.0.1:{ports.controls[channel]}"
    set_fault(control, Fault(unread=True))
    try:
        yield
    finally:
        set_fault(control, NO_FAULT)


async def row_after_refusals(
    database_url: str, simulators: dict[str, int], channel: str, rrn: str, refusals: int = 2
) -> asyncpg.Record:
    """``rrn``'s journal row once the channel has refused ``refusals`` more requests unread, or
    once the row has left UNKNOWN (a refusal taken for an answer)."""
    seen = sim_stats(simulators, channel).get("fault:unread", 0)
    for _ in range(60):
        row = await journal_row(database_url, rrn)
        if row["state"] != "UNKNOWN" or sim_stats(simulators, channel).get("fault:unread", 0) >= seen + refusals:
            break
        await asyncio.sleep(0.25)
    return row


async def wait_for_state(database_url: str, rrn: str, states: set[str], timeout: float = 20.0) -> asyncpg.Record:
    """The journal row once its state is one of ``states`` (the resolver works in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        row = await journal_row(database_url, rrn)
        if row is not None and row["state"] in states:
            return row
        if time.monotonic() > deadline:
            raise AssertionError(f"rrn {rrn}: state {row['state'] if row else None}, expected one of {states}")
        await asyncio.sleep(0.2)


def clear_of_the_hour(margin_s: float = 60.0) -> None:
    """Wait, if the hour ends within ``margin_s``, until the next has begun. A test that pays, then
    reconciles or settles "this hour" (or today), reads the clock twice: both reads must fall in
    one hour, as the channel's statement is cut by hour (Beijing time, whole hours from UTC's)."""
    left = 3600.0 - time.time() % 3600.0
    if left < margin_s:
        time.sleep(left + 0.5)


def out_trade_no(rrn: str) -> str:
    return f"{dt.datetime.now(dt.UTC):%Y%m%d}{rrn}"


# The steady traffic of the end-to-end tests that kill parts of the switch under load (kill -9 of
# the switch, a Ray node lost, a site lost), and the comparison of the journal with every
# channel's ledger once the switch has settled what they left open.
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
        f"\njournal against the ledgers: {len(rows)} transactions, {len(answers)} answered to the test, {states}, "
        f"{orders} orders at the channels, all in the journal, {charged} kept, 0 open ({replay})"
    )


@contextlib.contextmanager
def stalled_backends() -> Iterator[Callable[[int], None]]:
    """``stall(pid)``: a PostgreSQL backend of this machine stopped (SIGSTOP), as a server stalled
    or out of reach answers nothing; checked to be one first (a server elsewhere numbers its pids
    in another machine's or namespace's count). Every one stopped is let go (SIGCONT) on leaving."""
    stopped: list[int] = []

    def stall(pid: int) -> None:
        title = " ".join(psutil.Process(pid).cmdline())
        assert title.startswith("postgres: "), (pid, title)  # that backend, no other process
        os.kill(pid, signal.SIGSTOP)
        stopped.append(pid)

    try:
        yield stall
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):  # ended meanwhile
                os.kill(pid, signal.SIGCONT)
