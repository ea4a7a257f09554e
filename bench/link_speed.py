"""``paysw bench link``: what it costs to hand a batch of payments to a channel actor and get the
results back, three ways, in one run against the same actor: a Ray actor call, a streaming Ray
call (one returned group per result, how the results came back before the link), and the
actor's link (``actors.link``). The actor answers every request at once, so what is measured is
the transport: batches a second and CPU time (front end + actor) per batch and per payment.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import msgspec
import psutil
import ray
import uvloop

from actors.link import ActorLink, LinkAddress, LinkServer
from protocols.messages import BATCH_ENCODER, ChannelRequest, ChannelResult, Outcome

IN_FLIGHT = 8  # batches under way at once
REQUESTS = list[ChannelRequest]


async def _answer(request: ChannelRequest) -> ChannelResult:
    return ChannelResult(request.key, Outcome.APPROVED, "00", "SUCCESS", "OK", f"C{request.key}")


@ray.remote(num_cpus=0, max_concurrency=1000)
class EchoActor:
    def __init__(self) -> None:
        self._link = LinkServer(_answer)

    # (msgspec's module functions: Ray ships this class by value, and an Encoder does not pickle)
    async def call(self, batch: bytes) -> bytes:
        return msgspec.msgpack.encode([await _answer(r) for r in msgspec.msgpack.decode(batch, type=REQUESTS)])

    async def stream(self, batch: bytes) -> AsyncIterator[bytes]:
        for request in msgspec.msgpack.decode(batch, type=REQUESTS):
            yield msgspec.msgpack.encode([await _answer(request)])

    async def open_link(self) -> LinkAddress:
        return await self._link.open("127.0.0.1")

    def pid(self) -> int:
        return os.getpid()


def _batch(size: int, first_key: int) -> list[ChannelRequest]:
    deadline = time.time() + 60
    return [
        ChannelRequest(first_key + i, "pay", f"2026112300000{i:07d}", 100, "", "M", "T0000001", deadline)
        for i in range(size)
    ]


async def _measure(send: Callable[[list[ChannelRequest]], Awaitable[None]], size: int, seconds: float, cpu) -> dict:
    """Batches of ``size`` through ``send`` (which returns once every result is back), IN_FLIGHT at once."""
    keys = iter(range(1, 10**12, size))
    for _ in range(20):
        await send(_batch(size, next(keys)))
    done = 0
    stop_at = time.monotonic() + seconds

    async def sender() -> None:
        nonlocal done
        while time.monotonic() < stop_at:
            await send(_batch(size, next(keys)))
            done += 1

    before, started = cpu(), time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(IN_FLIGHT)))
    elapsed, used = time.perf_counter() - started, cpu() - before
    return {
        "batches_per_s": round(done / elapsed, 1),
        "cpu_us_per_batch": round(used / done * 1e6, 1),
        "cpu_us_per_payment": round(used / done / size * 1e6, 1),
    }


async def _run(sizes: list[int], seconds: float) -> dict[str, dict[str, dict]]:
    actor = EchoActor.remote()
    processes = [psutil.Process(), psutil.Process(await actor.pid.remote())]

    def cpu() -> float:
        return sum(sum(p.cpu_times()[:2]) for p in processes)

    async def by_ray_call(batch: list[ChannelRequest]) -> None:
        await actor.call.remote(BATCH_ENCODER.encode(batch))

    async def by_ray_stream(batch: list[ChannelRequest]) -> None:
        async for ref in actor.stream.options(num_returns="streaming").remote(BATCH_ENCODER.encode(batch)):
            await ref

    waiting: dict[int, tuple[asyncio.Future[None], set[int]]] = {}

    def on_results(results: list[ChannelResult]) -> None:
        for result in results:
            future, keys = waiting[result.key]
            keys.discard(result.key)
            del waiting[result.key]
            if not keys:
                future.set_result(None)

    link = await ActorLink.connect(await actor.open_link.remote(), on_results, lambda: None)

    async def by_link(batch: list[ChannelRequest]) -> None:
        future = asyncio.get_running_loop().create_future()
        keys = {r.key for r in batch}
        for key in keys:
            waiting[key] = (future, keys)
        link.send(batch)
        await future

    ways = {"ray call": by_ray_call, "ray streaming call": by_ray_stream, "link": by_link}
    results: dict[str, dict[str, dict]] = {}
    for size in sizes:
        results[str(size)] = {}
        for name, send in ways.items():
            results[str(size)][name] = figures = await _measure(send, size, seconds, cpu)
            print(
                f"  batch {size:3d}, {name:18s}: {figures['batches_per_s']:8.1f} batches/s,"
                f" {figures['cpu_us_per_batch']:8.1f} us CPU a batch, {figures['cpu_us_per_payment']:7.1f} a payment",
                flush=True,
            )
    link.close()
    return results


def main(seconds: float = 5.0, out: Path | None = None, sizes: list[int] | None = None) -> int:
    sizes = sizes or [1, 8, 64]
    print(f"paysw bench link: batches of {sizes} payments, {IN_FLIGHT} under way, {seconds:g} s each", flush=True)
    ray.init(include_dashboard=False, num_cpus=os.cpu_count() or 2, log_to_driver=False, logging_level="ERROR")
    try:
        results = uvloop.run(_run(sizes, seconds))
    finally:
        ray.shutdown()
    ratios = {size: round(r["ray streaming call"]["cpu_us_per_batch"] / r["link"]["cpu_us_per_batch"], 1)
              for size, r in results.items()}  # fmt: skip
    print("CPU per batch, streaming Ray call / link:", ", ".join(f"batch {s}: {r}x" for s, r in ratios.items()))
    if out is not None:
        setup = {
            "command": f"paysw bench link --seconds {seconds:g}" + (f" --out {out}" if out else ""),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "ray": ray.__version__,
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        out.write_text(json.dumps({"setup": setup, "results": results, "streaming_over_link": ratios}, indent=1))
    return 0
