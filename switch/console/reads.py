"""What the console's pages read from the journal: transactions found by what an operator knows
of them, and one transaction's whole story in time order. Card numbers and payment codes are
only ever read masked (the journal keeps nothing else), and the free text that came from outside
(a channel's message, an error) is scrubbed of anything that looks like one."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any, NamedTuple

import asyncpg

from protocols.masking import scrub
from switch.journal.machine import REVERSING_SQL
from switch.settlement import LINE_SUMS

SHOWN = 100  # rows a search shows, newest first

_COLUMNS = (
    "tx_date, rrn, terminal_id, stan, transmitted, merchant_id, txn_type, channel, state, amount_fen, currency, "
    "pan_masked, entry_mode, response_code, channel_code, channel_message, channel_txn_id, out_trade_no, original_rrn, "
    "refunded_fen, reserved_fen, received_at, updated_at, reversal_requested_at, expires_at, "
    # Kept by its state until the resolver has given the money back (or a person, if the channel refuses).
    f"{REVERSING_SQL} AS owes_reversal"
)


class Filters(NamedTuple):
    rrn: str = ""
    terminal: str = ""
    merchant: str = ""
    channel: str = ""
    state: str = ""
    since: dt.datetime | None = None
    until: dt.datetime | None = None


async def search(pool: asyncpg.Pool, f: Filters) -> list[asyncpg.Record]:
    """The newest transactions (``SHOWN`` at most) that match every filter given."""
    return await pool.fetch(
        f"SELECT {_COLUMNS} FROM txn WHERE ($1 = '' OR rrn = $1) AND ($2 = '' OR terminal_id = $2) "
        "AND ($3 = '' OR merchant_id = $3) AND ($4 = '' OR channel = $4) AND ($5 = '' OR state = $5) "
        "AND ($6::timestamptz IS NULL OR received_at >= $6) AND ($7::timestamptz IS NULL OR received_at < $7) "
        f"ORDER BY received_at DESC LIMIT {SHOWN}",
        f.rrn, f.terminal, f.merchant, f.channel, f.state, f.since, f.until,
    )  # fmt: skip


class Event(NamedTuple):
    at: dt.datetime
    what: str  # state, channel, late answer, reversal, undo, risk, reconciliation, notification, ...
    detail: str


class Story(NamedTuple):
    txn: asyncpg.Record
    events: list[Event]


async def story(pool: asyncpg.Pool, rrn: str) -> Story | None:
    """The transaction of ``rrn`` (the newest, should an RRN repeat across days) and everything
    that happened to it, in time order."""
    txn = await pool.fetchrow(f"SELECT {_COLUMNS} FROM txn WHERE rrn = $1 ORDER BY tx_date DESC LIMIT 1", rrn)
    if txn is None:
        return None
    key = (txn["tx_date"], txn["terminal_id"], txn["stan"], txn["transmitted"])
    events = [Event(txn["received_at"], "received", _received(txn))]
    for r in await pool.fetch(
        "SELECT from_state, to_state, moved_at FROM txn_move WHERE tx_date = $1 AND rrn = $2 ORDER BY moved_at",
        txn["tx_date"], rrn,
    ):  # fmt: skip
        events.append(Event(r["moved_at"], "state", f"{r['from_state'] or '(new)'} → {r['to_state']}"))
    if txn["channel_code"] or txn["channel_txn_id"]:
        events.append(Event(txn["updated_at"], "channel answer", _channel_answer(txn)))
    for r in await pool.fetch(
        "SELECT op, outcome, channel_code, channel_txn_id, received_at FROM late_answer "
        "WHERE (tx_date, terminal_id, stan, transmitted) = ($1, $2, $3, $4)",
        *key,
    ):
        events.append(
            Event(
                r["received_at"],
                "late answer",
                f"{r['op']}: {r['outcome']} (channel code {r['channel_code']}, id {r['channel_txn_id']})",
            )
        )
    if txn["reversal_requested_at"]:
        events.append(
            Event(txn["reversal_requested_at"], "reversal", "asked by the terminal: carried out by the resolver")
        )
    for r in await pool.fetch(
        "SELECT rrn, stan, amount_fen, code, received_at FROM reversal "
        "WHERE (orig_tx_date, terminal_id, orig_stan, orig_transmitted) = ($1, $2, $3, $4)",
        *key,
    ):
        events.append(
            Event(
                r["received_at"],
                "reversal",
                f"0400 STAN {r['stan']}, RRN {r['rrn']}, {_yuan(r['amount_fen'])}, answered {r['code'] or '-'}",
            )
        )
    for r in await pool.fetch(
        "SELECT rrn, txn_type, state, amount_fen, received_at FROM txn WHERE original_rrn = $1 AND merchant_id = $2",
        rrn, txn["merchant_id"],
    ):  # fmt: skip
        events.append(Event(r["received_at"], r["txn_type"], f"RRN {r['rrn']}: {_yuan(r['amount_fen'])}, {r['state']}"))
    for r in await pool.fetch(
        "SELECT rule_id, action, mode, code, decided_at FROM risk_decision WHERE tx_date = $1 AND rrn = $2",
        txn["tx_date"],
        rrn,
    ):
        events.append(
            Event(r["decided_at"], "risk", f"rule {r['rule_id']}: {r['action']} ({r['mode']}), code {r['code']}")
        )
    for r in await pool.fetch(
        "SELECT i.id, i.class, i.status, i.note, i.channel_status, b.channel, b.day, b.updated_at FROM recon_item i "
        "JOIN recon_batch b ON b.id = i.batch_id WHERE i.rrn = $1 OR (i.rrn IS NULL AND i.out_trade_no = $2)",
        rrn, txn["out_trade_no"],
    ):  # fmt: skip
        note = f"; {scrub(r['note'])}" if r["note"] else ""
        said = f"channel says {r['channel_status'] or '-'}"
        item = f"item {r['id']} of {r['channel']} {r['day']}: {r['class']}, {r['status']} ({said}){note}"
        events.append(Event(r["updated_at"], "reconciliation", item))
    for r in await pool.fetch(
        "SELECT outcome, paid, amount_fen, received_at FROM channel_notice WHERE channel = $1 AND out_trade_no = $2",
        txn["channel"], txn["out_trade_no"],
    ):  # fmt: skip
        events.append(
            Event(
                r["received_at"],
                "channel notification",
                f"{'paid' if r['paid'] else 'not paid'} {_yuan(r['amount_fen'])}: {r['outcome']}",
            )
        )
    for r in await pool.fetch(
        "SELECT state, attempts, created_at, delivered_at, dead_at, last_error FROM notice_outbox WHERE rrn = $1", rrn
    ):
        events.append(Event(r["created_at"], "merchant notification", _notice(r)))
    for r in await pool.fetch(
        "SELECT reason, state, coalesce(reopened_at, created_at) AS at, resolved_at, resolution FROM dead_letter "
        "WHERE (tx_date, terminal_id, stan, transmitted) = ($1, $2, $3, $4)",
        *key,
    ):
        done = f"; resolved: {r['resolution']}" if r["resolved_at"] else ""
        events.append(Event(r["at"], "dead letter", scrub(f"{r['reason']} (at {r['state']}){done}")))
    return Story(txn, sorted(events, key=lambda e: e.at))


async def open_differences(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT i.id, b.channel, b.day, b.hour, i.class, i.entry, i.out_trade_no, i.rrn, i.journal_state, "
        "i.journal_fen, i.channel_status, i.channel_fen FROM recon_item i JOIN recon_batch b ON b.id = i.batch_id "
        "WHERE i.status = 'OPEN' ORDER BY b.day DESC, b.channel, i.id LIMIT 500"
    )


async def batches(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT id, channel, day, hour, step, summary::text AS summary, handling::text AS handling, error, updated_at, "
        "(SELECT count(*) FROM recon_item i WHERE i.batch_id = b.id AND i.status = 'OPEN') AS open "
        "FROM recon_batch b ORDER BY day DESC, hour DESC, channel LIMIT 200"
    )


async def dead_letters(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT rrn, terminal_id, channel, state, reason, coalesce(reopened_at, created_at) AS at FROM dead_letter "
        "WHERE resolved_at IS NULL ORDER BY at DESC LIMIT 500"
    )


async def dead_letter(pool: asyncpg.Pool, rrn: str) -> asyncpg.Record | None:
    """An open dead letter of the transaction ``rrn``, with the transaction's state now."""
    return await pool.fetchrow(
        "SELECT d.rrn, d.terminal_id, d.channel, d.state AS given_up_at, d.reason, t.state, t.amount_fen "
        "FROM dead_letter d LEFT JOIN txn t ON (t.tx_date, t.terminal_id, t.stan, t.transmitted) = "
        "(d.tx_date, d.terminal_id, d.stan, d.transmitted) WHERE d.rrn = $1 AND d.resolved_at IS NULL LIMIT 1",
        rrn,
    )


