"""Prometheus metrics of the front end, and the admin HTTP endpoint (/metrics, /healthz,
/readyz). Labels are bounded: MTI, channel, response code; never a card or terminal number."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.answers = Counter(
            "paysw_answers",
            "Answers sent, by request MTI, channel and response code",
            ["mti", "channel", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "paysw_request_seconds",
            "Front-end time from request to answer, by channel",
            ["channel"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.channel_latency = Histogram(
            "paysw_channel_call_seconds",
            "Time in the channel call, by channel",
            ["channel"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("paysw_channel_in_flight", "Transactions under way, by channel", ["channel"], registry=r)
        self.connections = Gauge("paysw_connections", "Open terminal connections", registry=r)
        self.closed = Counter(
            "paysw_connections_closed", "Connections closed by the switch, by reason", ["reason"], registry=r
        )
        self.journal_batch = Histogram(
            "paysw_journal_batch_size",
            "Journal writes per round trip, by operation",
            ["op"],
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
            registry=r,
        )
        self.journal_seconds = Histogram(
            "paysw_journal_flush_seconds",
            "Journal round trip time, by operation",
            ["op"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

        self.resolved = Counter(
            "paysw_resolved",
            "Open transactions settled by the resolver, by channel and final state",
            ["channel", "state"],
            registry=r,
        )
        self.dead_letters = Counter(
            "paysw_dead_letters",
            "Transactions handed to a person (alert on any increase), by channel",
            ["channel"],
            registry=r,
        )

    def journal_batch_done(self, op: str, size: int, seconds: float) -> None:
        self.journal_batch.labels(op).observe(size)
        self.journal_seconds.labels(op).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


async def start_admin(host: str, port: int, metrics: Metrics, ready: Callable[[], bool]) -> web.AppRunner:
    async def metrics_handler(_: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        ok = ready()
        return web.json_response({"ready": ok}, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
