"""What a channel call's HTTP costs the actor: client CPU per keep-alive POST of ~400 bytes,
answered ~400 bytes, against one bare uvloop server in another process, for aiohttp's
ClientSession (as the actors use it today), ``actors.http`` and, when it is importable, pyreqwest
(a Rust client; not a dependency). All in one run, interleaved, on the asyncio and uvloop loops.

Each way does what the actor does per call: take a connection slot with a bounded wait, POST with
a timeout, read status, body and headers, give the slot back. CPU is the client process's (all its
threads: pyreqwest's runtime runs in its own), divided by the requests answered.

    flock /tmp/paysw-bench.lock python -m bench.http_client --out bench/results/http_client.json
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from statistics import median_low

import aiohttp
import httptools
import uvloop

from actors.http import HttpPool
from bench.provenance import provenance

try:
    import pyreqwest
    from pyreqwest.client import ClientBuilder
except ImportError:  # measured only where installed by hand
    pyreqwest = None

REQUEST_BODY = b'{"out_trade_no":"' + b"0" * 20 + b'","x":"' + b"a" * 354 + b'"}'  # 400 bytes
ANSWER_BODY = b'{"result":"SUCCESS","x":"' + b"b" * 373 + b'"}'  # 400 bytes
HEADERS = {"Content-Type": "application/json", "X-Signature": "c" * 44}
POOL_SIZE = 32
TIMEOUT_S = 10.0
WAIT_S = 1.0
REPO = Path(__file__).resolve().parents[1]

Post = Callable[[], Awaitable[int]]  # one call; returns the answer's status


class _BareServer(asyncio.Protocol):
    """Keep-alive HTTP/1.1 answers to POSTs, as cheaply as it can be done in Python."""

    _length = re.compile(rb"\r\ncontent-length: *(\d+)", re.IGNORECASE)
    _answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Signature: %s\r\nContent-Length: %d\r\n\r\n"
        % (b"d" * 44, len(ANSWER_BODY))
        + ANSWER_BODY
    )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._buffer = b""

    def data_received(self, data: bytes) -> None:
        buffer, answers = self._buffer + data, 0
        while (end := buffer.find(b"\r\n\r\n")) >= 0:
            length = self._length.search(buffer, 0, end + 2)
            total = end + 4 + (int(length[1]) if length else 0)
            if len(buffer) < total:
                break
            buffer, answers = buffer[total:], answers + 1
        self._buffer = buffer
        if answers:
            self._transport.write(self._answer * answers)  # type: ignore[attr-defined]


async def _serve() -> None:
    server = await asyncio.get_running_loop().create_server(_BareServer, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


async def _slot(semaphore: asyncio.Semaphore) -> None:
    """The actor's bounded wait for a connection, with the uncontended path kept cheap."""
    if semaphore.locked():
        await asyncio.wait_for(semaphore.acquire(), WAIT_S)
    else:
        await semaphore.acquire()


@asynccontextmanager
async def _aiohttp(endpoint: str):
    connector = aiohttp.TCPConnector(limit=POOL_SIZE, keepalive_timeout=30, ttl_dns_cache=300)
    semaphore = asyncio.Semaphore(POOL_SIZE)
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    async with aiohttp.ClientSession(base_url=endpoint + "/", connector=connector) as session:

        async def post() -> int:
            await _slot(semaphore)
            try:
                async with session.post("pay", data=REQUEST_BODY, headers=HEADERS, timeout=timeout) as response:
                    body, headers = await response.read(), dict(response.headers)
                    assert body and headers
                    return response.status
            finally:
                semaphore.release()

        yield post


@asynccontextmanager
async def _actors_http(endpoint: str):
    pool = HttpPool(endpoint, POOL_SIZE)

    async def post() -> int:
        slot = await pool.acquire(WAIT_S)
        try:
            answer = await slot.post("/pay", REQUEST_BODY, HEADERS, TIMEOUT_S)
            assert answer.body and answer.headers
            return answer.status
        finally:
            slot.release()

    yield post
    pool.close()


@asynccontextmanager
async def _pyreqwest(endpoint: str):
    semaphore = asyncio.Semaphore(POOL_SIZE)
    timeout = dt.timedelta(seconds=TIMEOUT_S)
    async with ClientBuilder().base_url(endpoint + "/").max_connections(POOL_SIZE).build() as client:

        async def post() -> int:
            await _slot(semaphore)
            try:
                response = (
                    await client.post("pay").body_bytes(REQUEST_BODY).headers(HEADERS).timeout(timeout).build().send()
                )
                body, headers = await response.bytes(), dict(response.headers.items())
                assert body and headers
                return response.status
            finally:
                semaphore.release()

        yield post


