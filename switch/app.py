"""Assembling and running the switch: journal, Ray and channel actors, gateways, TCP front end,
admin endpoint; and stopping all of it cleanly."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import signal
import socket
import ssl
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import asyncpg
import msgspec
import uvloop
from aiohttp import web

from actors.link import client_tls as link_client_tls
from actors.runtime import channel_actor, init_ray, node_on_loopback
from actors.settings import LinkTls
from hsm import Hsm, KeyRecord, open_hsm
from risk.actor import risk_actor
from risk.client import CounterShards, Unreachable
from risk.control import Risk
from risk.messages import CHECK, Ask
from risk.rules import RulesError, RuleSet, read_rules
from switch.admin import admin_app, start_admin
from switch.admin_tls import renew_admin_tls
from switch.admin_tls import server_tls as admin_server_tls
from switch.admin_token import switch_token
from switch.config import (
    ChannelSection,
    Config,
    ConfigError,
    RaySection,
    host_port,
    link_tls,
    load_config,
    reconciled,
    sizing_warnings,
    worker_share,
)
from switch.frontend import Drained, TerminalServer, serve_terminals
from switch.gateway import ChannelGateway
from switch.journal import Journal
from switch.journal.embedded import EmbeddedPostgres
from switch.journal.orders import set_endpoints
from switch.journal.roles import runtime_url, take_owner_urls
from switch.keystore import KeyStore, actor_setup, configured_keys, provision
from switch.lifecycle import Processor
from switch.live import LIMITS, NOTIFY_CHANNEL, in_force, kept_sections, restart_needed, rules_in_force
from switch.lograte import RateLimitedLog
from switch.merchant.api import MerchantApi
from switch.merchant.api import start as start_merchant_api
from switch.merchant.notices import Notices
from switch.merchant.orders import Orders
from switch.merchant.outbox import Outbox
from switch.merchant.signing import SIGN_TYPES
from switch.metrics import Metrics
from switch.recon.batch import recon_gauges
from switch.recon.handling import Threshold
from switch.recon.scheduler import HourlyReconciler, parse_in_ray
from switch.resolver import Resolver
from switch.shedding import LoadShedder
from switch.terminal_keys import TerminalSecurity

log = logging.getLogger("paysw")

DATABASE_URL_ENV = "SWITCH_DATABASE_URL"
OPEN_TRANSACTIONS_EVERY_S = 5.0
YOUNG_CHECK_S = 2.0  # how often the day partitions in use are checked for missing statistics
ACTORS_READY_TIMEOUT_S = 120.0  # for every channel to have its actors linked at start


@dataclass(frozen=True)
class WorkerSeat:
    """A front end that is one of the processes of ``paysw run --workers`` (switch.workers): it
    shares the terminals' port with the others (SO_REUSEPORT) and serves its admin endpoint on a
    unix socket, for the supervisor, which serves ``admin_listen`` for all of them."""

    index: int
    admin_socket: Path


class SwitchApp:
    def __init__(
        self,
        config: Config,
        database_url: str,
        admin_token: str,
        ray_address: str = "",
        seat: WorkerSeat | None = None,
        share: int = 1,
        admin_tls: ssl.SSLContext | None = None,  # switch.admin_tls.server_tls: https on admin_listen
    ) -> None:
        self._share = share  # of ``paysw run --workers``: this front end's share of the quotas
        self._admin_tls = admin_tls
        self._file_config = config  # start puts the journal's live sections over it (switch.live)
        config = worker_share(config, share)
        self.config = config
        self._seat = seat
        self._database_url = database_url
        self._admin_token = admin_token  # operator actions need it (switch.admin_token)
        self._ray_address = ray_address or config.ray.address
        self.metrics = Metrics()
        self.risk = Risk(
            self.metrics.risk_reloaded,
            lambda policy: self.metrics.risk_unreachable.labels(policy).inc(),
        )
        self.journal: Journal | None = None
        self.gateways: dict[str, ChannelGateway] = {}
        self._server: TerminalServer | None = None
        self._admin = None
        self._started_ray = False
        self._upkeep: asyncio.Task[None] | None = None
        self._upkeep_log = RateLimitedLog(600)
        self._queues: asyncio.Task[None] | None = None
        self._recon: asyncio.Task[None] | None = None
        self.resolver: Resolver | None = None
        self.fingerprint: Callable[[str], bytes] | None = None  # the keyed fingerprint of codes and cards
        self.shedder: LoadShedder | None = None
        self._outbox: Outbox | None = None
        self._merchant_api: web.AppRunner | None = None
        self._processor: Processor | None = None
        self._security: TerminalSecurity | None = None
        self._api: MerchantApi | None = None
        self._reloading = asyncio.Lock()
        self._reload_listener: asyncpg.Connection | None = None
        self._background: set[asyncio.Task[bool]] = set()
        self._reload_waiting = False
        self._asked: set[str] = set()  # who asked for the reload waiting (NOTIFY payloads)
        self._front_end = f"{socket.gethostname()}/{os.getpid()} {config.switch.listen}"
        self._stopping = False
        self.ready = False

    async def start(self) -> None:
        cfg = self.config
        for warning in sizing_warnings(cfg):
            log.warning("configuration: " + warning)
        if cfg.risk.rules:  # before anything starts: a rules file that cannot be read stops it here
            try:
                read_rules(Path(cfg.base_dir) / cfg.risk.rules)
            except RulesError as exc:
                raise ConfigError(f"$.risk.rules: {exc}") from None
        self.journal = await Journal.open(
            self._database_url,
            cfg.database.pool_size,
            cfg.database.group_commit_max,
            on_batch=self.metrics.journal_batch_done,
            ahead_days=cfg.database.partitions_ahead_days,
            writers=cfg.database.writers,
            linger_s=cfg.database.linger_ms / 1000,
        )
        # Then the journal's live sections over them, checked whole again.
        read, rules = in_force(self._file_config, await self._kept())
        self.config = cfg = worker_share(read, self._share)
        self.risk.use(rules)
        self._upkeep = asyncio.get_running_loop().create_task(self._partition_upkeep())
        self._queues = asyncio.get_running_loop().create_task(self._watch_open_transactions())
        hsm = open_hsm(cfg.security.hsm, cfg.base_dir, demo=cfg.switch.demo)
        store = KeyStore(self.journal.pool)
        if cfg.security.key_manifest:
            imported = await provision(store, hsm, Path(cfg.base_dir) / cfg.security.key_manifest)
            if imported:
                log.info("keys imported from the manifest", extra={"labels": imported})
        keys = await configured_keys(store, cfg)
        zpks = {name: keys[ch.pin_key] for name, ch in cfg.channels.items() if ch.pin_key}
        security = TerminalSecurity(
            hsm, store, {t.id: t for t in cfg.terminals}, zpks, cfg.switch.request_deadline_ms / 1000, cfg.security
        )
        await security.load()  # before Ray: terminals without a master key are a configuration error
        self._started_ray = init_ray(self._ray_address, cfg.ray.namespace)
        tls = link_tls(cfg)
        check_links_across_nodes(cfg.ray, tls, node_on_loopback())
        check_placement(cfg)
        for name, channel in cfg.channels.items():
            self.gateways[name] = ChannelGateway(
                name,
                channel,
                functools.partial(channel_actor, name, actor_setup(cfg, name, keys), link_tls=tls),
                cfg.switch.max_batch,
                on_circuit=self.metrics.circuit_changed,
                on_restart=self.metrics.actor_restarted,
                merchant_rates={m.id: m.rate_per_s[name] for m in cfg.merchants if name in m.rate_per_s},
                link_tls=link_client_tls(tls) if tls is not None else None,
            )
        self.metrics.watch_gateways(self.gateways)
        self.metrics.from_zero(self.gateways)
        starting = [all_linked(self.gateways, ACTORS_READY_TIMEOUT_S)]
        if rules is not None:
            starting.append(self._start_counters(tls))
        await all_of(starting)  # side by side: starting an actor is mostly waiting on Ray
        self.fingerprint = fingerprint = hsm.fingerprinter(keys[cfg.security.pan_hash_key])
        self.shedder = LoadShedder(
            cfg.switch.max_in_flight,
            cfg.switch.shed_loop_lag_ms,
            cfg.switch.shed_queue_delay_ms,
            cfg.switch.shed_queue_interval_ms,
        )
        self.shedder.start()
        self.metrics.watch_shedder(self.shedder)
        await self.risk.start(self.journal.pool, self._database_url, self._rules)
        self._processor = processor = Processor(
            cfg, self.journal, self.gateways, self.metrics, fingerprint, self.shedder, security, self.risk
        )
        self._security = security
        merchant_ids = _channel_ids(cfg)
        await self._start_merchant_side(hsm, keys, processor)
        self.resolver = Resolver(self.journal, self.gateways, dict(cfg.channels), merchant_ids, self.metrics)
        self.resolver.start()  # also recovery: orphans of a crash are due once their deadline has passed
        if cfg.recon.schedule_hourly:
            self._recon = asyncio.get_running_loop().create_task(self._hourly_reconciler().run_forever())
        self._server = await serve_terminals(processor, self.metrics, cfg.switch, reuse_port=self._seat is not None)
        admin_host, admin_port = host_port(cfg.switch.admin_listen)
        admin = admin_app(self.metrics, lambda: self.ready, self.gateways, self._admin_token)
        admin_socket = self._seat.admin_socket if self._seat is not None else None
        self._admin = await start_admin(admin_host, admin_port, admin, admin_socket, self._admin_tls)
        self._reload_listener = await asyncpg.connect(self._database_url)
        await self._reload_listener.add_listener(NOTIFY_CHANNEL, lambda _, pid, __, by: self._reload_soon(pid, by))
        # What start made lives as long as the process: the collector's full passes leave it alone
        # (one over it stopped the event loop for 45-60 ms under load).
        gc.freeze()
        self.ready = True
        log.info(
            "switch ready",
            extra={
                "listen": cfg.switch.listen,
                "admin": str(admin_socket or cfg.switch.admin_listen),
                "channels": list(self.gateways),
            },
        )

    async def _start_counters(self, tls: LinkTls | None) -> None:
        """The risk actors (``risk.actor``), each rebuilt from the journal before it answers, and
        the journal's moves counted by them from now on."""
        assert self.journal is not None
        section = self.config.risk
        actors = [
            risk_actor(i, section.shards, self._database_url, tls, section.cpu_nice) for i in range(section.shards)
        ]
        counters = CounterShards(actors, section.counters_timeout_ms / 1000, link_client_tls(tls) if tls else None)
        counters.start()
        try:
            await _counters_answering(counters, section.shards)
        except BaseException:
            await counters.close()  # its links' tasks, not left running behind a failed start
            raise
        self.risk.counters = counters
        self.journal.on_moved = self.risk.moved

    async def _start_merchant_side(self, hsm: Hsm, keys: dict[str, KeyRecord], processor: Processor) -> None:
        """The merchants' notification URLs for the journal's outbox, the outbox's delivery, and
        the merchant API with the channels' notifications when it has a listener."""
        cfg = self.config
        assert self.journal is not None
        await set_endpoints(self.journal.pool, {m.id: m.notify_url for m in cfg.merchants if m.notify_url})
        keyed = [m for m in cfg.merchants if m.api_key]
        signers = {m.id: hsm.signer(keys[m.api_key], "hmac-sha256") for m in keyed}
        self._outbox = Outbox(self._database_url, cfg.merchant_api, signers, self.metrics)
        await self._outbox.start()
        if not cfg.merchant_api.listen:
            return
        verifiers = {
            (m.id, sign_type): hsm.verifier(keys[m.api_key], scheme)
            for m in keyed
            for sign_type, scheme in SIGN_TYPES.items()
        }
        orders = Orders(cfg, cfg.merchant_api, self.journal, self.gateways, processor)
        notices = Notices(self.journal, self.gateways, {n: ch.kind for n, ch in cfg.channels.items()}, self.metrics)
        self._api = api = MerchantApi(cfg.merchant_api, cfg.merchants, verifiers, orders, notices)
        self._merchant_api = await start_merchant_api(api, cfg.merchant_api.listen, reuse_port=self._seat is not None)

    def _hourly_reconciler(self) -> HourlyReconciler:
        cfg = self.config
        assert self.journal is not None
        return HourlyReconciler(
            self.journal.pool,
            {name: cfg.channels[name].kind for name in reconciled(cfg) if cfg.channels[name].enabled},
            lambda channel, day: self.gateways[channel].statement(day),
            lambda channel: self.gateways[channel].call_request,
            Threshold(cfg.recon.auto_max_count, cfg.recon.auto_max_fen),
            cfg.recon.grace_minutes * 60,
            cfg.recon.lookback_hours,
            parse=parse_in_ray,
        )

    async def _partition_upkeep(self) -> None:
        """Each hour, the day partitions ahead; every few seconds, a young day's statistics (see
        ``Journal.analyze_young``: the outcome's plan depends on them)."""
        created_at = time.monotonic()
        while True:
            await asyncio.sleep(YOUNG_CHECK_S)
            assert self.journal is not None
            try:
                analyzed = await self.journal.analyze_young()
                if analyzed:
                    log.info("young journal partitions analyzed", extra={"partitions": analyzed})
            except Exception as exc:
                self._upkeep_log.warn(log, "analyze", f"analyzing young partitions failed: {exc!r}")
            if time.monotonic() - created_at < 3600:
                continue
            created_at = time.monotonic()
            try:
                created = await self.journal.ensure_partitions(self.config.database.partitions_ahead_days)
                if created:
                    log.info("journal partitions created", extra={"partitions": created})
            except Exception:
                log.exception("partition upkeep failed; will retry in an hour")

    async def _watch_open_transactions(self) -> None:
        """The resolver's queues as metrics (pending, unknown, orphans, reversals to carry out), the
        dead letters open, and the reconciliation's open differences and failed batches."""
        while True:
            try:
                assert self.journal is not None
                self.metrics.set_open(await self.journal.open_by_queue())
                self.metrics.set_dead_letters(await self.journal.open_dead_letters())
                self.metrics.set_recon(*await recon_gauges(self.journal.pool))
            except Exception:
                log.exception("reading the open transactions failed; trying again shortly")
            await asyncio.sleep(OPEN_TRANSACTIONS_EVERY_S)

    def _reload_soon(self, sender: int, payload: str) -> None:
        """``paysw reload`` (by NOTIFY): one reload at a time, and notifications that come while
        one waits are one more reload, not one each."""
        log.info("configuration reload asked", extra={"by": payload[:64], "backend_pid": sender})
        self._asked.add(payload[:200])
        if self._reload_waiting:
            return
        self._reload_waiting = True
        task = asyncio.get_running_loop().create_task(self.reload())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def reload(self) -> bool:
        """The configuration file read again (``switch.live``) and, if the whole of it is valid,
        its live part applied in this front end; the risk rules and lists are read again too.
        False, with the running configuration untouched and the reason logged, when invalid."""
        async with self._reloading:
            self._reload_waiting = False
            asked, self._asked = self._asked or {"signal"}, set()
            if self._stopping:
                return False
            try:
                outcome = await self._reload_configuration()
            except Exception as exc:  # the database, the key store: nothing was applied
                self.metrics.config_reloads.labels("failed").inc()
                log.exception("configuration not reloaded, the running one stays")
                outcome = Reloaded("failed", f"{type(exc).__name__}: see the front end's log")
            if outcome.result == "ok":
                await self.risk.reload(rules=False)  # the lists; the rules are the configuration's
            renew_admin_tls(self._admin_tls, self.config)
            await self._tell_reloaded(asked, outcome)
            return outcome.result == "ok"

    async def _tell_reloaded(self, asked: set[str], outcome: Reloaded) -> None:
        """The reload's outcome in the journal, for whoever asked (``paysw reload`` waits for every
        front end's); a day's worth is kept."""
        assert self.journal is not None
        try:
            async with self.journal.pool.acquire() as conn, conn.transaction():
                await conn.execute("DELETE FROM config_reload WHERE at < now() - interval '1 day'")
                await conn.executemany(
                    "INSERT INTO config_reload AS r (asked, front_end, result, detail) VALUES ($1, $2, $3, $4) "
                    "ON CONFLICT (asked, front_end) DO UPDATE SET result = EXCLUDED.result, "
                    "detail = EXCLUDED.detail, at = now()",
                    [(a, self._front_end, outcome.result, outcome.detail[:1000]) for a in sorted(asked)],
                )  # fmt: skip
        except Exception:
            log.exception("the reload's outcome could not be written to the journal")

    async def _reload_configuration(self) -> Reloaded:
        assert self._processor is not None and self._security is not None and self.journal is not None
        try:
            file_config = load_config(self.config.source)
            kept = await self._kept()
            read, rules = in_force(file_config, kept)  # the whole, as a restart would read it
            if read.risk != self.config.risk:  # [risk] needs a restart: the running rules file's rules
                _, rules = in_force(msgspec.structs.replace(file_config, risk=self.config.risk), kept)
            read = worker_share(read, self._share)
            _channels_running(read, set(self.gateways))
            terminals = {t.id: t for t in read.terminals}
            fresh = await self._security.new_terminals(terminals)
        except ConfigError as exc:
            self.metrics.config_reloads.labels("invalid").inc()
            log.error("configuration not reloaded, the running one stays", extra={"error": str(exc)})
            return Reloaded("invalid", str(exc))
        # The one write (in one database transaction, shared by the front ends on the journal);
        # if it fails nothing is applied. Then every part at once: no await from here on.
        await set_endpoints(self.journal.pool, {m.id: m.notify_url for m in read.merchants if m.notify_url})
        self._security.set_terminals(terminals, fresh)
        self.risk.use(rules)
        later = restart_needed(self.config, read)
        live = msgspec.structs.replace(
            self.config,
            merchants=read.merchants,
            terminals=read.terminals,
            routing=read.routing,
            channels={n: _limited(ch, read.channels.get(n, ch)) for n, ch in self.config.channels.items()},
        )
        self._processor.configure(live)
        for name, gateway in self.gateways.items():
            gateway.set_limits(live.channels[name])
            gateway.set_merchant_rates({m.id: m.rate_per_s[name] for m in live.merchants if name in m.rate_per_s})
        if self.resolver is not None:
            self.resolver.set_merchant_channel_ids(_channel_ids(live))
        if self._api is not None:
            self._api.set_merchants(live.merchants)
        self.config, self._file_config = live, file_config
        self.metrics.config_reloads.labels("ok").inc()
        log.info(
            "configuration reloaded",
            extra={"merchants": len(live.merchants), "terminals": len(live.terminals), "restart_needed": later},
        )
        if later:
            log.warning("configuration changes that apply only after a restart", extra={"restart_needed": later})
        return Reloaded("ok", f"applied; these need a restart: {', '.join(later)}" if later else "applied")

    async def _kept(self) -> dict[str, Any]:
        """The live sections the journal keeps, which replace the file's (``switch.live``)."""
        assert self.journal is not None
        kept = await kept_sections(self.journal.pool)
        if kept:
            log.info("configuration sections kept in the journal replace the file's", extra={"sections": sorted(kept)})
        return kept

    async def _rules(self) -> RuleSet | None:
        """The risk rules in force, against the running configuration (``Risk.reload``)."""
        assert self.journal is not None
        return rules_in_force(self.config, await kept_sections(self.journal.pool))

    async def stop(self) -> None:
        """The drain, then the parts: /readyz says not ready and the terminals' port stops accepting
        at once (a load balancer sends no more), the terminals' requests read are answered and
        their connections closed, and what is still open (PENDING, UNKNOWN, reversals to carry
        out) stays in the journal for any front end's resolver (this one's lanes end or let go,
        ``Resolver.stop``); all within ``drain_bound_s``, past which the rest is left exactly as
        after a crash."""
        self.ready = False
        self._stopping = True  # no reload starts; one under way ends before the parts go (below)
        if self._server is not None:  # at once: nothing before the drain waits on the journal
            self._server.stop_accepting()
        if self._reload_listener is not None:  # nothing to flush: a graceful close waits on the server, unbounded
            self._reload_listener.terminate()
        loop = asyncio.get_running_loop()
        bound_s = self.config.switch.drain_bound_s()
        started = loop.time()
        log.info("draining", extra={"bound_s": bound_s})
        drained = await self._server.drain(bound_s) if self._server is not None else Drained(0, 0, 0)
        if self._recon is not None:  # before the gateways it calls through go
            self._recon.cancel()
        if self.resolver is not None:  # what it holds, let go or lapsed (resolver.LEASE_S), is any resolver's
            await self.resolver.stop(until=started + bound_s)
        # Channel calls past their deadline may still bring a late answer to keep in the journal.
        while any(g.in_flight for g in self.gateways.values()) and loop.time() < started + bound_s:
            await asyncio.sleep(0.05)
        log.info(
            "drained",
            extra={
                "seconds": round(loop.time() - started, 3),
                "connections_closed": drained.connections,
                "requests_finished": drained.finished,
                "left_to_resolver": drained.left,
                "channel_calls_abandoned": sum(g.in_flight for g in self.gateways.values()),
            },
        )
        if self._reloading.locked():  # a reload under way ends before the parts go, within the bound
            try:
                async with asyncio.timeout(max(0.0, started + bound_s - loop.time())), self._reloading:
                    pass
            except TimeoutError:
                log.warning("a configuration reload was still under way at the drain's bound")
        if self.shedder is not None:
            await self.shedder.stop()
        for gateway in self.gateways.values():
            await gateway.close()
        for task in (self._upkeep, self._queues):
            if task is not None:
                task.cancel()
        if self._admin is not None:
            await self._admin.cleanup()
        if self._merchant_api is not None:
            await self._merchant_api.cleanup()
        if self._outbox is not None:
            await self._outbox.stop()
        await self.risk.stop()
        if self.journal is not None:
            await self.journal.close()
        if self._started_ray:
            import ray

            ray.shutdown()


