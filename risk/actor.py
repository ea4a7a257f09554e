"""The risk actor: one shard of the counters (``risk.counters``), partitioned by the hash of each
subject, so every front end on the Ray cluster reads and adds to the same counts. Asked over its
link (``actors.link``) in batches, as the channel actors are.

A shard that starts (or that Ray restarts) first rebuilds its payments of the last day from the
journal, and only then opens its link: a front end never reads half a count. From then on the
front ends tell it of their journal's moves as they commit, and it follows the journal's log of
moves (``txn_move``) from the snapshot it rebuilt in, so the moves of every other process on the
journal (another site's resolver, reconciliation) count too, within ``FOLLOW_EVERY_S``. A move
read twice (told, and read from the log) counts once.

A day of payments is millions of objects, and the collector's full pass over them stops the shard
(1.3 s for a million payments, measured; far over the front ends' wait). So what the shard holds
is frozen out of the collector after the rebuild and every few seconds; the counters make no
reference cycles, and their payments are freed by reference counting as they leave the day.

Every payment waits for a shard's answer, and a shard works about 1% of the time: on a busy host
its answer waits for a CPU behind busier processes (1 in 100 came 8-44 ms late at 500/s on the
2-core machine), so its threads run at a higher priority (``[risk] cpu_nice``; measured: p99 under
0.1 ms). Linux keeps a priority per thread, so each is set, and again as Ray starts new ones."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import os
import time
from typing import NamedTuple

import asyncpg
import ray
from ray.actor import ActorHandle

from actors.link import LinkAddress, LinkServer
from actors.settings import LinkTls
from risk import messages
from risk.counters import Book, Counters, Entry, Subject
from risk.messages import Answer, Ask
from risk.rules import MAX_WINDOW_S
from switch.journal.orders import HTTP_TERMINAL

log = logging.getLogger("paysw.risk")
EXPIRE_EVERY_S = 60.0
FREEZE_EVERY_S = 5.0  # (a freeze is a list splice: its cost does not grow with what it freezes)

FOLLOW_EVERY_S = 0.5  # how soon a move another process made (a resolver of another site) counts

# The journal's approved purchases and refunds, with their subjects, at the time of their approval
# (their move to APPROVED: the row's updated_at moves again with a refund's reservation, say).
_PAYMENT = """
SELECT t.rrn, extract(epoch FROM m.moved_at)::float8 AS at, t.amount_fen, t.merchant_id, t.terminal_id,
       encode(t.pan_hash, 'hex') AS code, t.txn_type = 'refund' AS refund
FROM txn t JOIN txn_move m ON m.tx_date = t.tx_date AND m.rrn = t.rrn AND m.to_state = 'APPROVED'
WHERE t.txn_type IN ('purchase', 'refund') AND t.state = 'APPROVED'
"""
# (Field 7's date may be a day behind the approval, and the last day spans two dates.)
_FIRST_DAY = f"(now() - interval '{MAX_WINDOW_S} seconds')::date - 1"
_REBUILD_SQL = f"""{_PAYMENT}
  AND t.tx_date >= {_FIRST_DAY} AND m.tx_date >= {_FIRST_DAY}
  AND m.moved_at > now() - interval '{MAX_WINDOW_S} seconds'
ORDER BY m.moved_at
"""
_SNAPSHOT_SQL = "SELECT pg_snapshot_xmax(s), array(SELECT pg_snapshot_xip(s)) FROM pg_current_snapshot() s"
# The moves that change a count made by transactions a snapshot did not see (``Since``).
_MOVES_SQL = f"""
SELECT rrn, to_state = 'APPROVED' AS approved FROM txn_move
WHERE (xid >= $1::xid8 OR xid = ANY($2::xid8[]))
  AND to_state IN ('APPROVED', 'REVERSED', 'VOIDED', 'CANCELLED') AND tx_date >= {_FIRST_DAY}
