"""``paysw bench isolation``: does one sick channel cost the others anything?

Starts the demo stack (embedded PostgreSQL, the five channel simulators, the switch as a process
of its own) and offers every channel a steady paced load of purchases (open loop: a sick channel's
fast ``91`` answers do not speed its senders up). First a healthy phase; then, in turn, the sick
channel (WeChat Pay by default) hangs, turns slow, answers errors, refuses connections, and loses
its actor; each fault lasts one phase, then clears, and the sick channel's recovery is timed; a
last healthy phase ends the run. The baseline is both healthy phases together.

For each phase it reports every channel's approved throughput and p50 / p99 latency, and for the
four healthy channels their ratio to the baseline of the same run (the targets: >= 0.95 of
the throughput, p99 <= 1.2x); for the sick channel, the share answered ``91``, the slowest
answer against the request deadline, and the seconds from the fault's end to its first approval
after which every answer was an approval again (target: <= 10 s).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import uvloop

from bench.client import IsoClient
from bench.demo import TERMINALS
from bench.simulators.control import fault_address, set_fault
from bench.simulators.faults import NO_FAULT, Fault
from bench.stack import Stack
from bench.traffic import CODE_SHAPES, DEMO_MERCHANT, Stans, payment_code, purchase, quantile
from switch.config import host_port
from switch.operator import request as admin_request

# Each fault, as the simulator (or the admin endpoint, for the actor) is told to show it.
FAULTS: dict[str, Fault | None] = {
    "hang": Fault(hang=True),
    "slow": Fault(latency_ms=5000),  # past the breaker's slow-call threshold (3 s)
    "error": Fault(error_rate=1.0),
    "refuse": Fault(refuse=True),
    "actor_killed": None,  # the channel actor's process exits (Ray restarts it)
}
HEALTHY, HEALTHY_AGAIN = "healthy", "healthy_again"
WARM_UP_S = float(os.environ.get("PAYSW_BENCH_WARM_UP_S", 30))


@dataclass
class Sample:
    sent_at: float  # monotonic
    seconds: float
    code: str


@dataclass
class Phase:
    name: str
    started: float
    ended: float = 0.0
    cleared: float = 0.0  # when the fault was cleared (recovery is timed from here)


@dataclass
class Load:
    """Paced purchases on every channel, each over a connection of its own."""

    rate: float
    samples: dict[str, list[Sample]] = field(default_factory=lambda: defaultdict(list))
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, host: str, port: int) -> None:
        stans = Stans(start=int(time.time()) % 800_000 + 1)
        clients = {channel: await IsoClient.connect(host, port) for channel in CODE_SHAPES}
        try:
            await asyncio.gather(*(self._pace(channel, clients[channel], stans) for channel in CODE_SHAPES))
        finally:
            for client in clients.values():
                await client.close()

    async def _pace(self, channel: str, client: IsoClient, stans: Stans) -> None:
        loop = asyncio.get_running_loop()
        interval, next_at, n = 1 / self.rate, loop.time(), 0
        pending: set[asyncio.Task[None]] = set()
        while not self.stop.is_set():
            n += 1
            terminal = TERMINALS[n % len(TERMINALS)]
            message = purchase(terminal, DEMO_MERCHANT, payment_code(channel), 100 + n % 9000, stans.next(terminal))
            task = loop.create_task(self._one(channel, client, message))
            pending.add(task)
            task.add_done_callback(pending.discard)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))
        await asyncio.gather(*pending)

    async def _one(self, channel: str, client: IsoClient, message: dict) -> None:
        started = time.monotonic()
        try:
            code = (await client.request(message, timeout=70))["39"]
        except (TimeoutError, ConnectionError):
            code = "none"
        self.samples[channel].append(Sample(started, time.monotonic() - started, code))


def phase_figures(samples: list[Sample], phases: list[Phase]) -> dict[str, float]:
    """One channel's figures over the requests sent during ``phases``."""
    inside = [s for s in samples if any(p.started <= s.sent_at < p.ended for p in phases)]
    seconds = sum(p.ended - p.started for p in phases)
    latencies = [s.seconds for s in inside]
    return {
        "sent": len(inside),
        "approved_tps": round(sum(s.code == "00" for s in inside) / seconds, 1),
        "p50_ms": round(quantile(latencies, 50) * 1000, 1),
        "p95_ms": round(quantile(latencies, 95) * 1000, 1),
        "p99_ms": round(quantile(latencies, 99) * 1000, 1),
        "max_ms": round(max(latencies, default=0.0) * 1000, 1),
        "share_91": round(sum(s.code == "91" for s in inside) / len(inside), 3) if inside else 0.0,
        "unanswered": sum(s.code == "none" for s in inside),
    }