WAYS: dict[str, Callable[[str], AbstractAsyncContextManager[Post]]] = {"aiohttp": _aiohttp, "actors.http": _actors_http}
if pyreqwest is not None:
    WAYS["pyreqwest"] = _pyreqwest


async def _measure(way: Callable[[str], AbstractAsyncContextManager[Post]], endpoint: str, outstanding: int,
                   seconds: float) -> dict[str, float]:  # fmt: skip
    async with way(endpoint) as post:
        for _ in range(200):  # connections made, code warm
            assert await post() == 200
        done = 0
        stop_at = time.monotonic() + seconds

        async def caller() -> None:
            nonlocal done
            while time.monotonic() < stop_at:
                assert await post() == 200
                done += 1

        cpu, started = time.process_time(), time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(outstanding)))
        cpu, elapsed = time.process_time() - cpu, time.perf_counter() - started
    return {"requests_per_s": round(done / elapsed), "cpu_us_per_request": round(cpu / done * 1e6, 1)}


def _run_loop(loop_name: str, endpoint: str, levels: list[int], seconds: float, rounds: int) -> dict[str, dict]:
    """Every way at every level, ``rounds`` times, interleaved so that the load of a shared machine
    hits them alike; the median round is reported, every round kept."""
    runner = uvloop.run if loop_name == "uvloop" else asyncio.run
    samples: dict[str, dict[str, list[dict[str, float]]]] = {str(n): {name: [] for name in WAYS} for n in levels}
    for _ in range(rounds):
        for outstanding in levels:
            for name, way in WAYS.items():
                samples[str(outstanding)][name].append(runner(_measure(way, endpoint, outstanding, seconds)))
    results: dict[str, dict] = {}
    for level, by_way in samples.items():
        results[level] = {}
        for name, runs in by_way.items():
            median = {
                figure: median_low(r[figure] for r in runs) for figure in ("cpu_us_per_request", "requests_per_s")
            }
            results[level][name] = {**median, "rounds": runs}
            each = ", ".join(str(r["cpu_us_per_request"]) for r in runs)
            print(
                f"  {loop_name:7s} {int(level):3d} outstanding, {name:11s}: {median['requests_per_s']:7d}/s,"
                f" {median['cpu_us_per_request']:6.1f} us client CPU a request (rounds: {each})",
                flush=True,
            )
    return results


def main(seconds: float = 1.5, rounds: int = 3, out: Path | None = None, levels: list[int] | None = None) -> int:
    levels = levels or [1, 16, 64]  # 64: more calls than the pool's 32 connections, so some wait for a slot
    print(
        f"HTTP client CPU per keep-alive POST of {len(REQUEST_BODY)} bytes, {rounds} rounds of {seconds:g} s:"
        f" {', '.join(WAYS)}"
    )
    server = subprocess.Popen([sys.executable, "-m", "bench.http_client", "--serve"], stdout=subprocess.PIPE, text=True)
    try:
        endpoint = f"http://127.0.0.1:{int(server.stdout.readline())}"
        results = {loop: _run_loop(loop, endpoint, levels, seconds, rounds) for loop in ("asyncio", "uvloop")}
    finally:
        server.terminate()
        server.wait()
    ratios = {
        f"{loop} {level} outstanding": {
            f"{other} / actors.http": round(ways[other]["cpu_us_per_request"] / ours, 2)
            for other in WAYS
            if other != "actors.http"
        }
        for loop, by_level in results.items()
        for level, ways in by_level.items()
        if (ours := ways["actors.http"]["cpu_us_per_request"])
    }
    for where, by_way in ratios.items():
        print(f"client CPU ratio, {where}: " + ", ".join(f"{k} = {v}x" for k, v in by_way.items()))
    if out is not None:
        setup = {
            **provenance(f"python -m bench.http_client --seconds {seconds:g} --rounds {rounds} --out {out}"),
            "versions": {
                "aiohttp": aiohttp.__version__,
                "httptools": httptools.__version__,
                "uvloop": uvloop.__version__,
                "pyreqwest": pyreqwest.__version__ if pyreqwest is not None else "not installed",
            },
            "request_bytes": len(REQUEST_BODY),
            "answer_body_bytes": len(ANSWER_BODY),
            "pool_size": POOL_SIZE,
        }
        out.write_text(json.dumps({"setup": setup, "results": results, "cpu_ratios": ratios}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="time per measurement (default 1.5)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each, the median reported (default 3)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the server's own process
    args = parser.parse_args()
    if args.serve:
        uvloop.run(_serve())
    else:
        sys.exit(main(args.seconds, args.rounds, args.out))