AWAITING = "awaiting a second operator"  # the audit's outcome of a hand-back asked, not yet decided


async def _awaiting(
    conn: asyncpg.Connection | asyncpg.Pool, sql: str, key: Callable[[asyncpg.Record], Any], *args: Any
) -> dict[Any, asyncpg.Record]:
    """Of the requests ``sql`` reads (the latest audit row of each thing asked about), those still
    awaiting a second operator, by ``key``."""
    return {key(row): row for row in await conn.fetch(sql, *args) if row["outcome"] == AWAITING}


# The latest hand-back decision of each open dead letter since it was (re)opened: the audit log is
# where a hand-back is asked, approved or rejected, so it is where one awaiting approval is read.
_HAND_BACKS_SQL = (
    "SELECT DISTINCT ON (d.rrn) d.rrn, a.id, a.user_name, a.at, a.after #>> '{}' AS resolution, a.outcome "
    "FROM dead_letter d JOIN console_audit a ON a.action = 'dead_letter.retry' AND a.target = d.rrn "
    "AND a.at >= coalesce(d.reopened_at, d.created_at) WHERE d.resolved_at IS NULL AND ($1::text IS NULL OR "
    "d.rrn = $1) ORDER BY d.rrn, a.id DESC"
)


async def hand_backs_asked(
    conn: asyncpg.Connection | asyncpg.Pool, rrn: str | None = None
) -> dict[str, asyncpg.Record]:
    """The hand-backs to the resolver asked of open dead letters (or of ``rrn``'s) and not yet
    approved or rejected, by RRN: the request (its audit row's ``id``), who asked, when, and why."""
    return await _awaiting(conn, _HAND_BACKS_SQL, lambda row: row["rrn"], rrn)


