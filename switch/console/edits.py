"""The configuration as the console shows and edits it (merchants, terminals, gray routes, the
channels' limits and breakers, the risk rules): the configuration in force (the file's, with the
journal's live sections over it: ``switch.live``). An edit is checked as a reload checks (the
whole configuration, the risk rules against it), kept in the journal with the audit row in one
transaction, and broadcast to every front end, which applies it within a second or two with no
restart; or, with ``[console] four_eyes``, asked, and kept when another admin approves it
(``switch.console.changes``). The first edit of a section seeds the journal's from the file; from
then on the journal's is the one in force."""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import asyncpg
import msgspec
from multidict import MultiMapping

from protocols.statements import CST
from risk.rules import RulesError, RuleSet
from switch.breaker import BreakerSettings
from switch.config import Config, ConfigError, Merchant, RoutingSection, Terminal, load_config
from switch.console import changes
from switch.console.audit import Entry, record
from switch.console.settings import ConsoleSection
from switch.live import (
    LIMITS,
    EditConflict,
    current,
    file_section,
    in_force,
    keep_section,
    kept_sections,
    limits_of,
    lock,
    versions,
)

NEW = "new"
MAX_RULES_TEXT = 60_000  # characters of the rules as TOML
_REFUSED = (ConfigError, RulesError, EditConflict, ValueError)  # an edit refused: its reason is shown
# A change: the section's body in, (the body edited, the part before, the part after) out.
Change = Callable[[Any], tuple[Any, Any, Any]]


class Listed(NamedTuple):
    merchants: list[Merchant]
    kept: bool  # the journal's section is in force (else the file's)
    version: int


class MerchantEdit(NamedTuple):
    merchant: dict[str, Any]  # as the configuration has it (JSON values)
    version: int  # of the merchants' section when it was read (0: not kept in the journal yet)
    new: bool


class Saved(NamedTuple):
    edit: MerchantEdit
    error: str = ""