def recovery_seconds(samples: list[Sample], cleared: float, until: float) -> float | None:
    """Seconds from ``cleared`` to the first approval after which every answer was one."""
    after = sorted((s for s in samples if cleared <= s.sent_at < until), key=lambda s: s.sent_at)
    recovered_at = None
    for sample in after:
        if sample.code != "00":
            recovered_at = None
        elif recovered_at is None:
            recovered_at = sample.sent_at + sample.seconds
    return None if recovered_at is None else round(recovered_at - cleared, 2)


async def _measure(stack: Stack, sick: str, faults: list[str], rate: float, phase_s: float, recovery_s: float):
    host, port = host_port(stack.config.switch.listen)
    admin, token = stack.config.switch.admin_listen, stack.admin_token()
    control = fault_address(stack.simulators, sick)
    load = Load(rate)
    running = asyncio.get_running_loop().create_task(load.run(host, port))
    phases: list[Phase] = []
    rss: dict[str, float] = {}
    await asyncio.sleep(WARM_UP_S)  # connections opened, pools filled, Ray's idle workers started
    print(f"{'phase':14s} progress", flush=True)

    async def phase(name: str, start_fault, end_fault=None) -> None:
        """One phase; without ``end_fault`` the fault ends by itself (a killed actor is restarted
        by Ray), so recovery is timed from its start."""
        current = Phase(name, time.monotonic())
        start_fault()
        await asyncio.sleep(phase_s)
        current.ended = time.monotonic()
        rss[name] = stack.rss_mb()
        if end_fault is not None:
            end_fault()
        current.cleared = time.monotonic() if end_fault is not None else current.started
        phases.append(current)
        await asyncio.sleep(recovery_s)  # recovery, then the next phase starts from a healthy switch
        print(f"{name:14s} done", flush=True)

    def nothing() -> None:
        pass

    await phase(HEALTHY, nothing, nothing)
    for name in faults:
        fault = FAULTS[name]
        if fault is None:
            await phase(name, lambda: admin_request(admin, f"/channels/{sick}/crash?shard=0", token, post=True))
        else:
            await phase(name, lambda f=fault: set_fault(control, f), lambda: set_fault(control, NO_FAULT))
    await phase(HEALTHY_AGAIN, nothing, nothing)
    load.stop.set()
    await running
    return load.samples, phases, rss


def report(samples, phases: list[Phase], rss: dict[str, float], sick: str, deadline_ms: int) -> dict:
    """Each phase's figures; a fault phase's healthy channels also as ratios to the baseline: both
    healthy phases (first and last) together, so that drift over the run does not count as cost."""
    healthy = [p for p in phases if p.name in (HEALTHY, HEALTHY_AGAIN)]
    base = {ch: phase_figures(samples[ch], healthy) for ch in CODE_SHAPES}
    out: dict = {"baseline": base, "phases": {}}
    for i, phase in enumerate(phases):
        # The recovery window ends a second before the next phase: a request sent just before a
        # fault starts may meet it.
        until = phases[i + 1].started - 1 if i + 1 < len(phases) else float("inf")
        faulty = phase not in healthy
        channels = {}
        for ch in CODE_SHAPES:
            figures = phase_figures(samples[ch], [phase])
            if ch != sick and faulty:
                figures["tps_ratio"] = round(figures["approved_tps"] / base[ch]["approved_tps"], 3)
                for q in ("p95", "p99"):
                    figures[f"{q}_ratio"] = round(figures[f"{q}_ms"] / base[ch][f"{q}_ms"], 2)
            channels[ch] = figures
        entry: dict = {"channels": channels, "switch_rss_mb": rss[phase.name]}
        if faulty:
            sick_figures = channels[sick]
            entry["sick"] = {
                "share_91": sick_figures["share_91"],
                "slowest_ms": sick_figures["max_ms"],
                "within_deadline": sick_figures["max_ms"] <= deadline_ms and sick_figures["unanswered"] == 0,
                "recovery_s": recovery_seconds(samples[sick], phase.cleared, until),
            }
            others = [channels[ch] for ch in CODE_SHAPES if ch != sick]
            entry["healthy_min_tps_ratio"] = min(f["tps_ratio"] for f in others)
            entry["healthy_max_p95_ratio"] = max(f["p95_ratio"] for f in others)
            entry["healthy_max_p99_ratio"] = max(f["p99_ratio"] for f in others)
        out["phases"][phase.name] = entry
    # The noise floor: how far apart the two healthy phases are, with nothing wrong at all.
    first, last = (out["phases"][name]["channels"] for name in (HEALTHY, HEALTHY_AGAIN))
    out["noise_floor"] = {
        f"{q}_ratio_between_healthy_phases": round(
            max(
                max(first[ch][f"{q}_ms"], last[ch][f"{q}_ms"]) / min(first[ch][f"{q}_ms"], last[ch][f"{q}_ms"])
                for ch in CODE_SHAPES
            ),
            2,
        )
        for q in ("p95", "p99")
    }
    return out