# A difference's resolution asked (``four_eyes``): the latest request or decision of an open item.
_RESOLUTIONS_SQL = (
    "SELECT DISTINCT ON (i.id) i.id::text AS item, a.id, a.user_name, a.at, a.after #>> '{}' AS reason, a.outcome "
    "FROM recon_item i JOIN console_audit a ON a.action = 'recon.resolve' AND a.target = i.id::text "
    "WHERE i.status = 'OPEN' AND ($1::bigint IS NULL OR i.id = $1) ORDER BY i.id, a.id DESC"
)


async def resolutions_asked(
    conn: asyncpg.Connection | asyncpg.Pool, item: int | None = None
) -> dict[str, asyncpg.Record]:
    """The resolutions asked of open differences (or of ``item``) and not yet approved or rejected,
    by item (as text): the request (its audit row's ``id``), who asked, when, and why."""
    return await _awaiting(conn, _RESOLUTIONS_SQL, lambda row: row["item"], item)


async def dead_notifications(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT rrn, state, merchant_id, attempts, created_at, dead_at, last_error FROM notice_outbox "
        "WHERE dead_at IS NOT NULL ORDER BY dead_at DESC LIMIT 500"
    )


async def settlement_days(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch(
        f"SELECT settled_on, merchant_id, channel, {LINE_SUMS} "
        "FROM settlement_item GROUP BY 1, 2, 3 ORDER BY 1 DESC, 2, 3 LIMIT 500"
    )


async def terminal_keys(pool: asyncpg.Pool, terminals: list[str]) -> dict[tuple[str, str], tuple[int, str]]:
    """(terminal, kind) → the newest key's version and check value: never the key."""
    rows = await pool.fetch(
        "SELECT DISTINCT ON (label) label, version, check_value FROM hsm_key WHERE label = ANY($1) "
        "ORDER BY label, version DESC",
        [f"{kind}:{t}" for t in terminals for kind in ("tmk", "mak", "pik")],
    )  # fmt: skip
    return {tuple(reversed(r["label"].split(":", 1))): (r["version"], r["check_value"]) for r in rows}


async def risk_lists(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    """The black and grey lists (codes by their keyed fingerprint only)."""
    return await pool.fetch(
        "SELECT colour, list_of, value, reason, added_at FROM risk_list ORDER BY colour, list_of, added_at"
    )


# A black list entry's removal asked (``four_eyes``): the latest request or decision naming the entry
# by its id (one removed and listed again is another entry); a refused approval is audited apart.
_REMOVALS_SQL = (
    "SELECT DISTINCT ON (l.id) l.list_of, l.value, l.id AS entry, a.id, a.user_name, a.at, "
    "a.after ->> 'reason' AS reason, a.outcome FROM risk_list l JOIN console_audit a ON a.action = 'risk.list.remove' "
    "AND a.target = 'black ' || l.list_of || ' ' || l.value AND a.before ->> 'entry' = l.id::text "
    "WHERE l.colour = 'black' AND ($1::text IS NULL OR (l.list_of = $1 AND l.value = $2)) ORDER BY l.id, a.id DESC"
)


async def removals_asked(
    conn: asyncpg.Connection | asyncpg.Pool, of: str | None = None, value: str = ""
) -> dict[tuple[str, str], asyncpg.Record]:
    """The black list's removals asked and not yet approved or rejected (of ``of`` ``value``'s entry
    only, if given), by (what, value): the entry's id, the request (its audit row's ``id``), who
    asked, when, and why."""
    return await _awaiting(conn, _REMOVALS_SQL, lambda row: (row["list_of"], row["value"]), of, value)


async def risk_changes(pool: asyncpg.Pool, limit: int = 50) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT at, action, detail, by_whom FROM risk_audit ORDER BY id DESC LIMIT $1", limit)


async def audit_rows(pool: asyncpg.Pool, limit: int = 300) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT id, at, user_name, action, target, before::text AS before, after::text AS after, outcome "
        "FROM console_audit ORDER BY id DESC LIMIT $1",
        limit,
    )


def _received(txn: Any) -> str:
    return (
        f"{txn['txn_type']} {_yuan(txn['amount_fen'])} {txn['currency']} at terminal {txn['terminal_id']} "
        f"(STAN {txn['stan']}), merchant {txn['merchant_id']}, {txn['pan_masked']} by entry mode {txn['entry_mode']}, "
        f"to {txn['channel']} as order {txn['out_trade_no']}"
    )


def _channel_answer(txn: Any) -> str:
    return (
        f"code {txn['channel_code'] or '-'} {scrub(txn['channel_message'] or '')} "
        f"(channel id {txn['channel_txn_id'] or '-'}); "
        f"the terminal was answered {txn['response_code'] or '-'}"
    )


def _notice(r: Any) -> str:
    if r["delivered_at"]:
        return f"{r['state']}: delivered at {r['delivered_at']:%H:%M:%S} after {r['attempts']} attempt(s)"
    if r["dead_at"]:
        return f"{r['state']}: dead after {r['attempts']} attempts ({scrub(r['last_error'] or '')})"
    return f"{r['state']}: {r['attempts']} attempt(s) so far ({scrub(r['last_error'] or 'none failed')})"


def _yuan(fen: int | None) -> str:
    return "" if fen is None else f"{fen / 100:,.2f}"
