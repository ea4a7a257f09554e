"""``paysw bench held``: the demo stack held at one concurrency for minutes, its memory watched.

A leak shows as memory that keeps growing while the load stays the same. The run is cut into
windows; each window reports approved/s, p50 / p99 and every part's resident and unique memory
(USS: not counting shared pages, such as PostgreSQL's shared buffers, which every backend counts
again as it touches them) at its end. The verdict compares each part's unique memory at the end
with the end of the first window (which carries the warm-up: pools filled, caches and code paths
touched): ``growth_mb`` by part. The simulators keep a ledger of every order, so theirs grows.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
from pathlib import Path

import uvloop

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
            stans = Stans(start=random.randrange(1, 500_000))
            for i in range(windows):
                window = uvloop.run(closed_loop("127.0.0.1", stack.port, concurrency, window_s, stans, rate))
                window["rss_mb"] = stack.rss_by_part_mb()
                window["uss_mb"] = stack.unique_by_part_mb()
                result["windows"].append(window)
                rss = ", ".join(f"{part} {mb:.0f}" for part, mb in window["uss_mb"].items())
                print(
                    f"  window {i + 1:2d}/{windows}: {window['approved_tps']:7.1f} approved/s,"
                    f" p50 {window['p50_ms']:6.1f} ms, p99 {window['p99_ms']:7.1f} ms{others(window)}; unique MB {rss}",
                    flush=True,
                )
        finally:
            stack.stop()
    first, last = result["windows"][0]["uss_mb"], result["windows"][-1]["uss_mb"]
    result["growth_mb"] = {part: round(last[part] - first[part], 1) for part in last if part in first}
    print("unique memory from the end of the first window to the end:", result["growth_mb"])
    if out is not None:
        out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