class Edits:
    def __init__(self, pool: asyncpg.Pool, config_file: Path, section: ConsoleSection) -> None:
        self._pool = pool
        self._file = config_file
        self._channels = list(load_config(config_file).channels)  # channels change only with a restart
        self.four_eyes = section.four_eyes  # an edit is asked, and kept when another admin approves it
        self._max_age = dt.timedelta(hours=section.change_max_hours)

    def channel_names(self) -> list[str]:
        return self._channels

    async def config(self) -> Config:
        """The configuration in force (the rules not read)."""
        return await current(self._pool, load_config(self._file))

    async def _in_force(self) -> tuple[Config, RuleSet | None]:
        return in_force(load_config(self._file), await kept_sections(self._pool))

    async def _change(self, section: str, seen: int, user: str, action: str, target: str, change: Change) -> int:
        """``change`` made to ``section`` as in force, checked whole, kept over version ``seen``
        and audited (on ``target``; "": the id of what changed) in one transaction; its new
        version (``four_eyes``: asked instead, and the version unchanged). Raises one of
        ``_REFUSED``."""
        file_config = load_config(self._file)
        async with self._pool.acquire() as conn, conn.transaction():
            await lock(conn)
            kept = await kept_sections(conn)
            body = kept[section] if section in kept else file_section(file_config, section, kept)
            base = changes.digest(body)  # before ``change``, which may edit it in place
            edited, before, after = change(body)
            in_force(file_config, kept | {section: edited})
            entry = Entry(user, action, target or after["id"], before=before, after=after)
            if self.four_eyes:
                await changes.ask(conn, section, seen, base, edited, entry)
                return seen
            version = await keep_section(conn, section, edited, seen, f"console:{user}")
            await record(conn, entry)
        return version

    async def decide(self, request: int, user: str, approve: bool) -> str:
        """A change asked (``four_eyes``) approved by another admin than the one who asked, and
        kept as it was asked, checked whole again; or rejected (withdrawn, by the one who asked).
        What was done, in words. One that can no longer be kept as it was asked and shown lapses
        (``_stale``)."""
        file_config = load_config(self._file)
        async with self._pool.acquire() as conn, conn.transaction():
            await lock(conn)
            found = await changes.waiting(conn, request)
            decision = "approve" if approve else "reject"
            if not found:
                await record(conn, Entry(user, f"config.{decision}", str(request), outcome="none awaits approval"))
                return f"no change {request} awaits approval"
            asked = found[0]
            if not approve:
                decision = "withdraw" if asked["asked_by"] == user else "reject"
                await changes.close(conn, asked, user, decision)
                return f"change {request} {changes.DONE[decision]}"
            if asked["asked_by"] == user:  # a refusal apart: the request still waits
                await record(conn, Entry(user, "config.approve", str(request), outcome="refused: the one who asked it"))
                return f"change {request} is approved by another admin than the one who asked it"
            why, version = await self._stale(conn, file_config, asked), 0
            if not why:
                section, body = asked["section"], changes.body_of(asked)
                try:
                    in_force(file_config, await kept_sections(conn) | {section: body})
                    by = f"console:{asked['asked_by']}+{user}"
                    version = await keep_section(conn, section, body, asked["seen"], by)
                except _REFUSED as exc:
                    why = str(exc)
            if why:
                await changes.close(conn, asked, user, "lapse", why)
                return f"change {request} lapsed, nothing changed: {why}: ask it again"
            await changes.close(conn, asked, user, "approve", version=version)
        return f"change {request} approved: every front end applies it now"

    async def _stale(self, conn: asyncpg.Connection, file_config: Config, asked: asyncpg.Record) -> str:
        """Why ``asked`` can no longer be kept as it was asked and shown, if so: too old, its asker
        no longer an admin, its section not the one it was edited from (by digest: the file's, while
        the journal keeps none, has no version to tell it by), a new terminal's key gone."""
        if await conn.fetchval("SELECT now() - $1::timestamptz > $2::interval", asked["asked_at"], self._max_age):
            return f"asked more than {self._max_age.total_seconds() / 3600:g} hours ago"
        if await conn.fetchval("SELECT role FROM console_user WHERE name = $1", asked["asked_by"]) != "admin":
            return f"{asked['asked_by']} is no longer an admin"
        kept, section = await kept_sections(conn), asked["section"]
        base = kept[section] if section in kept else file_section(file_config, section, kept)
        if changes.digest(base) != asked["base"]:
            return f"{section} changed since it was asked"
        new_terminal = asked["action"] == "terminal.create" and not file_config.security.allow_terminals_without_mac
        if new_terminal and not await self._has_master_key(asked["target"]):
            return f"terminal {asked['target']}: no master key (tmk:{asked['target']}) in the key store"
        return ""

    async def asked(self) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
        """The changes awaiting approval, oldest first, and the latest decided."""
        return await changes.waiting(self._pool), await changes.decided(self._pool)

    # -- merchants --------------------------------------------------------------------------

    async def listed(self) -> Listed:
        config = await self.config()
        version = (await versions(self._pool))["merchants"]
        return Listed(config.merchants, version > 0, version)

    async def edit(self, merchant_id: str) -> MerchantEdit | None:
        version = (await versions(self._pool))["merchants"]
        if merchant_id == NEW:
            return MerchantEdit({"id": "", "name": "", "channels": [], "settlement": "T1"}, version, True)
        found = next((m for m in (await self.config()).merchants if m.id == merchant_id), None)
        return None if found is None else MerchantEdit(msgspec.to_builtins(found), version, False)

    async def save(self, merchant_id: str, form: MultiMapping[Any], user: str) -> Saved:
        """The merchant ``merchant_id`` (``new``: a new one) as the form gives it, kept and audited."""
        new = merchant_id == NEW
        seen = version_of(form)
        shown: dict[str, Any] = {"id": merchant_id}

        def change(merchants: list[dict[str, Any]]) -> tuple[Any, Any, Any]:
            index = {m["id"]: i for i, m in enumerate(merchants)}
            before = None if new else merchants[index[merchant_id]] if merchant_id in index else None
            if not new and before is None:
                raise ValueError(f"no merchant {merchant_id}")
            after = self._merchant_from(form, before or {})
            shown.update(after)
            if new and after["id"] in index:
                raise ValueError(f"merchant {after['id']} exists already")
            return [*merchants, after] if new else [after if m is before else m for m in merchants], before, after

        try:
            action = "merchant.create" if new else "merchant.edit"
            version = await self._change("merchants", seen, user, action, "", change)
        except _REFUSED as exc:
            return Saved(MerchantEdit(shown, seen, new), str(exc))
        return Saved(MerchantEdit(shown, version, False))

    def _merchant_from(self, form: MultiMapping[Any], base: dict[str, Any]) -> dict[str, Any]:
        def text(name: str) -> str:
            return str(form.get(name, "")).strip()

        merchant = dict(base)  # what the form does not show (the API key, the onboarding day) stays
        merchant["id"] = base.get("id") or text("id")
        if not base:  # a new merchant starts today: the risk rules for new merchants apply to it
            merchant["onboarded"] = dt.datetime.now(CST).date().isoformat()
        merchant |= {
            "name": text("name"),
            "suspended": form.get("suspended") == "on",
            "mcc": text("mcc"),
            "settlement": text("settlement") or "T1",
            "notify_url": text("notify_url"),
            "channels": [c for c in self._channels if form.get(f"takes_{c}") == "on"],
            "channel_ids": {c: text(f"id_{c}") for c in self._channels if text(f"id_{c}")},
            "rate_per_s": {c: _number(text(f"rate_{c}"), f"rate at {c}") for c in self._channels if text(f"rate_{c}")},
            "fee_per_10000": {c: _whole(text(f"fee_{c}"), f"fee at {c}") for c in self._channels if text(f"fee_{c}")},
        }
        return merchant

    # -- terminals --------------------------------------------------------------------------

    async def terminals(self) -> tuple[list[Terminal], int]:
        """The terminals in force, and the version of the journal's (0: the file's)."""
        return (await self.config()).terminals, (await versions(self._pool))["terminals"]

    async def save_terminal(self, terminal_id: str, form: MultiMapping[Any], user: str) -> str:
        """The terminal ``terminal_id`` (``new``: a new one) as the form gives it, kept and
        audited; "" when done, else why not. A new terminal needs its master key in the key store
        first (``paysw keys``, a key ceremony: the console never takes a key), as at start."""
        new = terminal_id == NEW
        given = str(form.get("id", "")).strip()[:16] if new else terminal_id
        if new and not re.fullmatch(r"[0-9A-Za-z]{8}", given):
            return f"$.terminals: a terminal id is 8 letters or digits, not {given!r}"
        config = await self.config()
        if new and not config.security.allow_terminals_without_mac and not await self._has_master_key(given):
            return f"terminal {given}: no master key (tmk:{given}) in the key store: load it with paysw keys first"

        def change(terminals: list[dict[str, Any]]) -> tuple[Any, Any, Any]:
            index = {t["id"]: i for i, t in enumerate(terminals)}
            if new and given in index:
                raise ValueError(f"terminal {given} exists already")
            if not new and given not in index:
                raise ValueError(f"no terminal {given}")
            before = None if new else terminals[index[given]]
            after = (before or {}) | {
                "id": given,
                "merchant": str(form.get("merchant", "")).strip()[:15],
                "mac_algorithm": str(form.get("mac_algorithm", "x9.19")),
                "suspended": form.get("suspended") == "on",
            }
            return [*terminals, after] if new else [after if t is before else t for t in terminals], before, after

        try:
            action = "terminal.create" if new else "terminal.edit"
            await self._change("terminals", version_of(form), user, action, given, change)
        except _REFUSED as exc:
            return str(exc)
        return ""

    async def _has_master_key(self, terminal_id: str) -> bool:
        return await self._pool.fetchval("SELECT EXISTS (SELECT 1 FROM hsm_key WHERE label = $1)", f"tmk:{terminal_id}")

    # -- routing, limits, rules ----------------------------------------------------------------

    async def routing(self) -> tuple[RoutingSection, int]:
        """The routing in force, and the version of the journal's (0: the file's)."""
        return (await self.config()).routing, (await versions(self._pool))["routing"]

    async def set_gray(self, channel: str, percent_text: str, seen: int, user: str) -> str:
        """The gray route of ``channel`` moved to ``percent_text`` percent of the merchants, kept
        and audited; "" when done, else why not."""
        if not percent_text.isdigit() or not 0 <= int(percent_text) <= 100:
            return f"a percentage is a whole number from 0 to 100, not {percent_text[:10]!r}"

        def change(routing: dict[str, Any]) -> tuple[Any, Any, Any]:
            gray = next((g for g in routing.get("gray", []) if g["channel"] == channel), None)
            if gray is None:
                raise ValueError(f"no gray route for {channel}")
            before = dict(gray)
            gray["percent"] = int(percent_text)
            return routing, before, gray

        try:
            await self._change("routing", seen, user, "routing.gray", channel, change)
        except _REFUSED as exc:
            return str(exc)
        return ""

    async def limits(self) -> tuple[dict[str, dict[str, Any]], int]:
        """Each channel's live limits in force (``switch.live.LIMITS``), and the version of the
        journal's (0: the file's)."""
        config = await self.config()
        version = (await versions(self._pool))["limits"]
        return {name: limits_of(channel) for name, channel in config.channels.items()}, version

    async def set_limits(self, channel: str, form: MultiMapping[Any], user: str) -> str:
        """``channel``'s limits and breaker as the form gives them, kept and audited; "" when done,
        else why not (the field's JSON path, from the whole configuration's check)."""
        if channel not in self._channels:
            return f"no channel {channel}"

        def change(limits: dict[str, Any]) -> tuple[Any, Any, Any]:
            before = limits.get(channel)
            after = {field: _figure(form, field) for field in LIMITS if field != "breaker"}
            after["breaker"] = {f: _figure(form, f"breaker.{f}") for f in BreakerSettings.__struct_fields__}
            return limits | {channel: after}, before, after

        try:
            await self._change("limits", version_of(form), user, "channel.limits", channel, change)
        except _REFUSED as exc:
            return str(exc)
        return ""

    async def rules(self) -> tuple[str, list[Any], int, str]:
        """The risk rules in force as TOML, and one by one; the version of the journal's (0: the
        rules file's); and why they could not be read, if so."""
        version = (await versions(self._pool))["rules"]
        try:
            _, rules = await self._in_force()
        except ConfigError as exc:
            return "", [], version, str(exc)
        if rules is None:
            return "", [], version, "the configuration names no rules file ([risk] rules)"
        return rules_toml(rules), rules.rules, version, ""

    async def set_rules(self, text: str, seen: int, user: str, none_meant: bool) -> str:
        """The risk rules replaced by ``text`` (TOML, as the rules file), checked against the
        configuration in force, kept and audited; "" when done, else why not. No rules at all
        only when ``none_meant``: an empty form is more often a mistake."""
        if len(text) > MAX_RULES_TEXT:
            return f"the rules: longer than {MAX_RULES_TEXT:,} characters: edit the rules file instead"
        try:
            rules = msgspec.toml.decode(text.encode(), type=RuleSet)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            return f"the rules: {exc}"
        if not rules.rules and not none_meant:
            return "the rules: none are left: tick \"no rules at all\" if that is meant"
        after = msgspec.to_builtins(rules)
        try:
            await self._change("rules", seen, user, "risk.rules", "rules", lambda before: (after, before, after))
        except _REFUSED as exc:
            return str(exc)
        return ""


