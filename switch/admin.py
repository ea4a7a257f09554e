"""The admin HTTP endpoint (https with ``switch.admin_tls``), for load balancers, Prometheus and operators.

Open to anyone who reaches it (read-only):

- ``GET /healthz``, ``GET /readyz``: alive; ready for traffic (503 while starting or stopping).
- ``GET /metrics``: Prometheus exposition.
- ``GET /channels``: each channel's state: switched on or off, circuit, calls under way, limits,
  shards (actor alive, restarts, breaker window).

Operator actions, each logged, always need ``Authorization: Bearer <token>`` (the configured
``admin_token_file``, else the token the switch generated in its data folder: switch.admin_token);
without it, or with a wrong one, 401 and nothing done:

- ``POST /channels/{name}/{action}``: ``enable``, ``disable``, ``close-circuit`` (close every
  shard's circuit now), ``restart`` (fresh actors for shards whose actor is gone for good),
  ``crash?shard=N`` (incident drill: the actor's process exits, Ray restarts it).

The endpoint belongs on a loopback or management address; the configuration refuses any other
address without an ``admin_token_file`` and TLS (``admin_tls_cert``, ``admin_tls_key``): the
token must not cross a network in clear.
"""

from __future__ import annotations

import hmac
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from switch.gateway import ChannelGateway
from switch.lograte import RateLimitedLog
from switch.metrics import Metrics

log = logging.getLogger("paysw.admin")

ACTIONS = ("enable", "disable", "close-circuit", "restart", "crash")


def admin_app(
    metrics: Metrics, ready: Callable[[], bool], gateways: dict[str, ChannelGateway], token: str
) -> web.Application:
    """The endpoint; operator actions need ``token`` (with none, they are refused, never open)."""
    refusals = RateLimitedLog(60.0)  # a guesser gets one line a minute, with the count

    async def metrics_handler(_: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        ok = ready()
        return web.json_response({"ready": ok}, status=200 if ok else 503)

    async def channels(_: web.Request) -> web.Response:
        return web.json_response({name: gateway.status() for name, gateway in gateways.items()})

    async def act(request: web.Request) -> web.Response:
        if (refusal := refused(request, token, refusals)) is not None:
            return refusal
        name, action = request.match_info["name"], request.match_info["action"]
        gateway = gateways.get(name)
        if gateway is None:
            return web.json_response({"error": f"no channel {name!r}; channels: {', '.join(gateways)}"}, status=404)
        if action not in ACTIONS:
            return web.json_response({"error": f"no action {action!r}; actions: {', '.join(ACTIONS)}"}, status=404)
        detail = ""
        if action in ("enable", "disable"):
            gateway.enabled = action == "enable"
        elif action == "close-circuit":
            gateway.close_circuits()
        elif action == "restart":
            try:
                detail = f"{await gateway.restart_dead()} actor(s) started"
            except Exception as exc:
                log.exception("restarting channel actors failed", extra={"channel": name})
                return web.json_response({"error": f"restart failed: {type(exc).__name__}"}, status=500)
        else:
            shard = request.query.get("shard", "0")
            if not shard.isdigit() or int(shard) >= len(gateway.shards):
                return web.json_response({"error": f"no shard {shard!r}"}, status=400)
            gateway.crash(int(shard))
            detail = f"shard {shard} told to crash"
        log.warning("operator action", extra={"channel": name, "action": action, "detail": detail})
        return web.json_response({"channel": name, "action": action, "detail": detail, **gateway.status()})

    return routed(metrics_handler, healthz, readyz, channels, act)


Handler = Callable[[web.Request], Awaitable[web.Response]]


def routed(metrics: Handler, healthz: Handler, readyz: Handler, channels: Handler, act: Handler) -> web.Application:
    """The endpoint's routes: one contract, whether a front end answers for itself or the
    supervisor of ``paysw run --workers`` for all of them (``switch.workers_admin``)."""
    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/channels", channels)
    app.router.add_post("/channels/{name}/{action}", act)
    return app


def refused(request: web.Request, token: str, refusals: RateLimitedLog) -> web.Response | None:
    """The answer refusing an operator action without ``token``; None when it may go ahead."""
    if not token:
        return web.json_response({"error": "operator actions are off: the switch has no admin token"}, status=403)
    # As bytes: compare_digest refuses str with non-ASCII characters, and headers may hold any.
    given = request.headers.get("Authorization", "").encode(errors="replace")
    if not hmac.compare_digest(given, f"Bearer {token}".encode()):
        refusals.warn(log, request.remote, "operator action refused: bad admin token", remote=request.remote)
        return web.json_response(
            {"error": "missing or wrong admin token (Authorization: Bearer <token>)"},
            status=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    return None


async def start_admin(
    host: str, port: int, app: web.Application, socket: Path | None = None, tls: ssl.SSLContext | None = None
) -> web.AppRunner:
    """``app`` served on ``host:port`` (over TLS with ``tls``: ``switch.admin_tls``), or on the
    unix socket ``socket`` when given (a worker of ``paysw run --workers``, reached by its
    supervisor only)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.UnixSite(runner, str(socket)) if socket is not None else web.TCPSite(runner, host, port, ssl_context=tls)
    await site.start()
    return runner
