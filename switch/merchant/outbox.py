"""Notifications to merchants, from the outbox the journal fills (``notice_outbox``: one per final
state of a purchase or refund of a merchant with a URL, written in the transaction of the move,
so none is lost and none made twice). Each is a JSON body signed with the merchant's key
(``switch.merchant.signing``), delivered once the merchant answers ``SUCCESS``, else tried again
on the schedule (WeChat Pay's by default) and, past its end, left dead for ``paysw notify``.

Every merchant endpoint has its own limit of notifications in flight and its own timeout, and at
most ``BACKLOG`` times that many claimed: a merchant with a full backlog is not even claimed, so a
slow or dead URL delays no other merchant's. Rows
are leased (``FOR UPDATE SKIP LOCKED``), so several front ends share the outbox, and a front end
that stops leaves its rows to the others once their lease lapses: a restart resumes the
schedule where it was."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import NamedTuple
from urllib.parse import urlsplit

import asyncpg
import msgspec

from actors.http import HttpPool, NoAnswer, NotSent, PoolBusy
from switch.merchant.settings import MerchantApiSection
from switch.merchant.signing import signing_input
from switch.metrics import Metrics

log = logging.getLogger("paysw.outbox")
Sign = Callable[[bytes], str]
SIGN_TYPE = "HMAC-SHA256"
POLL_S = 0.2
CLAIM_BATCH = 100
BACKLOG = 4  # a merchant's notifications claimed at most: this many times its limit in flight
POOL_SIZE = 2
IDLE_POOL_S = 600.0


class Due(NamedTuple):
    """A notification due, with what its body says."""

    rrn: str
    state: str
    merchant_id: str
    url: str
    attempts: int
    order_no: str | None
    original_rrn: str | None
    txn_type: str
    amount_fen: int
    channel: str
    channel_txn_id: str | None
    terminal_id: str
    response_code: str | None
    refund_no: str | None
    moved_at: float  # epoch seconds of the move (the outbox row is written in its transaction)
    found: bool  # False: the transaction is no longer in the journal (its partition dropped)


# Rows of a transaction the journal no longer has are claimed too (and given up on), so that they
# never stay at the head of the queue.
_CLAIM_SQL = """
WITH due AS (
    SELECT rrn, state, tx_date FROM notice_outbox
    WHERE delivered_at IS NULL AND dead_at IS NULL AND next_at <= now() AND merchant_id <> ALL($3::text[])
    ORDER BY next_at LIMIT $1 FOR UPDATE SKIP LOCKED
), facts AS (
    SELECT due.rrn, due.state, mo.order_no, t.original_rrn, t.txn_type, t.amount_fen, t.channel, t.channel_txn_id,
           t.terminal_id, t.response_code, mr.refund_no, t.rrn IS NOT NULL AS found
    FROM due LEFT JOIN txn t ON t.rrn = due.rrn AND t.tx_date = due.tx_date
    LEFT JOIN merchant_order mo ON mo.rrn = coalesce(t.original_rrn, t.rrn)
    LEFT JOIN merchant_refund mr ON mr.rrn = t.rrn
)
UPDATE notice_outbox o SET next_at = now() + make_interval(secs => $2)
FROM facts f WHERE (o.rrn, o.state) = (f.rrn, f.state)
RETURNING o.rrn, o.state, o.merchant_id, o.url, o.attempts, f.order_no, f.original_rrn, f.txn_type,
          coalesce(f.amount_fen, 0), coalesce(f.channel, ''), f.channel_txn_id, coalesce(f.terminal_id, ''),
          f.response_code, f.refund_no, extract(epoch FROM o.created_at)::float8, f.found