async def _counters_answering(counters: CounterShards, shards: int) -> None:
    """Every risk actor linked and answering, within ``ACTORS_READY_TIMEOUT_S`` each."""
    try:
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in counters.linked)), ACTORS_READY_TIMEOUT_S)
    except TimeoutError:
        raise RuntimeError(f"the risk actors did not open their links within {ACTORS_READY_TIMEOUT_S} s") from None
    # One answer from each shard before the switch is ready: the first answer of a fresh actor
    # is slower, and the first customers should not wait for it. On a loaded machine it may
    # miss the payments' short wait; asking again is harmless (a check counts nothing).
    deadline = asyncio.get_running_loop().time() + ACTORS_READY_TIMEOUT_S
    while True:
        try:
            await counters.ask({shard: Ask(0, CHECK, []) for shard in range(shards)})
            return
        except Unreachable as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"the risk actors did not answer within {ACTORS_READY_TIMEOUT_S} s") from None
            log.info("risk actors warming up", extra={"error": str(exc)})
            await asyncio.sleep(0.1)


def check_placement(config: Config) -> None:
    """A channel placed on nodes by a Ray resource (``node_resource``) that no node of the cluster
    offers would wait for ever: a configuration error at once instead."""
    import ray

    offered = ray.cluster_resources()
    for name, channel in config.channels.items():
        wanted = channel.actor.node_resource
        if wanted and offered.get(wanted, 0) <= 0:
            raise ConfigError(
                f"$.channels.{name}.actor.node_resource: no node of the Ray cluster offers {wanted!r} "
                f"(ray start --resources '{{\"{wanted}\": 1000}}' on the nodes meant for it)"
            )


