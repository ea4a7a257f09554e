"""``paysw bench overload``: the demo stack held far past its capacity, with admission by queueing
delay off (``shed_queue_delay_ms = 0``) and then on (the demo configuration's), in the same run.

Closed loop: N senders (default 2,048) each send a purchase and the next as soon as it is
answered, for S seconds, over 8 connections (``bench.throughput.drive``). In a closed loop the
answers' mean latency is N over the answers a second (Little's law), so 91s answered fast come back
as more requests, and however fast the switch sheds, its 91s wait behind that flood on a box the load
generator shares. ``--rate R`` offers R purchases a second instead (an open loop, as customers
arrive, at most N outstanding): the excess the switch sheds then no longer feeds the load. Reported for each:
approved/s; the latency of the purchases the switch took on (every answer but ``91``) and of the
approved; how many were answered ``91`` and how fast; the switch's shed counter by reason. Then
each figure with admission on as a ratio to the same figure with it off.

Meanwhile another peer (``--quiet N`` senders from 127.0.0.2, another address on loopback; 8 by
default, 0 for none) sends purchases the same way: an acquirer of normal traffic beside one that
floods. Its figures are reported apart: the admission's limit is shared among peers
(``switch.shedding``), so its purchases should go through while the flood is shed.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import tempfile
from pathlib import Path

import uvloop

from bench.provenance import provenance
from bench.stack import Stack, demo_config_in
from bench.throughput import drive
from bench.traffic import Stans, quantile
from switch.config import host_port

WARM_UP_CONCURRENCY = 64
WARM_UP_S = 5.0
SHED = "91"
QUIET_PEER = "127.0.0.2"


def variant_config(folder: Path, queue_delay_ms: int | None) -> Path:
    """The demo configuration in ``folder`` with ``shed_queue_delay_ms`` set to ``queue_delay_ms``
    (None: as the demo has it)."""

    def edit(text: str) -> str:
        if queue_delay_ms is None:
            return text
        marker = "\nshed_queue_delay_ms = "
        start = text.index(marker) + len(marker)
        return text[:start] + str(queue_delay_ms) + text[text.index("\n", start) :]

    return demo_config_in(folder, edit)


def summary(latencies: list[float]) -> dict[str, float | int]:
    return {
        "count": len(latencies),
        "p50_ms": round(quantile(latencies, 50) * 1000, 2),
        "p99_ms": round(quantile(latencies, 99) * 1000, 2),
        "max_ms": round(max(latencies, default=0.0) * 1000, 2),
    }


def switch_figures(metrics_text: str) -> dict[str, dict[str, float]]:
    """From the switch's Prometheus exposition: requests shed by reason, and where a request's
    time went (mean seconds in the front end from request to answer, in the channel call, and a
    journal round trip), by channel or operation."""
    from prometheus_client.parser import text_string_to_metric_families

    shed: dict[str, float] = {}
    sums: dict[tuple[str, str], float] = {}
    counts: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            label = sample.labels.get("channel") or sample.labels.get("op") or ""
            if sample.name == "paysw_shed_total":
                shed[sample.labels["reason"]] = sample.value
            elif sample.name.endswith("_seconds_sum"):
                sums[sample.name.removesuffix("_sum"), label] = sample.value
            elif sample.name.endswith("_seconds_count"):
                counts[sample.name.removesuffix("_count"), label] = sample.value
    means: dict[str, dict[str, float]] = {}
    for (name, label), total in sums.items():
        if counts.get((name, label)):
            means.setdefault(f"mean_ms {name}", {})[label] = round(total / counts[name, label] * 1000, 2)
    return {"shed_by_reason": shed, **means}


def measure(queue_delay_ms: int | None, concurrency: int, seconds: float, quiet: int, rate: float | None) -> dict:
    """One stack, fresh data folder, warmed up, then ``concurrency`` outstanding for ``seconds``
    (paced at ``rate`` a second if given), and ``quiet`` outstanding from another peer."""
    with tempfile.TemporaryDirectory(prefix="paysw-overload-") as folder:
        stack = Stack(Path(folder), variant_config(Path(folder), queue_delay_ms))
        settings = stack.config.switch
        print(
            f"switch with shed_queue_delay_ms = {settings.shed_queue_delay_ms}"
            f" (interval {settings.shed_queue_interval_ms} ms), in {folder}",
            flush=True,
        )
        try:
            stack.start()
            host, port = host_port(settings.listen)
            stans = Stans(start=random.randrange(1, 500_000))
            by_channel: dict[tuple[str, str], list[float]] = {}

            async def load() -> tuple[tuple[dict[str, list[float]], float], ...]:
                await drive(host, port, WARM_UP_CONCURRENCY, WARM_UP_S, stans)
                peers = [drive(host, port, concurrency, seconds, stans, rate, by_channel=by_channel)]
                if quiet:
                    peers.append(drive(host, port, quiet, seconds, stans, source=QUIET_PEER))
                return tuple(await asyncio.gather(*peers))

            (by_code, elapsed), *others = uvloop.run(load())
            figures = switch_figures(stack.metrics())
        finally:
            stack.stop()
    approved = by_code.get("00", [])
    result = {
        "shed_queue_delay_ms": settings.shed_queue_delay_ms,
        "shed_queue_interval_ms": settings.shed_queue_interval_ms,
        "seconds": round(elapsed, 2),
        "approved_per_s": round(len(approved) / elapsed, 1),
        "answered_per_s": round(sum(map(len, by_code.values())) / elapsed, 1),
        "taken_on": summary([x for code, xs in by_code.items() if code != SHED for x in xs]),
        "approved": summary(approved),
        "answered_91": summary(by_code.get(SHED, [])),
        "answers_by_code": {code: len(xs) for code, xs in sorted(by_code.items())},
        # (91s not shed were refused by a channel's limits, after the write-ahead.)
        **figures,
        # The flood's purchases by channel: one channel short of CPU holds the tail of them all.
        "by_channel": {
            channel: {
                "taken_on": summary(
                    [x for (c, code), xs in by_channel.items() if c == channel and code != SHED for x in xs]
                ),
                "answered_91": summary(by_channel.get((channel, SHED), [])),
            }
            for channel in sorted({c for c, _ in by_channel})
        },
    }
    for quiet_by_code, quiet_elapsed in others:
        result["quiet_peer"] = {
            "concurrency": quiet,
            "approved_per_s": round(len(quiet_by_code.get("00", [])) / quiet_elapsed, 1),
            "taken_on": summary([x for code, xs in quiet_by_code.items() if code != SHED for x in xs]),
            "answered_91": summary(quiet_by_code.get(SHED, [])),
            "answers_by_code": {code: len(xs) for code, xs in sorted(quiet_by_code.items())},
        }
    print(
        f"  {result['approved_per_s']:.1f} approved/s; taken on p50 {result['taken_on']['p50_ms']:.1f} ms,"
        f" p99 {result['taken_on']['p99_ms']:.1f} ms; {result['answered_91']['count']} answered 91,"
        f" p50 {result['answered_91']['p50_ms']:.1f} ms, p99 {result['answered_91']['p99_ms']:.1f} ms",
        flush=True,
    )
    for channel, figures_of in result["by_channel"].items():
        taken, shed = figures_of["taken_on"], figures_of["answered_91"]
        print(
            f"    {channel:9s} taken on {taken['count']:6d}, p50 {taken['p50_ms']:.1f} ms,"
            f" p99 {taken['p99_ms']:.1f} ms;"
            f" 91 {shed['count']:6d}, p50 {shed['p50_ms']:.1f} ms, p99 {shed['p99_ms']:.1f} ms",
            flush=True,
        )
    if "quiet_peer" in result:
        q = result["quiet_peer"]
        print(
            f"  the other peer ({quiet} outstanding from {QUIET_PEER}): {q['approved_per_s']:.1f} approved/s;"
            f" taken on p50 {q['taken_on']['p50_ms']:.1f} ms, p99 {q['taken_on']['p99_ms']:.1f} ms;"
            f" {q['answered_91']['count']} answered 91 of {sum(q['answers_by_code'].values())}",
            flush=True,
        )
    return result


def ratios(on: dict, off: dict) -> dict[str, float | None]:
    """Each headline figure with admission on, divided by the same figure with it off."""
    figures = {
        "approved_per_s": lambda r: r["approved_per_s"],
        "taken_on_p50_ms": lambda r: r["taken_on"]["p50_ms"],
        "taken_on_p99_ms": lambda r: r["taken_on"]["p99_ms"],
        "answered_91_count": lambda r: r["answered_91"]["count"],
        "answered_91_p99_ms": lambda r: r["answered_91"]["p99_ms"],
    }
    return {name: round(get(on) / get(off), 4) if get(off) else None for name, get in figures.items()}


def main(
    concurrency: int = 2048, seconds: float = 60.0, out: Path | None = None, quiet: int = 8, rate: float | None = None
) -> int:
    command = " ".join(["paysw", *sys.argv[1:]]) if sys.argv[1:3] == ["bench", "overload"] else "paysw bench overload"
    off = measure(0, concurrency, seconds, quiet, rate)
    on = measure(None, concurrency, seconds, quiet, rate)
    result = {
        "setup": {**provenance(command), "concurrency": concurrency, "seconds": seconds, "quiet": quiet, "rate": rate},
        "off": off,
        "on": on,
        "ratio_on_to_off": ratios(on, off),
    }
    print("\nwith admission by queueing delay, as a ratio to without (same run):")
    for name, ratio in result["ratio_on_to_off"].items():
        print(f"  {name:22s} {ratio}")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwritten to {out}")
    return 0
