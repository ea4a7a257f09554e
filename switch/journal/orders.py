"""Merchants' orders over HTTP in the journal (migration 18): an order is a purchase row like a
terminal's, under the pseudo-terminal ``HTTP`` with its RRN for a STAN, named by the merchant's
own order number in ``merchant_order``; and the channels' notifications, kept whether or not they
matched an order. States still move only through ``Journal.record``."""

from __future__ import annotations

import datetime as dt
from typing import NamedTuple

import asyncpg

from switch.journal.machine import PURCHASE
from switch.journal.store import TxnKey

HTTP_TERMINAL = "HTTP"  # the terminal id of every order made over the merchant API


class Order(NamedTuple):
    """A merchant's order and its transaction, as the merchant API shows it."""

    merchant_id: str
    order_no: str
    scene: str
    subject: str
    notify_url: str | None
    qr_code: str | None
    tx_date: dt.date
    terminal_id: str
    stan: str
    transmitted: str
    rrn: str
    state: str
    amount_fen: int
    channel: str
    out_trade_no: str
    response_code: str | None
    channel_code: str | None
    channel_txn_id: str | None
    received_at: dt.datetime
    expires_at: dt.datetime | None
    refunded_fen: int
    reserved_fen: int

    @property
    def key(self) -> TxnKey:
        return TxnKey(self.tx_date, self.terminal_id, self.stan, self.transmitted)


_ORDER_COLUMNS = ", ".join(
    f"mo.{c}" if c in ("merchant_id", "order_no", "scene", "subject", "notify_url", "qr_code") else f"t.{c}"
    for c in Order._fields
)
_FIND_ORDER_SQL = (
    f"SELECT {_ORDER_COLUMNS} FROM merchant_order mo JOIN txn t ON t.rrn = mo.rrn AND t.tx_date = mo.tx_date "
    "WHERE mo.merchant_id = $1 AND mo.order_no = $2"
)


class Reserved(NamedTuple):
    """An order or refund number taken: the key its row is written under, and what it was for."""

    rrn: str
    tx_date: dt.date
    transmitted: str
    what: str  # an order's scene and subject, a refund's order number: a retry must say the same


async def reserve_order(
    pool: asyncpg.Pool, merchant_id: str, order_no: str, scene: str, subject: str, notify_url: str,
    rrn: str, tx_date: dt.date, transmitted: str,
) -> Reserved:  # fmt: skip
    """Take the merchant's order number for an order its steps write ahead (``rrn``, ``tx_date``,
    ``transmitted``), or the reservation made before under it (a retry runs again under the same
    key: the journal's write-ahead and duplicate check make that one transaction)."""
    row = await pool.fetchrow(
        "WITH taken AS (INSERT INTO merchant_order "
        "(merchant_id, order_no, tx_date, rrn, transmitted, scene, subject, notify_url) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, nullif($8, '')) ON CONFLICT DO NOTHING "
        "RETURNING rrn, tx_date, transmitted, scene || ' ' || subject) "
        "SELECT * FROM taken UNION ALL SELECT rrn, tx_date, transmitted, scene || ' ' || subject FROM merchant_order "
        "WHERE merchant_id = $1 AND order_no = $2 LIMIT 1",
        merchant_id, order_no, tx_date, rrn, transmitted, scene, subject, notify_url,
    )  # fmt: skip
    if row is None:  # taken this instant by another request, committed after this one's snapshot
        return await reserve_order(pool, merchant_id, order_no, scene, subject, notify_url, rrn, tx_date, transmitted)
    return Reserved(*row)


async def reserve_refund(
    pool: asyncpg.Pool, merchant_id: str, refund_no: str, order_no: str, rrn: str, tx_date: dt.date,
    transmitted: str,
) -> Reserved:  # fmt: skip
    """The same for a refund number of the merchant's."""
    row = await pool.fetchrow(
        "WITH taken AS (INSERT INTO merchant_refund (merchant_id, refund_no, order_no, tx_date, rrn, transmitted) "
        "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING rrn, tx_date, transmitted, order_no) "
        "SELECT * FROM taken UNION ALL SELECT rrn, tx_date, transmitted, order_no FROM merchant_refund "
        "WHERE merchant_id = $1 AND refund_no = $2 LIMIT 1",
        merchant_id, refund_no, order_no, tx_date, rrn, transmitted,
    )  # fmt: skip
    if row is None:  # as for an order
        return await reserve_refund(pool, merchant_id, refund_no, order_no, rrn, tx_date, transmitted)
    return Reserved(*row)


