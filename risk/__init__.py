"""Risk control before the channel: rules as data (``risk.rules``), decided in memory
(``risk.engine``) against the black and grey lists (``risk.lists``), reloaded live (``Risk``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import asyncpg

from risk.engine import NO_HITS, Decision, Engine, Facts
from risk.lists import NOTIFY_CHANNEL, Lists, read_lists
from risk.rules import RiskSection, RulesError, RuleSet, load_rules

log = logging.getLogger("paysw.risk")
RELOAD_SETTLE_S = 0.2  # notifications that come together are one reload


class Risk:
    """The rules and lists a front end decides with. A reload reads the rules file and the lists
    whole and swaps them in only when the file is valid: an invalid file leaves the running rules
    as they were, and says why (logged and counted)."""

    def __init__(
        self,
        section: RiskSection,
        base_dir: str,
        known: tuple[set[str], set[str], set[str]],
        on_reload: Callable[[str, int], None] = lambda result, rules: None,
    ) -> None:
        self._path = Path(base_dir) / section.rules if section.rules else None
        self._known = known  # the channels, merchants and terminals a scope may name
        self._on_reload = on_reload
        self.engine = Engine(RuleSet())
        self.lists = Lists()
        self._listener: asyncpg.Connection | None = None
        self._pending: asyncio.TimerHandle | None = None

    def load_rules(self) -> None:
        """Read the rules file (at start: ``RulesError`` stops the switch)."""
        if self._path is not None:
            self.engine = Engine(load_rules(self._path, *self._known))

    def decide(self, facts: Facts) -> Decision:
        return self.engine.decide(facts, self.lists) if len(self.engine) else NO_HITS

    async def start(self, pool: asyncpg.Pool, url: str) -> None:
        """Read the lists, then follow changes: ``paysw risk list`` and ``paysw risk reload``
        notify every front end through PostgreSQL."""
        self._pool = pool
        self.lists = await read_lists(pool)
        self._listener = await asyncpg.connect(url)
        await self._listener.add_listener(NOTIFY_CHANNEL, self._notified)

    def _notified(self, *_: object) -> None:
        if self._pending is None:
            self._pending = asyncio.get_running_loop().call_later(RELOAD_SETTLE_S, self._reload_soon)

    def _reload_soon(self) -> None:
        self._pending = None
        asyncio.get_running_loop().create_task(self.reload())

    async def reload(self) -> bool:
        """Rules file and lists read again; False (and nothing changed) when the file is invalid."""
        try:
            engine = Engine(load_rules(self._path, *self._known)) if self._path is not None else self.engine
        except RulesError as exc:
            log.error("risk rules not reloaded, the running ones stay", extra={"error": str(exc)})
            self._on_reload("invalid", len(self.engine))
            return False
        try:
            lists = await read_lists(self._pool)
        except Exception:
            log.exception("risk lists not reloaded, the running ones stay")
            self._on_reload("failed", len(self.engine))
            return False
        self.engine, self.lists = engine, lists
        log.info("risk rules and lists reloaded", extra={"rules": len(engine), "listed": len(lists)})
        self._on_reload("ok", len(engine))
        return True

    async def stop(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
        if self._listener is not None:
            await self._listener.close()
