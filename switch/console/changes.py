"""Four eyes on the live configuration (``[console] four_eyes``): a change of a live section made
in the console (merchants, terminals, gray routes, the channels' limits, the risk rules) is asked
by one admin and put in force only when another approves it; the one who asked may withdraw it.

A request keeps the whole section as edited and the version it was edited from, so an approval
puts in force exactly what was asked and shown, or nothing: should the section have changed since
(a `paysw config import`, say), the request lapses and is asked again. One request waits per
section at a time. Asking and deciding are audited (``console_audit``) in the transaction that
does them; ``config_change`` keeps the requests and their decisions."""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec

from switch.console.audit import Entry, record
from switch.live import EditConflict, versions

AWAITING = "awaiting a second admin"  # the audit's outcome of a change asked, not yet decided
_COLUMNS = "id, section, seen, body, action, target, before, after, asked_by, asked_at"


async def ask(conn: asyncpg.Connection, section: str, seen: int, body: Any, entry: Entry) -> int:
    """``body`` asked as ``section`` over its version ``seen`` (inside the caller's transaction,
    under ``switch.live.lock``), ``entry`` audited as awaiting; the request's id. ``EditConflict``
    when a request of the section waits already or the section changed since it was read."""
    waiting = await conn.fetchrow(
        "SELECT id, asked_by FROM config_change WHERE section = $1 AND decided_at IS NULL", section
    )
    if waiting is not None:
        raise EditConflict(
            f"a change of {section} awaits approval (request {waiting['id']}, asked by {waiting['asked_by']}): "
            "approve, reject or withdraw it first"
        )
    if (await versions(conn))[section] != seen:
        raise EditConflict(f"{section} changed since it was read: read it again")
    request = await conn.fetchval(
        "INSERT INTO config_change (section, seen, body, action, target, before, after, asked_by) "
        "VALUES ($1, $2, $3::jsonb, $4, $5, $6::jsonb, $7::jsonb, $8) RETURNING id",
        section, seen, _json(body), entry.action, entry.target, _json(entry.before), _json(entry.after),
        entry.user_name,
    )  # fmt: skip
    await record(conn, entry._replace(outcome=f"{AWAITING}: request {request}"))
    return request


async def waiting(conn: asyncpg.Connection | asyncpg.Pool, request: int | None = None) -> list[asyncpg.Record]:
    """The requests awaiting a decision (or ``request``, if it does), oldest first."""
    return await conn.fetch(
        f"SELECT {_COLUMNS} FROM config_change WHERE decided_at IS NULL AND ($1::bigint IS NULL OR id = $1) "
        "ORDER BY id" + (" FOR UPDATE" if request is not None else ""),
        request,
    )


async def decided(conn: asyncpg.Connection | asyncpg.Pool, shown: int = 20) -> list[asyncpg.Record]:
    """The latest requests decided, newest first."""
    return await conn.fetch(
        f"SELECT {_COLUMNS}, decided_by, decided_at, outcome FROM config_change WHERE decided_at IS NOT NULL "
        "ORDER BY decided_at DESC, id DESC LIMIT $1",
        shown,
    )


async def close(conn: asyncpg.Connection, request: asyncpg.Record, user: str, outcome: str) -> None:
    """``request`` decided by ``user`` (inside the caller's transaction), audited as its action."""
    await conn.execute(
        "UPDATE config_change SET decided_by = $2, decided_at = now(), outcome = $3 WHERE id = $1",
        request["id"], user, outcome,
    )  # fmt: skip
    shown = f"{outcome}: request {request['id']} asked by {request['asked_by']}"
    before, after = (msgspec.json.decode(request[k]) if request[k] else None for k in ("before", "after"))
    await record(conn, Entry(user, request["action"], request["target"], before, after, shown))


def body_of(request: asyncpg.Record) -> Any:
    return msgspec.json.decode(request["body"])


def _json(value: Any) -> str | None:
    return None if value is None else msgspec.json.encode(value).decode()
