"""Helpers shared by the end-to-end tests: purchases, a connected client, the journal and the
simulators' views of a transaction."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import random
import time
import urllib.request

import asyncpg

from bench.client import IsoClient
from bench.traffic import Stans, payment_code, purchase

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
async def connected(switch):
    client = await IsoClient.connect(switch.host, switch.port)
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


def sim_audit(simulators: dict[str, int], channel: str, out_trade_no: str) -> list[dict]:
    with urllib.request.urlopen(f"http://127.0.0.1:{simulators[channel]}/_sim/audit", timeout=5) as response:
        return [a for a in json.load(response) if a["out_trade_no"] == out_trade_no]


def sim_ledger(simulators: dict[str, int], channel: str) -> dict[str, dict]:
    with urllib.request.urlopen(f"http://127.0.0.1:{simulators[channel]}/_sim/ledger", timeout=5) as response:
        return json.load(response)


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


def out_trade_no(rrn: str) -> str:
    return f"{dt.datetime.now(dt.UTC):%Y%m%d}{rrn}"