"""

_DELIVERED_SQL = (
    "UPDATE notice_outbox o SET delivered_at = now(), attempts = o.attempts + 1, last_error = NULL "
    "FROM unnest($1::text[], $2::text[]) AS u(rrn, state) WHERE (o.rrn, o.state) = (u.rrn, u.state)"
)


def body_of(due: Due, sign: Sign, nonce: str, now_ms: int) -> bytes:
    """The notification's signed JSON body. ``notify_id`` names it (one per transaction and final
    state): a merchant that sees it twice has seen the same notification; of two about one
    transaction (APPROVED, then VOIDED), the later ``moved_at`` is its state."""
    params: dict[str, object] = {
        "notify_id": f"{due.rrn}-{due.state}",
        "merchant_id": due.merchant_id,
        "order_no": due.order_no or "",
        "rrn": due.rrn,
        "original_rrn": due.original_rrn or "",
        "txn_type": due.txn_type,
        "state": due.state,
        "amount_fen": due.amount_fen,
        "channel": due.channel,
        "channel_txn_id": due.channel_txn_id or "",
        "terminal_id": due.terminal_id,
        "response_code": due.response_code or "",
        "refund_no": due.refund_no or "",
        "moved_at": int(due.moved_at * 1000),
        "timestamp": now_ms,
        "nonce": nonce,
        "sign_type": SIGN_TYPE,
    }
    params["sign"] = sign(signing_input(params))
    return msgspec.json.encode(params)


class Outbox:
    """Delivery of the outbox, on a pool of its own (``POOL_SIZE``): never a connection the
    payments' lookups wait for."""

    def __init__(self, url: str, section: MerchantApiSection, signers: dict[str, Sign], metrics: Metrics) -> None:
        self._url = url
        self._pool: asyncpg.Pool
        self._section = section
        self._schedule: Sequence[float] = section.notify_schedule_s
        self._signers = signers  # merchant id -> its key's HMAC-SHA256
        self._metrics = metrics
        self._under_way: Counter[str] = Counter()  # merchant id -> notifications claimed, not done
        self._pools: dict[tuple[str, str, str], HttpPool] = {}  # (merchant id, scheme, host:port) -> its pool
        self._used: dict[tuple[str, str, str], float] = {}  # when each pool was last used (monotonic)
        self._freed = asyncio.Event()
        self._batch: list[tuple[str, str]] = []  # delivered, to be marked so
        self._next: asyncio.Future[None] | None = None  # done once the batch is marked
        self._marking = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._pool = await asyncpg.create_pool(self._url, min_size=1, max_size=POOL_SIZE, command_timeout=30)
        self._loop_task = asyncio.get_running_loop().create_task(self._run(), name="outbox")

    async def stop(self) -> None:
        tasks = [t for t in (self._loop_task, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for pool in self._pools.values():
            pool.close()
        await self._pool.close()

    async def _run(self) -> None:
        lease_s = self._section.notify_timeout_s * BACKLOG + 10  # the last of a full backlog, past its wait
        while True:
            self._freed.clear()
            try:
                busy = [m for m, n in self._under_way.items() if n >= self._section.notify_concurrency * BACKLOG]
                rows = await self._pool.fetch(_CLAIM_SQL, CLAIM_BATCH, lease_s, busy)
                for row in rows:
                    due = Due(*row)
                    self._under_way[due.merchant_id] += 1
                    task = asyncio.get_running_loop().create_task(self._deliver(due))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                if len(rows) == CLAIM_BATCH:
                    await asyncio.sleep(0)
                    continue
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("claiming notifications failed; trying again shortly")
            self._forget_idle_pools()
            # New rows are looked for every POLL_S, and as soon as a merchant has room again.
            # (asyncio.timeout, not wait_for: on Python 3.11, wait_for returns when its event is
            # set in the same turn as the task is cancelled, and the cancellation is lost. stop()
            # cancels the deliveries, which set it as they end: this loop went on for ever.)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_S):
                    await self._freed.wait()

    async def _delivered(self, due: Due) -> None:
        """Mark ``due`` delivered, with the others delivered meanwhile: one statement at a time,
        each for all that came while the one before ran (as the journal's group commit)."""
        self._batch.append((due.rrn, due.state))
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        marked = self._next
        if not self._marking:
            self._marking = True
            asyncio.get_running_loop().create_task(self._mark_delivered())
        await asyncio.shield(marked)

    async def _mark_delivered(self) -> None:
        try:
            while self._batch:
                batch, done = self._batch, self._next
                self._batch, self._next = [], None
                assert done is not None
                try:
                    await self._pool.execute(_DELIVERED_SQL, [rrn for rrn, _ in batch], [state for _, state in batch])
                    done.set_result(None)
                except Exception as exc:  # their leases lapse: sent again (a merchant dedupes by notify_id)
                    done.set_exception(exc)
        finally:
            self._marking = False

    async def _deliver(self, due: Due) -> None:
        try:
            await self._settle(due, await self._post(due))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("delivering a notification failed; its lease lapses and it is tried again")
        finally:
            self._under_way[due.merchant_id] -= 1
            if not self._under_way[due.merchant_id]:
                del self._under_way[due.merchant_id]
            self._freed.set()

    def _forget_idle_pools(self) -> None:
        """Pools of hosts not posted to for ``IDLE_POOL_S``: an order may name a URL of its own."""
        cutoff = time.monotonic() - IDLE_POOL_S
        for key in [k for k, used in self._used.items() if used < cutoff]:
            del self._used[key]
            pool = self._pools.pop(key, None)
            if pool is not None:
                pool.close()

    async def _post(self, due: Due) -> str:
        """ "" once the merchant answered ``SUCCESS``; else what went wrong. On the merchant's own
        pool (``actors.http``: keep-alive connections, as many as its limit in flight)."""
        sign = self._signers.get(due.merchant_id)
        if sign is None:
            return "the merchant has no key to sign with"
        if not due.found:
            return "the transaction is no longer in the journal"
        url = urlsplit(due.url)
        self._used[(due.merchant_id, url.scheme, url.netloc)] = time.monotonic()
        pool = self._pools.get((due.merchant_id, url.scheme, url.netloc))
        if pool is None:
            try:
                pool = HttpPool(f"{url.scheme}://{url.netloc}", self._section.notify_concurrency)
            except ValueError:  # (not said how: the URL may hold a password) an attempt, to its end
                return "the notification URL is no endpoint (http[s]://host[:port]/path)"
            self._pools[(due.merchant_id, url.scheme, url.netloc)] = pool
        body = body_of(due, sign, secrets.token_hex(16), int(time.time() * 1000))
        timeout = self._section.notify_timeout_s
        path = url.path + (f"?{url.query}" if url.query else "")
        try:
            slot = await pool.acquire(timeout * BACKLOG)  # behind the merchant's others
            try:
                answer = await slot.post(path or "/", body, {"Content-Type": "application/json"}, timeout)
            finally:
                slot.release()
        except (PoolBusy, NotSent, NoAnswer, ValueError) as exc:
            return f"{type(exc).__name__}: {exc}"[:200]
        text = answer.body[:64].decode("utf-8", "replace").strip()
        if answer.status == 200 and text == "SUCCESS":
            return ""
        return f"HTTP {answer.status}: {text[:60]!r}"

    async def _settle(self, due: Due, error: str) -> None:
        if not error:
            await self._delivered(due)
            self._metrics.merchant_notices.labels("delivered").inc()
            return
        attempts = due.attempts + 1
        if attempts > len(self._schedule) or not due.found:
            await self._pool.execute(
                "UPDATE notice_outbox SET dead_at = now(), attempts = $3, last_error = $4 "
                "WHERE rrn = $1 AND state = $2 AND delivered_at IS NULL",
                due.rrn, due.state, attempts, error,
            )  # fmt: skip
            self._metrics.merchant_notices.labels("dead").inc()
            log.error(
                "notification to a merchant given up after its whole schedule: `paysw notify resend` sends it again",
                extra={"merchant": due.merchant_id, "rrn": due.rrn, "state": due.state, "error": error},
            )
            return
        await self._pool.execute(
            "UPDATE notice_outbox SET next_at = now() + make_interval(secs => $3), attempts = $4, last_error = $5 "
            "WHERE rrn = $1 AND state = $2 AND delivered_at IS NULL AND dead_at IS NULL",
            due.rrn, due.state, self._schedule[attempts - 1], attempts, error,
        )  # fmt: skip
        self._metrics.merchant_notices.labels("failed").inc()


class Listed(NamedTuple):
    """A notification as ``paysw notify list`` shows it."""

    rrn: str
    state: str
    merchant_id: str
    url: str
    attempts: int
    created_at: dt.datetime
    next_at: dt.datetime
    delivered_at: dt.datetime | None
    dead_at: dt.datetime | None
    last_error: str | None


async def listing(pool: asyncpg.Pool, dead_only: bool, merchant_id: str, limit: int) -> list[Listed]:
    """The newest notifications (or the dead ones), of one merchant or all."""
    rows = await pool.fetch(
        f"SELECT {', '.join(Listed._fields)} FROM notice_outbox "
        "WHERE ($1::bool IS false OR dead_at IS NOT NULL) AND ($2 = '' OR merchant_id = $2) "
        "ORDER BY created_at DESC LIMIT $3",
        dead_only, merchant_id, limit,
    )  # fmt: skip
    return [Listed(*row) for row in rows]


async def resend(pool: asyncpg.Pool, rrn: str, merchant_id: str) -> int:
    """Give dead notifications (the one of ``rrn``, or all of a merchant, or all) a new schedule,
    from now: how many."""
    done = await pool.execute(
        "UPDATE notice_outbox SET dead_at = NULL, attempts = 0, next_at = now(), last_error = NULL "
        "WHERE dead_at IS NOT NULL AND ($1 = '' OR rrn = $1) AND ($2 = '' OR merchant_id = $2)",
        rrn, merchant_id,
    )  # fmt: skip
    return int(done.split()[-1])
