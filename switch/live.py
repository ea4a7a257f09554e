"""Live configuration: what a running front end takes again without a restart, and where it comes
from.

The merchants, the terminals and the routing (``LIVE``) come from the configuration file until a
section of them is kept in the journal (``live_config``: the console's edits, first seeded from
the file); from then on the journal's section replaces the file's in every front end, and a change
to it is broadcast to them all (``NOTIFY``), as ``paysw reload`` and SIGHUP ask for the file.

A reload reads and checks the whole configuration first (``load_config``, the journal's sections
over it, then the risk rules against the merchants and terminals it names) and applies nothing
unless all of it is valid, as nginx and Envoy do: an invalid one leaves the running configuration
as it was, and says why. Of a valid one, the merchants (suspension, channels, their ids and rate
quotas, fees, notification URL), the terminals (a new one needs its master key, as at start) and
the routing apply at once; a change anywhere else (listeners, database, channels and their
actors, security, the merchant API, reconciliation, risk settings, a merchant's API key) is named
as needing a restart, and the running value stays."""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec

from switch.config import Config, ConfigError, cross_check

RELOADED = "reloaded"
NOTIFY_CHANNEL = "paysw_reload"  # ``paysw reload`` and the console tell every front end on the journal
LIVE = frozenset({"merchants", "terminals", "routing"})
_NOT_COMPARED = frozenset({"base_dir", "source"})
JOURNAL = "the journal's live configuration"


class EditConflict(Exception):
    """The section changed since the editor read it: read it again."""


def restart_needed(running: Config, read: Config) -> list[str]:
    """Where ``read`` differs from ``running`` in what only a restart applies (JSON paths)."""
    later = [
        f"$.{name}"
        for name in Config.__struct_fields__
        if name not in LIVE | _NOT_COMPARED and getattr(running, name) != getattr(read, name)
    ]
    before, after = ({m.id: m.api_key for m in c.merchants} for c in (running, read))
    later += [  # the merchant API's keys are opened at start
        f"$.merchants[{i}].api_key" for i in sorted(before | after) if before.get(i, "") != after.get(i, "")
    ]
    return later


async def kept_sections(conn: asyncpg.Connection | asyncpg.Pool) -> dict[str, Any]:
    """The sections kept in the journal, as JSON values (none before the schema has the table)."""
    if not await conn.fetchval("SELECT to_regclass('live_config') IS NOT NULL"):
        return {}
    rows = await conn.fetch("SELECT section, body::text FROM live_config")
    return {r["section"]: msgspec.json.decode(r["body"]) for r in rows}


def overlaid(config: Config, sections: dict[str, Any]) -> Config:
    """``config`` as its file has it, with ``sections`` (kept in the journal) in place of the
    file's; a ``ConfigError`` naming the path when the whole is not valid."""
    if not sections:
        return config
    whole = msgspec.to_builtins(config) | sections
    kept = ", ".join(sorted(sections))
    hint = f" (kept in the journal: {kept}; `paysw config forget` or `import` puts the file's in force)"
    try:
        read = msgspec.json.decode(msgspec.json.encode(whole), type=Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{JOURNAL} over {config.source}: {exc}{hint}") from None
    problems = cross_check(read)
    if problems:
        raise ConfigError(f"{JOURNAL} over {config.source}: " + "; ".join(problems) + hint)
    return read


async def current(conn: asyncpg.Connection | asyncpg.Pool, config: Config) -> Config:
    """The configuration in force: the file's, with the journal's sections over it."""
    return overlaid(config, await kept_sections(conn))


async def keep_section(conn: asyncpg.Connection, section: str, body: Any, seen: int, by: str) -> int:
    """Keep ``body`` as ``section`` (inside the caller's transaction), if its version is still
    ``seen`` (0: not kept yet), and tell every front end; its new version. ``EditConflict`` if
    someone else changed it meanwhile. The broadcast goes out when the transaction commits."""
    version = await conn.fetchval(
        "INSERT INTO live_config AS l (section, body, version, changed_by) VALUES ($1, $2::jsonb, 1, $4) "
        "ON CONFLICT (section) DO UPDATE SET body = EXCLUDED.body, version = l.version + 1, changed_at = now(), "
        "changed_by = EXCLUDED.changed_by WHERE l.version = $3 RETURNING version",
        section, msgspec.json.encode(body).decode(), seen, by,
    )  # fmt: skip
    if version is None:
        raise EditConflict(f"{section} changed since it was read: read it again")
    await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, by)
    return version


async def versions(conn: asyncpg.Connection | asyncpg.Pool) -> dict[str, int]:
    """Each kept section's version (a section not kept is at 0)."""
    rows = await conn.fetch("SELECT section, version FROM live_config")
    return {section: 0 for section in LIVE} | {r["section"]: r["version"] for r in rows}


async def provenance(conn: asyncpg.Connection | asyncpg.Pool) -> dict[str, str]:
    """Where each live section comes from, in words: the journal's (its version, by whom, when),
    or the file's."""
    kept = {}
    if await conn.fetchval("SELECT to_regclass('live_config') IS NOT NULL"):
        kept = {
            r["section"]: r
            for r in await conn.fetch("SELECT section, version, changed_by, changed_at FROM live_config")
        }
    return {
        section: (
            f"the journal's (version {r['version']}, by {r['changed_by']}, {r['changed_at']:%Y-%m-%d %H:%M:%S %Z}): "
            "the file's is not used"
            if (r := kept.get(section)) is not None
            else "the file's"
        )
        for section in sorted(LIVE)
    }