def print_table(result: dict, sick: str) -> None:
    print()
    header = (
        f"{'phase':13s} {'channel':9s} {'appr TPS':>8s} {'p50 ms':>7s} {'p95 ms':>7s} {'p99 ms':>8s}"
        f" {'TPS x':>6s} {'p95 x':>6s} {'p99 x':>6s}  note"
    )
    print(header)
    print("-" * len(header))
    for name, entry in [("baseline", {"channels": result["baseline"]}), *result["phases"].items()]:
        for ch, f in entry["channels"].items():
            note = ""
            if ch == sick and "sick" in entry:
                s = entry["sick"]
                note = (
                    f"sick: {s['share_91']:.0%} answered 91, slowest {s['slowest_ms'] / 1000:.1f}s"
                    f" ({'within' if s['within_deadline'] else 'PAST'} deadline), recovered in "
                    + (f"{s['recovery_s']}s" if s["recovery_s"] is not None else "NOT")
                )
            ratios = [f"{f[k]:.2f}" if k in f else "" for k in ("tps_ratio", "p95_ratio", "p99_ratio")]
            print(
                f"{name:13s} {ch:9s} {f['approved_tps']:8.1f} {f['p50_ms']:7.1f} {f['p95_ms']:7.1f} {f['p99_ms']:8.1f}"
                f" {ratios[0]:>6s} {ratios[1]:>6s} {ratios[2]:>6s}  {note}"
            )
        if "healthy_min_tps_ratio" in entry:
            print(
                f"{'':13s} healthy channels: throughput >= {entry['healthy_min_tps_ratio']:.2f}x, p95 <= "
                f"{entry['healthy_max_p95_ratio']:.2f}x, p99 <= {entry['healthy_max_p99_ratio']:.2f}x of the baseline;"
                f" switch RSS {entry['switch_rss_mb']} MB"
            )
    noise = result["noise_floor"]
    print(
        f"\nnoise floor (the two healthy phases, nothing wrong): p95 {noise['p95_ratio_between_healthy_phases']}x,"
        f" p99 {noise['p99_ratio_between_healthy_phases']}x apart"
    )


def main(
    sick: str = "wechat",
    faults: list[str] | None = None,
    rate: float = 40.0,
    phase_s: float = 20.0,
    recovery_s: float = 15.0,
    out: Path | None = None,
) -> int:
    faults = faults or list(FAULTS)
    unknown = [f for f in faults if f not in FAULTS]
    if unknown or sick not in CODE_SHAPES:
        print(f"paysw bench isolation: faults are {', '.join(FAULTS)}; channels {', '.join(CODE_SHAPES)}")
        return 2
    command = " ".join(["paysw bench isolation", *sys.argv[3:]]) if sys.argv[1:3] == ["bench", "isolation"] else ""
    with tempfile.TemporaryDirectory(prefix="paysw-isolation-") as folder:
        stack = Stack(Path(folder))
        print(f"starting the demo stack (embedded PostgreSQL, simulators, switch) in {folder}", flush=True)
        try:
            stack.start()
            print(f"offering {rate:g} purchases/s on each channel; sick channel: {sick}", flush=True)
            samples, phases, rss = uvloop.run(_measure(stack, sick, faults, rate, phase_s, recovery_s))
        finally:
            stack.stop()
    result = report(samples, phases, rss, sick, stack.config.switch.request_deadline_ms)
    result["setup"] = {
        "command": command or f"paysw bench isolation --channel {sick} --rate {rate:g} --phase-seconds {phase_s:g}",
        "sick_channel": sick,
        "rate_per_channel": rate,
        "phase_s": phase_s,
        "recovery_window_s": recovery_s,
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print_table(result, sick)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwritten to {out}")
    return 0