async def all_linked(gateways: dict[str, ChannelGateway], timeout: float) -> None:
    """Once every channel's shards have a link to their actor; a RuntimeError naming the channels
    that have none after ``timeout`` seconds."""
    waits = {name: asyncio.ensure_future(gateway.linked()) for name, gateway in gateways.items()}
    _, pending = await asyncio.wait(waits.values(), timeout=timeout)
    for wait in pending:
        wait.cancel()
    if pending:
        late = [name for name, wait in waits.items() if wait in pending]
        raise RuntimeError(f"no link to the channel actors of {', '.join(late)} after {timeout:g} s (see the log)")


async def all_of(steps: list[Coroutine[Any, Any, None]]) -> None:
    """Run ``steps`` side by side; the first to fail cancels the others and raises its own error
    (a TaskGroup would raise an ExceptionGroup, and the operator read that instead of the message)."""
    tasks = [asyncio.ensure_future(step) for step in steps]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # each cancelled one has ended


def check_links_across_nodes(ray: RaySection, tls: LinkTls | None, on_loopback: bool) -> None:
    """Payments must not cross a network in clear: off loopback (this node, and so the actors,
    may be anywhere in the cluster) the links need TLS, or ``plaintext_links`` said outright."""
    if on_loopback or tls is not None:
        return
    if not ray.plaintext_links:
        raise ConfigError(
            "$.ray: the Ray node is not on loopback, so links to channel actors cross the network: "
            "expected link_tls_cert, link_tls_key and link_tls_ca (or plaintext_links = true on a trusted network)"
        )
    log.warning("links to channel actors across nodes in plaintext (ray.plaintext_links): payment codes in clear")