def rules_toml(rules: RuleSet) -> str:
    """``rules`` as a rules file has them (TOML; a field with no value, or an empty one, left out:
    the schema's defaults)."""
    return msgspec.toml.encode(_valued(msgspec.to_builtins(rules))).decode()


def _valued(value: Any) -> Any:
    if isinstance(value, dict):
        valued = {k: _valued(v) for k, v in value.items()}
        return {k: v for k, v in valued.items() if v not in (None, "", {})}
    if isinstance(value, list):
        return [_valued(v) for v in value]
    return value


def version_of(form: MultiMapping[Any]) -> int:
    return int(form["version"]) if str(form.get("version", "")).isdigit() else 0


def _figure(form: MultiMapping[Any], name: str) -> int | float:
    """A number of the limits' form: a whole one as such (for the fields that take only those)."""
    text = str(form.get(name, "")).strip()
    return int(text) if re.fullmatch(r"[0-9]{1,9}", text) else _number(text, name)


def _number(text: str, what: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"{what}: not a number: {text[:20]!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{what}: not a number: {text[:20]!r}")
    return number


def _whole(text: str, what: str) -> int:
    if not re.fullmatch(r"[0-9]{1,6}", text):
        raise ValueError(f"{what}: not a whole number: {text[:20]!r}")
    return int(text)
