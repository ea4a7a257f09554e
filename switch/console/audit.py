"""The console's audit log: who did what, to what, when, the value before and after, and how it
ended. Rows are only ever added (the table refuses UPDATE, DELETE and TRUNCATE)."""

from __future__ import annotations

from typing import Any, NamedTuple

import asyncpg
import msgspec


class Entry(NamedTuple):
    user_name: str
    action: str  # e.g. channel.disable, merchant.edit, recon.resolve, sign-in
    target: str  # what it was done to: a channel, a merchant id, a difference's item
    before: Any = None
    after: Any = None
    outcome: str = "ok"  # ok, or why it was refused or failed


async def record(conn: asyncpg.Connection | asyncpg.Pool, entry: Entry) -> None:
    """Add ``entry`` (inside the caller's transaction when it has one: it stands or falls with it)."""
    await conn.execute(
        "INSERT INTO console_audit (user_name, action, target, before, after, outcome) "
        "VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6)",
        entry.user_name, entry.action, entry.target, _json(entry.before), _json(entry.after), entry.outcome,
    )  # fmt: skip


def _json(value: Any) -> str | None:
    return None if value is None else msgspec.json.encode(value).decode()
