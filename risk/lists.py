"""Black and grey lists of payment codes or cards (by keyed fingerprint, never in the clear),
terminals and merchants, kept in PostgreSQL (``risk_list``) and held in memory by every front end.

A change is made by ``paysw risk list`` in one transaction with a ``NOTIFY paysw_risk``; every
front end listening re-reads the lists (and the rules file) on it, within a second or two."""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg

NOTIFY_CHANNEL = "paysw_risk"
KINDS = ("code", "terminal", "merchant")
COLOURS = ("black", "grey")


class Lists:
    """The lists as sets, by (colour, what they hold)."""

    def __init__(self, entries: Iterable[tuple[str, str, str]] = ()) -> None:
        self._sets: dict[tuple[str, str], frozenset[str]] = {}
        grouped: dict[tuple[str, str], set[str]] = {}
        for colour, of, value in entries:
            grouped.setdefault((colour, of), set()).add(value)
        self._sets = {key: frozenset(values) for key, values in grouped.items()}

    def holds(self, colour: str, of: str, value: str) -> bool:
        found = self._sets.get((colour, of))
        return found is not None and value in found

    def __len__(self) -> int:
        return sum(len(s) for s in self._sets.values())


async def read_lists(conn: asyncpg.Connection | asyncpg.Pool) -> Lists:
    rows = await conn.fetch("SELECT colour, list_of, value FROM risk_list")
    return Lists((r["colour"], r["list_of"], r["value"]) for r in rows)


async def change_list(
    conn: asyncpg.Connection, add: bool, colour: str, of: str, value: str, reason: str, by: str, entry: int = 0
) -> bool:
    """Add (or remove) one entry, audited, and tell the front ends; whether anything changed. A
    removal with ``entry`` removes that entry (its id) only."""
    async with conn.transaction():
        if add:
            status = await conn.execute(
                "INSERT INTO risk_list (colour, list_of, value, reason) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                colour, of, value, reason,
            )  # fmt: skip
        else:
            status = await conn.execute(
                "DELETE FROM risk_list WHERE colour = $1 AND list_of = $2 AND value = $3 AND ($4 = 0 OR id = $4)",
                colour, of, value, entry,
            )  # fmt: skip
        changed = status.endswith(" 1")
        if changed:
            await conn.execute(
                "INSERT INTO risk_audit (action, detail, by_whom) VALUES ($1, $2, $3)",
                f"list {'add' if add else 'remove'}",
                f"{colour} {of} {value}: {reason}",
                by,
            )
            await conn.execute(f"NOTIFY {NOTIFY_CHANNEL}, 'lists'")
    return changed
