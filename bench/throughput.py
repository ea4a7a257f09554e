"""``paysw bench throughput``: approved purchases a second and latency at rising concurrency, for
the switch on the demo stack and for the bare baseline server (``bench.baseline_server``), both
measured in the same run on the same machine, with the same client and the same messages.

Closed loop: at concurrency N, N senders each send a purchase and wait for its answer before the
next, over 8 connections (pipelined). The channel mix is the locust file's (WeChat Pay 40 %,
Alipay 35 %, UnionPay 10 %, e-CNY 10 %, in-bank 5 %), every purchase one the channel approves.
Reported per step: approved TPS, p50 / p95 / p99, and the resident memory of every part. And the
ceiling the machine puts on any switch with this mix (``bench.floor``): what it could do if only
the channel signatures, on both sides, and the load generator used CPU.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import uvloop

from bench.client import IsoClient
from bench.demo import TERMINALS, _wait_for_ports
from bench.floor import ceiling_tps, signature_floor
from bench.provenance import provenance
from bench.stack import Stack
from bench.traffic import CHANNEL_SHARES, DEMO_MERCHANT, Stans, payment_code, purchase, quantile
from switch.config import host_port

CONNECTIONS = 8
BASELINE_LISTEN = "127.0.0.1:8590"


async def drive(
    host: str,
    port: int,
    concurrency: int,
    seconds: float,
    stans: Stans,
    rate: float | None = None,
    source: str | None = None,
    by_channel: dict[tuple[str, str], list[float]] | None = None,
) -> tuple[dict[str, list[float]], float]:
    """``concurrency`` senders for ``seconds``, each sending a purchase and the next as soon as it
    is answered (or, with ``rate``, when its turn of ``rate`` a second comes, if answered by then):
    every answer's latency by its response code (field 39), and the time it took. ``source``: the
    local address the connections come from (another peer of the switch's, such as 127.0.0.2).
    ``by_channel``: filled with the same latencies by (channel, response code) too.

    Every purchase pays with a code of its own, as a customer's one-time payment code does. (A
    generator seeded the same at every call repeats its codes; the demo's risk rules decline a
    code's sixth payment in 10 minutes, 65, so a held run would measure those declines.)"""
    clients = [await IsoClient.connect(host, port, source) for _ in range(CONNECTIONS)]
    rng = random.Random()
    channels, weights = list(CHANNEL_SHARES), list(CHANNEL_SHARES.values())
    latencies: dict[str, list[float]] = {}
    stop_at = time.monotonic() + seconds

    async def sender(i: int) -> None:
        client, terminal = clients[i % CONNECTIONS], TERMINALS[i % len(TERMINALS)]
        turn = 0
        while time.monotonic() < stop_at:
            if rate is not None:  # the senders take turns: sender i sends the (k * concurrency + i)-th
                await asyncio.sleep(begun + (turn * concurrency + i) / rate - time.monotonic())
                turn += 1
                if time.monotonic() >= stop_at:
                    break
            channel = rng.choices(channels, weights)[0]
            message = purchase(terminal, DEMO_MERCHANT, payment_code(channel, "00", rng), 100 + i, stans.next(terminal))
            started = time.perf_counter()
            answer = await client.request(message)
            took, code = time.perf_counter() - started, answer.get("39", "?")
            latencies.setdefault(code, []).append(took)
            if by_channel is not None:
                by_channel.setdefault((channel, code), []).append(took)

    started = begun = time.monotonic()
    try:
        await asyncio.gather(*(sender(i) for i in range(concurrency)))
    finally:
        for client in clients:
            await client.close()
    return latencies, time.monotonic() - started


async def closed_loop(
    host: str, port: int, concurrency: int, seconds: float, stans: Stans, rate: float | None = None
) -> dict:
    """``concurrency`` senders for ``seconds`` (paced to ``rate`` a second if given): approved TPS
    and latency quantiles."""
    by_code, elapsed = await drive(host, port, concurrency, seconds, stans, rate)
    latencies = [x for code in by_code.values() for x in code]
    approved = len(by_code.get("00", []))
    return {
        "concurrency": concurrency,
        "approved_tps": round(approved / elapsed, 1),
        "not_approved": len(latencies) - approved,
        "answers_by_code": {code: len(answers) for code, answers in sorted(by_code.items())},
        "p50_ms": round(quantile(latencies, 50) * 1000, 2),
        "p95_ms": round(quantile(latencies, 95) * 1000, 2),
        "p99_ms": round(quantile(latencies, 99) * 1000, 2),
    }


def others(window: dict) -> str:
    """The answers other than approvals, by response code, for a progress line: a run whose
    approvals fall says at once whether it is shedding (91), a risk rule (61, 65) or a channel."""
    counts = {code: n for code, n in window["answers_by_code"].items() if code != "00"}
    return "; others " + ", ".join(f"{code} x{n}" for code, n in counts.items()) if counts else ""


def run_steps(listen: str, steps: list[int], step_s: float, warm_up_s: float, rss, cpu) -> list[dict]:
    """Each step's figures, with memory (``rss()``) and the CPU time each part spent per approved
    purchase (``cpu()``: seconds used so far, by part; the load generator is this process)."""
    host, port = host_port(listen)
    stans = Stans(start=random.randrange(1, 500_000))
    me = psutil.Process()

    def cpu_now() -> dict[str, float]:
        return {**cpu(), "load generator": sum(me.cpu_times()[:2])}

    async def all_steps() -> list[dict]:
        await closed_loop(host, port, steps[0], warm_up_s, stans)
        results = []
        for concurrency in steps:
            before = cpu_now()
            step = await closed_loop(host, port, concurrency, step_s, stans)
            after = cpu_now()
            approved = step["approved_tps"] * step_s
            step["cpu_ms_per_approved"] = {
                part: round((after[part] - before.get(part, 0.0)) * 1000 / approved, 3) if approved else None
                for part in after
            }
            step["rss_mb"] = rss()
            print(
                f"  concurrency {concurrency:4d}: {step['approved_tps']:8.1f} approved/s, p50 {step['p50_ms']:7.1f} ms,"
                f" p99 {step['p99_ms']:7.1f} ms{others(step)}",
                flush=True,
            )
            results.append(step)
        return results

    return uvloop.run(all_steps())


def measure_baseline(steps: list[int], step_s: float, warm_up_s: float) -> list[dict]:
    server = subprocess.Popen([sys.executable, "-m", "bench.baseline_server", "--listen", BASELINE_LISTEN])
    try:
        _wait_for_ports([BASELINE_LISTEN])
        process = psutil.Process(server.pid)
        return run_steps(
            BASELINE_LISTEN,
            steps,
            step_s,
            warm_up_s,
            lambda: {"server": round(process.memory_info().rss / 2**20, 1)},
            lambda: {"server": sum(process.cpu_times()[:2])},
        )
    finally:
        server.terminate()
        server.wait(timeout=10)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (tps, p99) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, style in (("switch", "o-"), ("baseline", "s--")):
        steps = result[name]
        xs = [s["concurrency"] for s in steps]
        tps.plot(xs, [s["approved_tps"] for s in steps], style, label=name)
        p99.plot(xs, [s["p99_ms"] for s in steps], style, label=name)
    for ax, title, unit in ((tps, "approved purchases / s", "TPS"), (p99, "p99 latency", "ms")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency (closed loop)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend()
    p99.set_yscale("log")
    fig.suptitle(f"paysw vs bare uvloop baseline, same run ({result['setup']['machine']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(steps: list[int], step_s: float = 15.0, warm_up_s: float = 10.0, out_dir: Path | None = None) -> int:
    command = (
        " ".join(["paysw", *sys.argv[1:]]) if sys.argv[1:3] == ["bench", "throughput"] else "paysw bench throughput"
    )
    print("floor: the channel signatures of the mix, both sides, in this process", flush=True)
    floor = signature_floor()
    print(f"  {floor['signatures_ms_per_purchase']:.3f} ms of CPU per purchase", flush=True)
    print(f"baseline: bare uvloop server, same codec, on {BASELINE_LISTEN}", flush=True)
    baseline = measure_baseline(steps, step_s, warm_up_s)
    with tempfile.TemporaryDirectory(prefix="paysw-throughput-") as folder:
        stack = Stack(Path(folder))
        print(f"switch: the demo stack (embedded PostgreSQL, simulators, switch) in {folder}", flush=True)
        try:
            stack.start()
            switch = run_steps(
                stack.config.switch.listen, steps, step_s, warm_up_s, stack.rss_by_part_mb, stack.cpu_by_part_s
            )
        finally:
            stack.stop()
    result = {
        "setup": {**provenance(command), "steps": steps, "step_s": step_s, "connections": CONNECTIONS},
        "floor": floor,
        "switch": switch,
        "baseline": baseline,
    }
    cores = os.cpu_count() or 1
    for s, b in zip(switch, baseline, strict=True):
        s["tps_ratio_to_baseline"] = round(s["approved_tps"] / b["approved_tps"], 4) if b["approved_tps"] else None
        load_generator_ms = b["cpu_ms_per_approved"]["load generator"]
        s["ceiling_tps"] = ceiling_tps(cores, floor["signatures_ms_per_purchase"], load_generator_ms)
    print_table(result)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "throughput.json").write_text(json.dumps(result, indent=2) + "\n")
        plot(result, out_dir / "throughput.png")
        print(f"\nwritten to {out_dir / 'throughput.json'} and {out_dir / 'throughput.png'}")
    return 0


def print_table(result: dict) -> None:
    print()
    header = (
        f"{'conc':>5s} | {'switch TPS':>10s} {'p50':>7s} {'p95':>7s} {'p99':>7s} | "
        f"{'baseline TPS':>12s} {'p50':>6s} {'p99':>6s} | {'ratio':>6s} | {'ceiling':>7s}  switch RSS MB by part"
    )
    print(header)
    print("-" * len(header))
    for s, b in zip(result["switch"], result["baseline"], strict=True):
        rss = ", ".join(f"{k} {v:.0f}" for k, v in s["rss_mb"].items())
        switch = f"{s['approved_tps']:10.1f} {s['p50_ms']:7.1f} {s['p95_ms']:7.1f} {s['p99_ms']:7.1f}"
        baseline = f"{b['approved_tps']:12.1f} {b['p50_ms']:6.1f} {b['p99_ms']:6.1f}"
        ratio, ceiling = s["tps_ratio_to_baseline"], s["ceiling_tps"]
        print(f"{s['concurrency']:5d} | {switch} | {baseline} | {ratio:6.3f} | {ceiling:7.0f}  {rss}")
    last = result["switch"][-1]
    where = ", ".join(f"{part} {ms:.2f}" for part, ms in last["cpu_ms_per_approved"].items())
    print(f"\nCPU ms per approved purchase at concurrency {last['concurrency']}: {where}")
    print(
        f"ceiling: approved/s on this machine were the switch free, from the signatures"
        f" ({result['floor']['signatures_ms_per_purchase']:.3f} ms a purchase) and the baseline's load generator"
    )
