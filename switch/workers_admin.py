"""The admin endpoint of ``paysw run --workers N``: the one address (``admin_listen``) of all the
worker processes, served by their supervisor (``switch.workers``). Each worker serves its own
endpoint (``switch.admin``) on a unix socket in the data folder; this one asks every worker and
answers for the switch as a whole:

- ``GET /healthz``: 200 when every worker answers its own; ``GET /readyz``: 200 when every
  worker is ready (503 while any starts, stops or is gone).
- ``GET /metrics``: every worker's metrics in one exposition (``switch.metrics.merged_exposition``).
- ``GET /channels``: the workers' channels as one view (``combined_channels``), each worker's
  own under ``workers``.
- ``POST /channels/{name}/{action}`` (admin token): carried out in every worker, one after the
  other (switching on and off, circuits, restarting dead actors are each worker's own state), but
  ``crash``, which aims at the shared actor and so goes to one worker only.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from switch.admin import refused, routed
from switch.lograte import RateLimitedLog
from switch.metrics import merged_exposition

log = logging.getLogger("paysw.admin")

READ_TIMEOUT_S = 5.0
ACTION_TIMEOUT_S = 70.0  # a restart waits for the new actor
CIRCUITS = ("closed", "half_open", "open")  # best to worst
ADDED_UP = ("in_flight", "max_in_flight", "rate_per_s", "merchant_rate_per_s")  # each worker's share


class WorkerEndpoint:
    """One worker's admin endpoint, over its unix socket."""

    def __init__(self, index: int, socket: Path) -> None:
        self.index = index
        self.socket = socket
        self._session: aiohttp.ClientSession | None = None

    async def move(self, socket: Path) -> None:
        """The worker's replacement answers on ``socket`` from now on (a rolling restart)."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        self.socket = socket

    async def call(
        self, path: str, method: str = "GET", headers: dict[str, str] | None = None, timeout: float = READ_TIMEOUT_S
    ) -> tuple[int, bytes]:
        """Status and body of the worker's answer; status 0 when it cannot be reached."""
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(self.socket)))
        try:
            async with self._session.request(
                method, f"http://worker{path}", headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as answer:
                return answer.status, await answer.read()
        except (TimeoutError, aiohttp.ClientError, OSError):
            return 0, b""

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def combined(statuses: Sequence[dict]) -> dict:
    """One channel's status in every worker (``ChannelGateway.status``) as one: figures under way,
    limits and quotas added up, switched on only when on in every worker, the worst circuit, the
    shared actors as the first worker sees them; and each worker's own under ``workers``."""
    return {
        **statuses[0],
        **{key: sum(s[key] for s in statuses) for key in ADDED_UP},
        "enabled": all(s["enabled"] for s in statuses),
        "circuit": max((s["circuit"] for s in statuses), key=CIRCUITS.index),
        "workers": list(statuses),
    }


def combined_channels(views: Sequence[dict[str, dict]]) -> dict[str, dict]:
    """Every worker's ``GET /channels`` as one (``combined``, channel by channel)."""
    return {name: combined([view[name] for view in views]) for name in views[0]}


def workers_admin_app(workers: Sequence[WorkerEndpoint], token: str) -> web.Application:
    """The supervisor's endpoint over ``workers``; operator actions need ``token``."""
    refusals = RateLimitedLog(60.0)

    async def ask_all(path: str) -> list[tuple[int, bytes]]:
        return list(await asyncio.gather(*(w.call(path) for w in workers)))

    async def all_ok(path: str, key: str) -> web.Response:
        statuses = [status for status, _ in await ask_all(path)]
        ok = all(status == 200 for status in statuses)
        down = [w.index for w, status in zip(workers, statuses, strict=True) if status != 200]
        return web.json_response({key: ok, "workers_not_ok": down}, status=200 if ok else 503)

    async def healthz(_: web.Request) -> web.Response:
        return await all_ok("/healthz", "healthy")

    async def readyz(_: web.Request) -> web.Response:
        return await all_ok("/readyz", "ready")

    async def metrics(_: web.Request) -> web.Response:
        scrapes = [body.decode() if status == 200 else None for status, body in await ask_all("/metrics")]
        return web.Response(body=merged_exposition(scrapes), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def channels(_: web.Request) -> web.Response:
        answers = await ask_all("/channels")
        missing = [w.index for w, (status, _) in zip(workers, answers, strict=True) if status != 200]
        if missing:
            return web.json_response({"error": f"workers {missing} did not answer"}, status=503)
        return web.json_response(combined_channels([json.loads(body) for _, body in answers]))

    async def act(request: web.Request) -> web.Response:
        if (refusal := refused(request, token, refusals)) is not None:
            return refusal
        action = request.match_info["action"]
        headers = {"Authorization": request.headers["Authorization"]}
        views = []
        for worker in workers[:1] if action == "crash" else workers:
            status, body = await worker.call(request.path_qs, "POST", headers, ACTION_TIMEOUT_S)
            if status != 200:  # those before it have done it: say so
                error = json.loads(body).get("error", "") if body else "unreachable"
                done = f" (done in workers {[w.index for w in workers[: worker.index]]})" if worker.index else ""
                return web.json_response({"error": f"worker {worker.index}: {error}{done}"}, status=status or 503)
            views.append(json.loads(body))
        details = "; ".join(f"worker {i}: {v['detail']}" for i, v in enumerate(views) if v["detail"])
        return web.json_response({**combined(views), "detail": details})

    app = routed(metrics, healthz, readyz, channels, act)

    async def close_sessions(_: web.Application) -> None:
        await asyncio.gather(*(w.close() for w in workers))

    app.on_cleanup.append(close_sessions)
    return app
