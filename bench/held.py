"""``paysw bench held``: the demo stack held at one concurrency for minutes, its memory watched.

A leak shows as memory that keeps growing while the load stays the same. The run is cut into
windows; each window reports approved/s, p50 / p99 and every part's resident and unique memory
(USS: not counting shared pages, such as PostgreSQL's shared buffers, which every backend counts
again as it touches them) at its end. The verdict compares each part's unique memory at the end
with the end of the first window (which carries the warm-up: pools filled, caches and code paths
touched): ``growth_mb`` by part. The simulators keep a ledger of every order, so theirs grows.

Each window also reports the switch's CPU per approved purchase and PostgreSQL's work per purchase
(as ``paysw bench profile`` counts them, over the processes alive at the window's start): work
that grows with the day (a statement reading all of it, an index whose dead entries are read
again) shows as a cost that rises while the load stays the same, given a long enough run.
``cost_growth`` is each one's ratio, last window over the second (the first carries the warm-up),
paced with ``--rate`` for a load that stays the same.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
from pathlib import Path

import uvloop

from bench.profile import (
    cpu_ms_per_approved,
    cpu_seconds,
    named_processes,
    pg_counters,
    pg_per_approved,
    pg_socket_dir,
    totals,
)
from bench.provenance import provenance
from bench.stack import Stack
from bench.throughput import closed_loop, others
from bench.traffic import Stans


def main(
    concurrency: int = 128,
    minutes: float = 10.0,
    window_s: float = 60.0,
    out: Path | None = None,
    rate: float | None = None,
) -> int:
    """With ``rate``, the purchases are paced at ``rate`` a second (an open loop while the stack keeps
    up), so that latency is read at a given load rather than at saturation."""
    windows = max(2, round(minutes * 60 / window_s))
    result: dict = {**provenance(), "concurrency": concurrency, "rate": rate, "window_s": window_s, "windows": []}
    with tempfile.TemporaryDirectory(prefix="paysw-held-") as folder:
        stack = Stack(Path(folder))
        paced = f", paced at {rate:g}/s" if rate else ""
        print(
            f"the demo stack in {folder}; {concurrency} purchases under way{paced}, {windows} windows of {window_s:g} s"
        )
        try:
            stack.start()
            socket_dir = pg_socket_dir(folder)
            stans = Stans(start=random.randrange(1, 500_000))
            for i in range(windows):
                processes = named_processes(stack)  # again: pools grow, backends and workers come and go
                cpu_before, pg_before = cpu_seconds(processes), uvloop.run(pg_counters(socket_dir))
                window = uvloop.run(closed_loop("127.0.0.1", stack.port, concurrency, window_s, stans, rate))
                approved = window["approved_tps"] * window_s
                cpu_ms = cpu_ms_per_approved(cpu_before, cpu_seconds(processes), approved)
                window["cpu_ms_per_approved"] = cpu_ms
                window["switch_cpu_ms"] = totals(cpu_ms)["switch"]
                window["postgresql_per_approved"] = pg_per_approved(
                    pg_before, uvloop.run(pg_counters(socket_dir)), approved
                )
                window["rss_mb"] = stack.rss_by_part_mb()
                window["uss_mb"] = stack.unique_by_part_mb()
                result["windows"].append(window)
                rss = ", ".join(f"{part} {mb:.0f}" for part, mb in window["uss_mb"].items())
                print(
                    f"  window {i + 1:2d}/{windows}: {window['approved_tps']:7.1f} approved/s,"
                    f" p50 {window['p50_ms']:6.1f} ms, p99 {window['p99_ms']:7.1f} ms{others(window)};"
                    f" switch CPU {window['switch_cpu_ms']:.3f} ms and PostgreSQL rows"
                    f" {window['postgresql_per_approved']['rows_returned']:.1f} a purchase; unique MB {rss}",
                    flush=True,
                )
        finally:
            stack.stop()
    first, last = result["windows"][0]["uss_mb"], result["windows"][-1]["uss_mb"]
    result["growth_mb"] = {part: round(last[part] - first[part], 1) for part in last if part in first}
    print("unique memory from the end of the first window to the end:", result["growth_mb"])
    result["cost_growth"] = cost_growth(result["windows"])
    print("cost per purchase, last window / second:", result["cost_growth"])
    if out is not None:
        out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


def cost_growth(windows: list[dict]) -> dict[str, float | None]:
    """The switch's CPU and PostgreSQL's rows per purchase, last window over the second (over the
    first when there are only two); None where the base is 0."""
    base, last = windows[1 if len(windows) > 2 else 0], windows[-1]
    pairs = {
        "switch_cpu": (base["switch_cpu_ms"], last["switch_cpu_ms"]),
        "pg_rows_returned": (
            base["postgresql_per_approved"]["rows_returned"],
            last["postgresql_per_approved"]["rows_returned"],
        ),
    }
    return {name: round(b / a, 3) if a else None for name, (a, b) in pairs.items()}


if __name__ == "__main__":
    sys.exit(main())