def database_url_for(config: Config, data_dir: Path) -> tuple[str, EmbeddedPostgres | None]:
    """The configured URL, else ``SWITCH_DATABASE_URL``, else an embedded PostgreSQL under
    ``data_dir/pg`` (returned so the caller stops it), migrated as its superuser and reached as the
    switch's runtime role (``switch.journal.roles``)."""
    url = config.database.url or os.environ.get(DATABASE_URL_ENV, "")
    if url:
        return url, None
    embedded = EmbeddedPostgres(data_dir / "pg")
    try:
        return asyncio.run(runtime_url(embedded.start())), embedded
    except BaseException:
        embedded.stop()
        raise


class Reloaded(NamedTuple):
    result: str  # ok, invalid (nothing applied), failed (nothing applied: the journal, the key store)
    detail: str


def _limited(running: ChannelSection, read: ChannelSection) -> ChannelSection:
    """The running channel with the live ``LIMITS`` of ``read`` (the rest waits for a restart)."""
    return msgspec.structs.replace(running, **{field: getattr(read, field) for field in LIMITS})


def _channels_running(config: Config, running: set[str]) -> None:
    """A reload's routes and merchants may name only channels running here: a new channel, like
    any change to the channels, needs a restart (its routes with it)."""
    named = {r.channel for r in config.routing.codes} | {b.channel for b in config.routing.card_bins}
    named |= {c for g in config.routing.gray for c in (g.channel, g.to)}
    named |= {c for m in config.merchants for c in m.channels}
    if named - running:
        raise ConfigError(
            f"{config.source}: $.routing or $.merchants name channels not running here (a new channel needs a "
            f"restart): {', '.join(sorted(named - running))}"
        )


