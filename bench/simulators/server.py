"""One channel simulator: an aiohttp server for one channel's pay call.

It checks the switch's signature with the switch's key (a bad one gets the channel's own error
answer), decides the outcome from the payment code (``outcomes``), keeps a ledger so a resent
order gets the same outcome, and signs its answer with the channel's key.

``/_sim/stats`` counts what it saw; with an audit database URL, ``/_sim/audit`` lists for each
pay request whether the switch's journal row already existed when the request arrived (the
write-ahead invariant, observed from the channel's side).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from typing import Annotated

import asyncpg
import msgspec
from aiohttp import web
from msgspec import Meta, Struct

from actors.settings import ChannelKeys
from bench.simulators.outcomes import is_slow, verdict_for
from hsm import SoftwareHsm
from protocols.channels import module_of
from protocols.channels.base import ChannelVerdict, PayRequestSeen


class SimulatorSection(Struct, forbid_unknown_fields=True, kw_only=True):
    kind: str
    listen: Annotated[str, Meta(pattern=r"^[^:\s]+:\d{1,5}$")]
    latency_ms: Annotated[float, Meta(ge=0)] = 2.0
    slow_ms: Annotated[float, Meta(ge=0)] = 3000.0
    keys: ChannelKeys  # sign: the channel's own key; verify: the switch's key


class SimulatorConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    simulators: dict[str, SimulatorSection]
    base_dir: str = ""


def load_simulator_config(path: str) -> SimulatorConfig:
    from pathlib import Path

    from switch.config import ConfigError

    p = Path(path)
    try:
        config = msgspec.toml.decode(p.read_bytes(), type=SimulatorConfig)
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror}") from None
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ConfigError(f"{p}: {exc}") from None
    return msgspec.structs.replace(config, base_dir=str(p.resolve().parent))


class Simulator:
    def __init__(self, name: str, section: SimulatorSection, base_dir: str, audit_dsn: str = "") -> None:
        module = module_of(section.kind)
        self.name = name
        self.side = module.channel_side
        hsm = SoftwareHsm(base_dir)
        self._sign = hsm.signer(section.keys.sign_algorithm, section.keys.sign_key)
        self._verify = hsm.verifier(section.keys.verify_algorithm, section.keys.verify_key)
        self._latency = section.latency_ms / 1000
        self._slow = section.slow_ms / 1000
        self._ledger: dict[str, ChannelVerdict] = {}
        self._ids = itertools.count(1)
        self.stats: Counter[str] = Counter()
        self._audit_dsn = audit_dsn
        self._audit_pool: asyncpg.Pool | None = None
        self.audit: list[dict[str, object]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(self.side.pay_path, self.pay)
        app.router.add_get("/_sim/stats", self.get_stats)
        app.router.add_get("/_sim/audit", self.get_audit)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, _: web.Application) -> None:
        if self._audit_dsn:
            self._audit_pool = await asyncpg.create_pool(self._audit_dsn, min_size=1, max_size=4)

    async def _stop(self, _: web.Application) -> None:
        if self._audit_pool is not None:
            await self._audit_pool.close()

    async def pay(self, request: web.Request) -> web.Response:
        body = await request.read()
        seen = self.side.read_pay(body, request.headers, self._verify)
        if isinstance(seen, str):
            self.stats["rejected"] += 1
            return _response(self.side.write_error(seen, self._sign))
        if self._audit_pool is not None:
            await self._record_audit(seen)
        verdict = self._ledger.get(seen.out_trade_no)
        if verdict is None:
            verdict = ChannelVerdict(verdict_for(seen.auth_code), self._transaction_id())
            self._ledger[seen.out_trade_no] = verdict
        self.stats[verdict.status] += 1
        delay = self._latency + (self._slow if is_slow(seen.auth_code) else 0.0)
        if delay:
            await asyncio.sleep(delay)
        return _response(self.side.write_pay(seen, verdict, self._sign))

    async def _record_audit(self, seen: PayRequestSeen) -> None:
        assert self._audit_pool is not None
        state = await self._audit_pool.fetchval("SELECT state FROM txn WHERE out_trade_no = $1", seen.out_trade_no)
        self.audit.append({"out_trade_no": seen.out_trade_no, "journal_state": state, "at": time.time()})

    def _transaction_id(self) -> str:
        return f"{self.name[:2].upper()}{time.strftime('%Y%m%d')}{next(self._ids):012d}"

    async def get_stats(self, _: web.Request) -> web.Response:
        return web.json_response(dict(self.stats))

    async def get_audit(self, _: web.Request) -> web.Response:
        return web.json_response(self.audit)


def _response(answer) -> web.Response:
    return web.Response(status=answer.status, body=answer.body, headers=dict(answer.headers))
