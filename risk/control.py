"""What a front end decides with: the rules in force and the lists, reloaded live, and the risk
actors' counts asked and told (``Risk``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import asyncpg

from protocols import response_codes as rc
from risk.actor import shard_of, subjects_of
from risk.client import CounterShards, Unreachable, spread
from risk.engine import Decision, Engine, Facts, Hit, Scope
from risk.lists import NOTIFY_CHANNEL, Lists, read_lists
from risk.messages import ADD, ADD_REFUND, CHECK, REMOVE, Answer, Ask
from risk.rules import RulesError, RuleSet
from switch.journal.machine import PURCHASE, REFUND
from switch.journal.store import Moved

log = logging.getLogger("paysw.risk")
RELOAD_SETTLE_S = 0.2  # notifications that come together are one reload
# The counters could not answer in time and the rule set fails closed: declined, "try again later".
UNREACHABLE = Hit("counters-unreachable", "decline", "enforce", rc.CHANNEL_UNAVAILABLE)
_COUNTED_MOVES = frozenset({"APPROVED", "REVERSED", "VOIDED", "CANCELLED"})
_COUNTED_TYPES = frozenset({PURCHASE, REFUND})


def _retrieved(task: asyncio.Future[Decision]) -> None:
    if not task.cancelled():
        task.exception()


class Risk:
    """The rules and lists a front end decides with. A reload reads the rules in force (the rules
    file's, or the journal's: ``switch.live``) and the lists whole, and swaps them in only when the
    rules are valid: invalid ones leave the running rules as they were, and say why (logged and
    counted)."""

    def __init__(
        self,
        on_reload: Callable[[str, int], None] = lambda result, rules: None,
        on_unreachable: Callable[[str], None] = lambda policy: None,
    ) -> None:
        self._on_reload = on_reload
        self._on_unreachable = on_unreachable
        self.counters: CounterShards | None = None  # the risk actors, once started
        self.engine = Engine(RuleSet())
        self.lists = Lists()
        self._read_rules: Callable[[], Awaitable[RuleSet | None]] | None = None
        self._generation = 0  # of the rules ``use`` set: a reload that read older ones leaves newer ones
        self._listener: asyncpg.Connection | None = None
        self._pending: asyncio.TimerHandle | None = None
        self._reloads: set[asyncio.Task[bool]] = set()  # a notification's, under way (held: not collected)

    def use(self, rules: RuleSet | None) -> None:
        """Decide by ``rules`` from now on (None: no rules)."""
        self.engine = Engine(rules or RuleSet())
        self._generation += 1

    def begin(self, facts: Facts) -> asyncio.Future[Decision]:
        """The payment's decision, on its way: the rules that read it alone are decided now, and
        (unless one of those declines it already) the risk actors holding its subjects are asked
        now, so that their answer comes while the write-ahead commits."""
        loop = asyncio.get_running_loop()
        engine = self.engine
        scope = engine.scope(facts)
        decision = engine.decide(facts, self.lists, scope)
        if not scope.counted or decision.decline is not None or self.counters is None:
            done = loop.create_future()
            done.set_result(decision)
            return done
        subjects = subjects_of(facts.code_fingerprint, facts.terminal, facts.merchant, facts.refund)
        asks = {
            shard: Ask(0, CHECK, mine, "", facts.amount_fen, facts.merchant, facts.terminal, scope.checks)
            for shard, mine in spread(subjects, self.counters.shards, shard_of).items()
            if any(s.per in scope.pers for s in mine)
        }
        judged = loop.create_task(self._judged(engine, decision, scope, self.counters.ask(asks)))
        judged.add_done_callback(_retrieved)  # a transaction that ended before its risk step leaves it
        return judged

    async def decide(self, facts: Facts) -> Decision:
        return await self.begin(facts)

    async def _judged(
        self, engine: Engine, decision: Decision, scope: Scope, answered: Awaitable[list[Answer]]
    ) -> Decision:
        try:
            answers = await answered
        except Unreachable as exc:
            self._on_unreachable(engine.rules.fail)
            log.warning("risk counters unreachable", extra={"policy": engine.rules.fail, "error": str(exc)})
            if engine.rules.fail == "closed":
                return Decision((*decision.hits, UNREACHABLE))
            return decision
        fired = [(scope.counted[rule_id], code) for answer in answers for rule_id, code in answer.fired]
        return Decision((*decision.hits, *(Hit(r.id, r.action, r.mode, r.code or code) for r, code in fired)))

    def moved(self, moves: list[Moved]) -> None:
        """The journal's moves (``Journal.on_moved``): a purchase or refund approved counts from
        now on; one reversed, voided or cancelled after it was counted no longer does."""
        if self.counters is None:
            return
        told = []
        for move in moves:
            if move.txn_type not in _COUNTED_TYPES or move.state not in _COUNTED_MOVES:
                continue
            refund = move.txn_type == REFUND
            op = REMOVE if move.state != "APPROVED" else ADD_REFUND if refund else ADD
            subjects = subjects_of(move.pan_hash.hex(), move.terminal_id, move.merchant_id, refund)
            told += [
                (shard, Ask(0, op, mine, move.rrn, move.amount_fen, move.merchant_id, move.terminal_id))
                for shard, mine in spread(subjects, self.counters.shards, shard_of).items()
            ]
        if told:
            self.counters.tell(told)

    async def start(self, pool: asyncpg.Pool, url: str, read_rules: Callable[[], Awaitable[RuleSet | None]]) -> None:
        """Read the lists, then follow changes: ``paysw risk list`` and ``paysw risk reload``
        notify every front end through PostgreSQL; ``read_rules`` reads the rules in force again
        (``RulesError`` when they are invalid)."""
        self._pool = pool
        self._read_rules = read_rules
        self.lists = await read_lists(pool)
        self._listener = await asyncpg.connect(url)
        await self._listener.add_listener(NOTIFY_CHANNEL, self._notified)

    def _notified(self, *_: object) -> None:
        if self._pending is None:
            self._pending = asyncio.get_running_loop().call_later(RELOAD_SETTLE_S, self._reload_soon)

    def _reload_soon(self) -> None:
        self._pending = None
        task = asyncio.get_running_loop().create_task(self.reload())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def reload(self, rules: bool = True) -> bool:
        """The rules in force (unless ``rules`` is False: the caller has just set them) and the
        lists read again; False (and nothing changed) when the rules are invalid."""
        engine, generation = None, self._generation
        if rules and self._read_rules is not None:
            try:
                engine = Engine(await self._read_rules() or RuleSet())
            except RulesError as exc:
                log.error("risk rules not reloaded, the running ones stay", extra={"error": str(exc)})
                self._on_reload("invalid", len(self.engine))
                return False
            except Exception:  # the journal
                log.exception("risk rules not reloaded, the running ones stay")
                self._on_reload("failed", len(self.engine))
                return False
        try:
            lists = await read_lists(self._pool)
        except Exception:
            log.exception("risk lists not reloaded, the running ones stay")
            self._on_reload("failed", len(self.engine))
            return False
        if engine is not None and generation == self._generation:  # else a configuration reload set newer ones
            self.engine = engine
        self.lists = lists
        log.info("risk rules and lists reloaded", extra={"rules": len(self.engine), "listed": len(lists)})
        self._on_reload("ok", len(self.engine))
        return True

    async def stop(self) -> None:
        if self.counters is not None:
            await self.counters.close()
        if self._pending is not None:
            self._pending.cancel()
        if self._listener is not None:  # nothing to flush: a graceful close waits on the server, unbounded
            self._listener.terminate()
        for task in self._reloads:  # before the journal closes; a reload applies nothing until its last step
            task.cancel()
