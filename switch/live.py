"""Live configuration: what a running front end takes again without a restart, and where it comes
from.

The merchants, the terminals, the routing, the channels' limits and breakers, and the risk rules
(``LIVE``) come from the configuration file (the rules from its rules file) until a section of
them is kept in the journal (``live_config``: the console's edits, first seeded from the file);
from then on the journal's section replaces the file's in every front end, and a change to it is
broadcast to them all (``NOTIFY``), as ``paysw reload`` and SIGHUP ask for the file.

A reload reads and checks the whole configuration first (``load_config``, the journal's sections
over it, then the risk rules against the merchants and terminals it names) and applies nothing
unless all of it is valid, as nginx and Envoy do: an invalid one leaves the running configuration
as it was, and says why. Of a valid one, the merchants (suspension, channels, their ids and rate
quotas, fees, notification URL), the terminals (a new one needs its master key, as at start), the
routing, each channel's ``LIMITS`` and the risk rules apply at once; a change anywhere else
(listeners, database, the rest of a channel and its actors, security, the merchant API,
reconciliation, risk settings, a merchant's API key) is named as needing a restart, and the
running value stays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from risk.rules import RulesError, RuleSet, load_rules, rules_from
from switch.config import ChannelSection, Config, ConfigError, cross_check, known_names

RELOADED = "reloaded"
NOTIFY_CHANNEL = "paysw_reload"  # ``paysw reload`` and the console tell every front end on the journal
SECTIONS = frozenset({"merchants", "terminals", "routing"})  # sections of the file, kept whole
# A channel's fields that apply live (``[channels.NAME]``: its bulkhead, quotas and breaker); the
# journal keeps them as ``limits``, by channel.
LIMITS = ("frontend_in_flight", "rate_per_s", "merchant_rate_per_s", "notices_per_s", "breaker")
LIVE = SECTIONS | {"limits", "rules"}
_NOT_COMPARED = frozenset({"base_dir", "source", "channels"})
JOURNAL = "the journal's live configuration"
_HINT = "`paysw config forget` or `import` puts the file's in force"
_EDIT_LOCK = 0x6C697665  # "live"


class EditConflict(Exception):
    """The section changed since the editor read it: read it again."""


def restart_needed(running: Config, read: Config) -> list[str]:
    """Where ``read`` differs from ``running`` in what only a restart applies (JSON paths)."""
    later = [
        f"$.{name}"
        for name in Config.__struct_fields__
        if name not in SECTIONS | _NOT_COMPARED and getattr(running, name) != getattr(read, name)
    ]
    before, after = (_fixed(c.channels) for c in (running, read))
    later += [f"$.channels.{name}" for name in sorted(before | after) if before.get(name) != after.get(name)]
    before, after = ({m.id: m.api_key for m in c.merchants} for c in (running, read))
    later += [  # the merchant API's keys are opened at start
        f"$.merchants[{i}].api_key" for i in sorted(before | after) if before.get(i, "") != after.get(i, "")
    ]
    return later


def _fixed(channels: dict[str, ChannelSection]) -> dict[str, dict[str, Any]]:
    """The channels as only a restart changes them (their ``LIMITS`` left out)."""
    return {
        name: {k: v for k, v in msgspec.to_builtins(channel).items() if k not in LIMITS}
        for name, channel in channels.items()
    }


def limits_of(channel: ChannelSection) -> dict[str, Any]:
    """A channel's ``LIMITS``, as JSON values."""
    return {field: msgspec.to_builtins(getattr(channel, field)) for field in LIMITS}


def file_section(config: Config, section: str, kept: dict[str, Any]) -> Any:
    """The file's ``section`` (of ``LIVE``), as JSON values, as the journal would keep it; the
    rules file's checked against the configuration in force (the file's with ``kept`` over it)."""
    if section == "limits":
        return {name: limits_of(channel) for name, channel in config.channels.items()}
    if section == "rules":
        if not config.risk.rules:
            raise ConfigError("$.risk.rules: the configuration names no rules file")
        try:
            known = known_names(overlaid(config, kept))
            return msgspec.to_builtins(load_rules(Path(config.base_dir) / config.risk.rules, *known))
        except RulesError as exc:
            raise ConfigError(f"$.risk.rules: {exc}") from None
    return msgspec.to_builtins(getattr(config, section))