ORDER BY xid, moved_at
"""
_PAYMENTS_SQL = f"{_PAYMENT} AND t.rrn = ANY($1::text[]) AND t.tx_date >= {_FIRST_DAY} AND m.tx_date >= {_FIRST_DAY}"


class Since(NamedTuple):
    """A snapshot of the journal, as the transactions it did not see: those from ``xmax`` on,
    and those under way (``xip``)."""

    xmax: int
    xip: list[int]


def shard_of(subject: Subject, shards: int) -> int:
    """The shard that counts ``subject`` (stable across processes and restarts)."""
    digest = hashlib.blake2b(f"{subject.per}:{subject.value}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def subjects_of(code: str, terminal: str, merchant: str, refund: bool = False) -> tuple[Subject, ...]:
    """What a payment counts under: a sale its code, terminal and merchant; a refund its merchant.
    A QR order has no code the switch saw (the customer's is the channel's), and an order over
    HTTP no terminal of its own (``HTTP`` stands for every merchant's): neither is a subject, or
    every such payment would count against all the others."""
    if refund:
        return (Subject("merchant", merchant),)
    return (
        *((Subject("code", code),) if code else ()),
        *((Subject("terminal", terminal),) if terminal != HTTP_TERMINAL else ()),
        Subject("merchant", merchant),
    )


def count(counters: Counters, row: asyncpg.Record, shard: int, shards: int) -> None:
    """An approved payment of the journal, under the subjects this shard holds."""
    mine = tuple(
        s for s in subjects_of(row["code"], row["terminal_id"], row["merchant_id"], row["refund"])
        if shard_of(s, shards) == shard
    )  # fmt: skip
    if mine:
        counters.add(mine, Entry(row["rrn"], row["at"], row["amount_fen"], row["merchant_id"], row["terminal_id"],
                                 row["refund"]))  # fmt: skip


async def rebuild(url: str, shard: int, shards: int) -> tuple[Counters, Since]:
    """The shard's counters from the journal: its subjects' approved payments of the last day;
    and the snapshot they were read in, for ``follow`` to go on from."""
    counters = Counters()
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            since = Since(*await conn.fetchrow(_SNAPSHOT_SQL))
            async for row in conn.cursor(_REBUILD_SQL, prefetch=10_000):
                count(counters, row, shard, shards)
    finally:
        await conn.close()
    return counters, since


async def follow_connection(url: str) -> asyncpg.Connection:
    """The connection ``follow`` reads on: every run of its moves' statement planned for the
    snapshot it is given. A generic plan (PostgreSQL's choice for a statement prepared and run
    five times) cannot see that ``xid >= $1`` asks for the last half second alone: on a day's
    partition without statistics it scanned every approval of the day, each half second (seen:
    27 index rows read per purchase after a minute of load, and growing with the day)."""
    return await asyncpg.connect(url, server_settings={"plan_cache_mode": "force_custom_plan"})


async def follow(conn: asyncpg.Connection, counters: Counters, since: Since, shard: int, shards: int) -> Since:
    """The moves committed since ``since`` that the front ends' tells did not bring (those of
    another process on the journal: another site's resolver, reconciliation), counted; the
    snapshot to go on from. ``conn`` from ``follow_connection``."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        # txn before txn_move, as a write and the making of days lock them (schema, migration 30):
        # read the other way round, a day being made between its two reads deadlocked with it.
        await conn.execute("LOCK TABLE ONLY txn IN ACCESS SHARE MODE")
        now = Since(*await conn.fetchrow(_SNAPSHOT_SQL))
        moves = await conn.fetch(_MOVES_SQL, since.xmax, since.xip)
        approved = [m["rrn"] for m in moves if m["approved"] and not counters.knows(m["rrn"], True)]
        rows = {r["rrn"]: r for r in await conn.fetch(_PAYMENTS_SQL, approved)} if approved else {}
    for move in moves:
        if not move["approved"]:
            counters.remove(move["rrn"])
        elif move["rrn"] in rows:
            count(counters, rows[move["rrn"]], shard, shards)
    return now


def prioritise(nice: int) -> bool:
    """Every thread of this process at CPU priority ``nice``; False if the kernel refuses."""
    for tid in os.listdir("/proc/self/task"):
        try:
            if os.getpriority(os.PRIO_PROCESS, int(tid)) != nice:
                os.setpriority(os.PRIO_PROCESS, int(tid), nice)
        except ProcessLookupError:  # the thread ended meanwhile
            continue
        except PermissionError:
            return False
    return True


@ray.remote(num_cpus=0, max_task_retries=0, max_concurrency=100)
class RiskActor:
    def __init__(
        self, shard: int, shards: int, database_url: str, link_tls: LinkTls | None = None, cpu_nice: int = 0
    ) -> None:
        logging.basicConfig(level=logging.WARNING, force=True)
        self._shard, self._shards, self._url = shard, shards, database_url
        self._nice = cpu_nice
        if not prioritise(cpu_nice):
            log.warning("risk shard runs at its usual CPU priority: raising it needs CAP_SYS_NICE",
                        extra={"shard": shard, "cpu_nice": cpu_nice})  # fmt: skip
            self._nice = None
        self._book: Book | None = None
        self._link = LinkServer(self._ask, link_tls, messages.ASKS)  # (by module: Ray pickles this class)
        self._rebuilt_s = 0.0
        self._ready = asyncio.Lock()

    def _ask(self, ask: Ask) -> Answer | None:
        assert self._book is not None
        return self._book.answer(ask)

    async def open_link(self) -> LinkAddress:
        """Where a front end connects; the counters are rebuilt from the journal first."""
        async with self._ready:
            if self._book is None:
                started = time.monotonic()
                counters, since = await rebuild(self._url, self._shard, self._shards)
                self._book = Book(counters)
                self._rebuilt_s = time.monotonic() - started
                log.warning(
                    "risk counters rebuilt from the journal",
                    extra={"shard": self._shard, "payments": len(self._book.counters), "seconds": self._rebuilt_s},
                )
                gc.freeze()
                asyncio.get_running_loop().create_task(self._upkeep())
                asyncio.get_running_loop().create_task(self._follow(since))
        return await self._link.open(ray.util.get_node_ip_address())

    async def _upkeep(self) -> None:
        """Payments older than a day forgotten every minute; what is held frozen every few seconds."""
        expired = time.monotonic()
        while True:
            await asyncio.sleep(FREEZE_EVERY_S)
            assert self._book is not None
            if time.monotonic() - expired >= EXPIRE_EVERY_S:
                self._book.counters.expire()
                expired = time.monotonic()
            gc.collect(1)  # dead cycles of the young generations freed, not frozen (bounded: cheap)
            gc.freeze()
            if self._nice is not None:
                prioritise(self._nice)  # threads Ray started since

    async def _follow(self, since: Since) -> None:
        assert self._book is not None
        conn: asyncpg.Connection | None = None
        while True:
            await asyncio.sleep(FOLLOW_EVERY_S)
            try:
                if conn is None or conn.is_closed():
                    conn = await follow_connection(self._url)
                since = await follow(conn, self._book.counters, since, self._shard, self._shards)
            except Exception as exc:  # the journal away: the same moves are read once it is back
                log.warning("risk shard cannot follow the journal", extra={"shard": self._shard, "error": repr(exc)})
                conn = None

    async def stats(self) -> dict[str, float | int]:
        held = self._book.counters.held() if self._book is not None else {"payments": 0}
        return {"shard": self._shard, **held, "rebuilt_s": self._rebuilt_s, "pid": os.getpid()}


def risk_actor(shard: int, shards: int, database_url: str, link_tls: LinkTls | None, cpu_nice: int = 0) -> ActorHandle:
    """Shard ``shard``'s risk actor: named, detached and restarted by Ray, like the channel actors."""
    return RiskActor.options(name=f"risk:{shard}", get_if_exists=True, max_restarts=-1, lifetime="detached").remote(
        shard, shards, database_url, link_tls, cpu_nice
    )
