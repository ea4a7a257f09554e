"""Four eyes on the live configuration (``[console] four_eyes``): a change of a live section made
in the console (merchants, terminals, gray routes, the channels' limits, the risk rules) is asked
by one admin and put in force only when another approves it; the one who asked may withdraw it.

A request keeps the whole section as edited, the version it was edited from and a digest of the
section it was edited from, so that an approval puts in force exactly what was asked and shown,
or nothing: should the section have changed since (another change, the file's section edited and
reloaded while the journal keeps none, ``paysw config import`` or ``forget``), the request lapses
and is asked again; so does one older than ``change_max_hours`` or whose asker is no longer an
admin. One request waits per section at a time. The asking is audited as the change it asks
(``merchant.edit``, awaiting); each decision as ``config.approve``, ``config.reject``,
``config.withdraw`` or ``config.lapse`` on the request, with who asked, the section and the
versions; an approval also as the change itself, as an admin's own change is without four eyes.
The journal lets a decision be made once, and never an approval by the one who asked
(migration 35)."""

from __future__ import annotations

import hashlib
from typing import Any

import asyncpg
import msgspec

from switch.console.audit import Entry, record
from switch.live import EditConflict, versions

AWAITING = "awaiting a second admin"  # the audit's outcome of a change asked, not yet decided
DONE = {"approve": "ok", "reject": "rejected", "withdraw": "withdrawn", "lapse": "lapsed"}
_COLUMNS = "id, section, seen, base, body, action, target, before, after, asked_by, asked_at"


def digest(section: Any) -> str:
    """A section's body, as a digest that does not depend on the order of its keys."""
    return hashlib.sha256(msgspec.json.encode(section, order="sorted")).hexdigest()


async def ask(conn: asyncpg.Connection, section: str, seen: int, base: str, body: Any, entry: Entry) -> int:
    """``body`` asked as ``section``, edited from the section of digest ``base`` at version ``seen`` (inside the
    caller's transaction, under ``switch.live.lock``), ``entry`` audited as awaiting; the request's
    id. ``EditConflict`` when a request of the section waits already or the section changed since
    it was read."""
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
    try:
        async with conn.transaction():
            request = await conn.fetchval(
                "INSERT INTO config_change (section, seen, base, body, action, target, before, after, asked_by) "
                "VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7::jsonb, $8::jsonb, $9) RETURNING id",
                section, seen, base, _json(body), entry.action, entry.target, _json(entry.before),
                _json(entry.after), entry.user_name,
            )  # fmt: skip
    except asyncpg.UniqueViolationError as exc:  # asked meanwhile by one not under the lock
        raise EditConflict(f"a change of {section} awaits approval: approve, reject or withdraw it first") from exc
    await record(conn, entry._replace(outcome=f"{AWAITING}: request {request}"))
    return request


async def waiting(conn: asyncpg.Connection | asyncpg.Pool, request: int | None = None) -> list[asyncpg.Record]:
    """The requests awaiting a decision (or ``request``, held, if it does), oldest first."""
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


async def close(
    conn: asyncpg.Connection, request: asyncpg.Record, user: str, decision: str, why: str = "", version: int = 0
) -> None:
    """``request`` decided by ``user`` (``DONE``'s keys; a lapse says ``why``), inside the
    caller's transaction, and audited; an approval, kept at ``version``, also as the change."""
    outcome = f"{DONE[decision]}: {why}"[:300] if why else DONE[decision]
    await conn.execute(
        "UPDATE config_change SET decided_by = $2, decided_at = now(), outcome = $3 WHERE id = $1",
        request["id"], user, outcome,
    )  # fmt: skip
    what = {"request": request["id"], "asked_by": request["asked_by"], "section": request["section"],
            "change": f"{request['action']} {request['target']}", "seen": request["seen"]}  # fmt: skip
    await record(conn, Entry(user, f"config.{decision}", str(request["id"]), after=what | {"version": version or None},
                             outcome=outcome))  # fmt: skip
    if decision == "approve":
        await record(conn, Entry(user, request["action"], request["target"], *_sides(request)))


async def lapse_section(conn: asyncpg.Connection, section: str, user: str, why: str) -> None:
    """The request of ``section`` awaiting a decision, if any, lapsed (``section`` kept or forgotten
    by other means: ``paysw config``), inside the caller's transaction."""
    for request in await conn.fetch(
        f"SELECT {_COLUMNS} FROM config_change WHERE section = $1 AND decided_at IS NULL FOR UPDATE", section
    ):
        await close(conn, request, user, "lapse", why)


def differences(before: Any, after: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """What a change changes, field by field: (path, before, after) for each value that differs,
    nested objects walked (``rate_per_s.wechat``); a field added or removed has None on the other
    side. What an approver reads first: the whole before and after can hide one figure in many."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [
            found
            for key in sorted(before.keys() | after.keys(), key=str)
            for found in differences(before.get(key), after.get(key), f"{path}.{key}" if path else str(key))
        ]
    return [] if before == after else [(path or "(all)", before, after)]


def changed(request: asyncpg.Record) -> list[tuple[str, Any, Any]]:
    """``differences`` of a request's item, before and after."""
    return differences(*_sides(request))


def _sides(request: asyncpg.Record) -> tuple[Any, Any]:
    """A request's item as it was and as it is asked to be."""
    before, after = (msgspec.json.decode(request[k]) if request[k] else None for k in ("before", "after"))
    return before, after


def body_of(request: asyncpg.Record) -> Any:
    return msgspec.json.decode(request["body"])


def _json(value: Any) -> str | None:
    return None if value is None else msgspec.json.encode(value).decode()