def _channel_ids(config: Config) -> dict[tuple[str, str], str]:
    return {(m.id, ch): ident for m in config.merchants for ch, ident in m.channel_ids.items()}


def until_signalled() -> asyncio.Future[None]:
    """A future done at the first SIGINT or SIGTERM, handled on the event loop."""
    loop = asyncio.get_running_loop()
    signalled: asyncio.Future[None] = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: signalled.done() or signalled.set_result(None))
    return signalled


async def serve_until_signalled(app: SwitchApp) -> None:
    """Serve until SIGINT or SIGTERM (then drain). SIGHUP re-reads the configuration file (its live
    part, ``switch.live``) and the risk rules and lists, as ``paysw reload`` does for every front
    end (a supervisor of workers takes SIGHUP itself: it replaces them)."""
    await app.start()
    stop_on_signal = until_signalled()  # after start: ray.init installs a SIGTERM handler that exits at once
    reloads: set[asyncio.Task[bool]] = set()

    def reload() -> None:
        task = asyncio.get_running_loop().create_task(app.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)
    try:
        await stop_on_signal
    finally:
        log.info("stopping")
        await app.stop()


def run(config: Config, data_dir: Path, ray_address: str = "") -> None:
    take_owner_urls()
    token = switch_token(config, data_dir)  # first: a bad token file stops the start before anything runs
    tls = admin_server_tls(config)  # and a TLS file the admin endpoint cannot serve with
    url, embedded = database_url_for(config, data_dir)
    try:
        uvloop.run(serve_until_signalled(SwitchApp(config, url, token, ray_address, admin_tls=tls)))
    finally:
        if embedded is not None:
            embedded.stop()
