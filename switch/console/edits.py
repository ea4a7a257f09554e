"""The configuration as the console shows and edits it (merchants, gray routes; terminals shown):
the configuration in force (the file's, with the journal's live sections over it: ``switch.live``).
An edit is checked as a reload checks (the whole configuration, the risk rules against it), kept
in the journal with the audit row in one transaction, and broadcast to every front end, which
applies it within a second or two with no restart. The first edit of a section seeds the
journal's from the file; from then on the journal's is the one in force."""

from __future__ import annotations

import datetime as dt
import math
import re
from pathlib import Path
from typing import Any, NamedTuple

import asyncpg
import msgspec
from multidict import MultiMapping

from protocols.statements import CST
from risk.rules import RulesError, load_rules
from switch.config import Config, ConfigError, Merchant, RoutingSection, Terminal, known_names, load_config
from switch.console.audit import Entry, record
from switch.live import EditConflict, current, keep_section, kept_sections, overlaid, versions

NEW = "new"


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
    def __init__(self, pool: asyncpg.Pool, config_file: Path) -> None:
        self._pool = pool
        self._file = config_file
        self._channels = list(load_config(config_file).channels)  # channels change only with a restart

    def channel_names(self) -> list[str]:
        return self._channels

    async def _in_force(self) -> Config:
        return await current(self._pool, load_config(self._file))

    async def listed(self) -> Listed:
        config = await self._in_force()
        version = (await versions(self._pool))["merchants"]
        return Listed(config.merchants, version > 0, version)

    async def terminals(self) -> list[Terminal]:
        return (await self._in_force()).terminals

    async def edit(self, merchant_id: str) -> MerchantEdit | None:
        version = (await versions(self._pool))["merchants"]
        if merchant_id == NEW:
            return MerchantEdit({"id": "", "name": "", "channels": [], "settlement": "T1"}, version, True)
        found = next((m for m in (await self._in_force()).merchants if m.id == merchant_id), None)
        return None if found is None else MerchantEdit(msgspec.to_builtins(found), version, False)

    async def save(self, merchant_id: str, form: MultiMapping[Any], user: str) -> Saved:
        """The merchant ``merchant_id`` (``new``: a new one) as the form gives it, kept and audited."""
        new = merchant_id == NEW
        seen = int(form["version"]) if str(form.get("version", "")).isdigit() else 0
        file_config = load_config(self._file)
        after: dict[str, Any] = {"id": merchant_id}
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                kept = await kept_sections(conn)
                merchants = kept.get("merchants") or msgspec.to_builtins(file_config.merchants)
                index = {m["id"]: i for i, m in enumerate(merchants)}
                before = None if new else merchants[index[merchant_id]] if merchant_id in index else None
                if not new and before is None:
                    return Saved(MerchantEdit({"id": merchant_id}, seen, new), f"no merchant {merchant_id}")
                after = self._from_form(form, before or {})
                edit = MerchantEdit(after, seen, new)
                if new and after["id"] in index:
                    return Saved(edit, f"merchant {after['id']} exists already")
                edited = [*merchants, after] if new else [after if m is before else m for m in merchants]
                self._check(file_config, kept | {"merchants": edited})
                version = await keep_section(conn, "merchants", edited, seen, f"console:{user}")
                action = "merchant.create" if new else "merchant.edit"
                await record(conn, Entry(user, action, after["id"], before=before, after=after))
        except (ConfigError, RulesError, EditConflict, ValueError) as exc:
            return Saved(MerchantEdit(after, seen, new), str(exc))
        return Saved(MerchantEdit(after, version, False))

    async def rules(self) -> tuple[list[Any], str]:
        """The risk rules in force (the file's, read against the configuration in force), and why
        they could not be read, if so."""
        config = await self._in_force()
        if not config.risk.rules:
            return [], "the configuration names no rules file ([risk] rules)"
        try:
            return load_rules(Path(config.base_dir) / config.risk.rules, *known_names(config)).rule, ""
        except RulesError as exc:
            return [], str(exc)

    async def routing(self) -> tuple[RoutingSection, int]:
        """The routing in force, and the version of the journal's (0: the file's)."""
        return (await self._in_force()).routing, (await versions(self._pool))["routing"]

    async def set_gray(self, channel: str, percent_text: str, seen: int, user: str) -> str:
        """The gray route of ``channel`` moved to ``percent_text`` percent of the merchants, kept
        and audited; "" when done, else why not."""
        if not percent_text.isdigit() or not 0 <= int(percent_text) <= 100:
            return f"a percentage is a whole number from 0 to 100, not {percent_text[:10]!r}"
        file_config = load_config(self._file)
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                kept = await kept_sections(conn)
                routing = kept.get("routing") or msgspec.to_builtins(file_config.routing)
                gray = next((g for g in routing.get("gray", []) if g["channel"] == channel), None)
                if gray is None:
                    return f"no gray route for {channel}"
                before = dict(gray)
                gray["percent"] = int(percent_text)
                self._check(file_config, kept | {"routing": routing})
                await keep_section(conn, "routing", routing, seen, f"console:{user}")
                await record(conn, Entry(user, "routing.gray", channel, before=before, after=gray))
        except (ConfigError, RulesError, EditConflict) as exc:
            return str(exc)
        return ""

    def _from_form(self, form: MultiMapping[Any], base: dict[str, Any]) -> dict[str, Any]:
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

    @staticmethod
    def _check(file_config: Config, sections: dict[str, Any]) -> None:
        """The whole configuration with ``sections`` over the file's, as a reload checks it."""
        candidate = overlaid(file_config, sections)
        if candidate.risk.rules:
            load_rules(Path(candidate.base_dir) / candidate.risk.rules, *known_names(candidate))


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