class Refund(NamedTuple):
    """A merchant's refund and its transaction."""

    refund_no: str
    order_no: str
    rrn: str
    state: str | None  # None: taken, not written (its front end stopped first: ask again)
    amount_fen: int | None
    response_code: str | None


async def find_refund(pool: asyncpg.Pool, merchant_id: str, refund_no: str) -> Refund | None:
    row = await pool.fetchrow(
        "SELECT mr.refund_no, mr.order_no, mr.rrn, t.state, t.amount_fen, t.response_code FROM merchant_refund mr "
        "LEFT JOIN txn t ON t.rrn = mr.rrn AND t.tx_date = mr.tx_date WHERE mr.merchant_id = $1 AND mr.refund_no = $2",
        merchant_id, refund_no,
    )  # fmt: skip
    return Refund(*row) if row else None


async def find_order(pool: asyncpg.Pool, merchant_id: str, order_no: str) -> Order | None:
    row = await pool.fetchrow(_FIND_ORDER_SQL, merchant_id, order_no)
    return Order(*row) if row else None


async def keep_qr_code(pool: asyncpg.Pool, rrn: str, qr_code: str) -> None:
    """The code the customer scans, kept with the order whose transaction is ``rrn``."""
    await pool.execute("UPDATE merchant_order SET qr_code = $2 WHERE rrn = $1", rrn, qr_code)


class Paid(NamedTuple):
    """The purchase a channel's notification names."""

    tx_date: dt.date
    terminal_id: str
    stan: str
    transmitted: str
    rrn: str
    amount_fen: int
    state: str
    qr: bool  # a QR order (``expires_at`` set): its payment is kept whatever its merchant was told

    @property
    def key(self) -> TxnKey:
        return TxnKey(self.tx_date, self.terminal_id, self.stan, self.transmitted)


async def payment_named(pool: asyncpg.Pool, channel: str, out_trade_no: str) -> Paid | None:
    """The purchase of ``channel`` with this order number at the channel, if the journal has it."""
    row = await pool.fetchrow(
        f"SELECT {', '.join(Paid._fields[:-1])}, expires_at IS NOT NULL FROM txn "
        f"WHERE out_trade_no = $1 AND channel = $2 AND txn_type = '{PURCHASE}' ORDER BY tx_date DESC LIMIT 1",
        out_trade_no,
        channel,
    )
    return Paid(*row) if row else None


async def keep_notice(
    pool: asyncpg.Pool, channel: str, out_trade_no: str, amount_fen: int, paid: bool, channel_txn_id: str, outcome: str
) -> None:
    """A channel's notification as received, and what became of it (``recorded``, ``unchanged``,
    ``unknown order``, ``amount differs``): those not recorded are for reconciliation."""
    await pool.execute(
        "INSERT INTO channel_notice (channel, out_trade_no, amount_fen, paid, channel_txn_id, outcome) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        channel, out_trade_no, amount_fen, paid, channel_txn_id, outcome,
    )  # fmt: skip


async def set_endpoints(pool: asyncpg.Pool, urls: dict[str, str]) -> None:
    """The merchants' notification URLs from the configuration, which the move trigger reads.
    Front ends starting together (``--workers``) write the same rows at once: upserts, never a
    delete and insert of the same key."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM merchant_endpoint WHERE merchant_id <> ALL($1::text[])", list(urls))
        await conn.executemany(
            "INSERT INTO merchant_endpoint VALUES ($1, $2) ON CONFLICT (merchant_id) DO UPDATE SET url = EXCLUDED.url",
            list(urls.items()),
        )


async def fresh_nonce(pool: asyncpg.Pool, merchant_id: str, nonce: str, window_s: int) -> bool:
    """Whether this nonce of the merchant's is new (and now seen): False is a replay. Nonces older
    than the signature window are forgotten (their timestamps are refused anyway)."""
    async with pool.acquire() as conn:
        await conn.execute("DELETE FROM merchant_nonce WHERE seen_at < now() - make_interval(secs => $1)", window_s * 2)
        return await conn.fetchval(
            "INSERT INTO merchant_nonce (merchant_id, nonce) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING true",
            merchant_id, nonce,
        ) is not None  # fmt: skip