async def lock(conn: asyncpg.Connection) -> None:
    """Edits of the live sections one at a time (inside the caller's transaction): each checks
    the whole with the others' sections, which must not change under it."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _EDIT_LOCK)


async def kept_sections(conn: asyncpg.Connection | asyncpg.Pool) -> dict[str, Any]:
    """The sections kept in the journal, as JSON values (none before the schema has the table)."""
    if not await conn.fetchval("SELECT to_regclass('live_config') IS NOT NULL"):
        return {}
    rows = await conn.fetch("SELECT section, body::text FROM live_config")
    return {r["section"]: msgspec.json.decode(r["body"]) for r in rows}


def overlaid(config: Config, sections: dict[str, Any]) -> Config:
    """``config`` as its file has it, with ``sections`` (kept in the journal) in place of the
    file's; a ``ConfigError`` naming the path when the whole is not valid. (The rules are not part
    of it: ``rules_in_force``.)"""
    if not sections.keys() - {"rules"}:
        return config
    whole = msgspec.to_builtins(config) | {s: body for s, body in sections.items() if s in SECTIONS}
    hint = f" (kept in the journal: {', '.join(sorted(sections))}; {_HINT})"
    problems = []
    for name, given in (sections.get("limits") or {}).items():
        if name not in whole["channels"]:
            problems.append(f"$.limits.{name}: no such channel")
        elif not isinstance(given, dict) or given.keys() - set(LIMITS):
            problems.append(f"$.limits.{name}: only {', '.join(LIMITS)} apply live")
        else:
            whole["channels"][name] |= given
            try:  # here, for the path to name the channel
                msgspec.convert(whole["channels"][name], ChannelSection)
            except msgspec.ValidationError as exc:
                problems.append(f"$.limits.{name}: {exc}")
    if problems:
        raise ConfigError(f"{JOURNAL} over {config.source}: " + "; ".join(problems) + hint)
    try:
        read = msgspec.json.decode(msgspec.json.encode(whole), type=Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{JOURNAL} over {config.source}: {exc}{hint}") from None
    problems = cross_check(read)
    if problems:
        raise ConfigError(f"{JOURNAL} over {config.source}: " + "; ".join(problems) + hint)
    return read


def rules_in_force(config: Config, kept: dict[str, Any]) -> RuleSet | None:
    """The risk rules in force, checked against ``config`` (the one in force): the journal's if it
    keeps them, else the rules file's (checked either way); None when the configuration names no
    rules file. Raises ``RulesError`` naming where they came from."""
    if not config.risk.rules:
        if "rules" in kept:
            raise RulesError(f"the journal keeps risk rules, the configuration names no rules file ({_HINT})")
        return None
    # The rules file is checked even while the journal's are in force: it is what `paysw config
    # forget` would put back, and what a restart reads first.
    from_file = load_rules(Path(config.base_dir) / config.risk.rules, *known_names(config))
    if "rules" in kept:
        return rules_from(kept["rules"], f"{JOURNAL} (rules; {_HINT})", *known_names(config))
    return from_file


def in_force(config: Config, kept: dict[str, Any]) -> tuple[Config, RuleSet | None]:
    """The configuration and the risk rules in force: the file's ``config`` with the journal's
    ``kept`` sections over it, checked whole; ``ConfigError`` naming the path."""
    read = overlaid(config, kept)
    try:
        return read, rules_in_force(read, kept)
    except RulesError as exc:
        raise ConfigError(f"$.risk.rules: {exc}") from None


async def current(conn: asyncpg.Connection | asyncpg.Pool, config: Config) -> Config:
    """The configuration in force: the file's, with the journal's sections over it (the risk rules
    are not read: ``in_force``)."""
    return overlaid(config, await kept_sections(conn))


async def keep_section(conn: asyncpg.Connection, section: str, body: Any, seen: int, by: str) -> int:
    """Keep ``body`` as ``section`` (inside the caller's transaction), if its version is still
    ``seen`` (0: not kept), and tell every front end; its new version (a number never used before,
    migration 34). ``EditConflict`` if someone else changed it meanwhile, or kept or forgot it.
    The broadcast goes out when the transaction commits."""
    text = msgspec.json.encode(body).decode()
    if seen == 0:
        version = await conn.fetchval(
            "INSERT INTO live_config (section, body, version, changed_by) "
            "VALUES ($1, $2::jsonb, nextval('live_config_version'), $3) ON CONFLICT (section) DO NOTHING "
            "RETURNING version",
            section, text, by,
        )  # fmt: skip
    else:
        version = await conn.fetchval(
            "UPDATE live_config SET body = $2::jsonb, version = nextval('live_config_version'), changed_at = now(), "
            "changed_by = $4 WHERE section = $1 AND version = $3 RETURNING version",
            section, text, seen, by,
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
