"""What a risk shard holds and spends per payment, this tree's counters against ``--against``'s, in
one run: the bytes a payment keeps for the day (the Ray part of a held run's memory growth) and
the CPU of its check and its approval.

A shard gets a payment as a front end sends it: a check against three counted rules (a code's
burst over 10 minutes, a terminal's day, a merchant's hour across terminals), then its approval,
each decoded off the link. Every payment is on a code of its own (payment codes are one-time), on
one of 50 terminals of one merchant, 10 ms apart. Each tree runs in a process of its own (this
file, ``--drive``, with that tree first on its path), alternately, ``--rounds`` times: CPU over the
payments untraced (expired every 6,000), then the bytes they hold, traced (``tracemalloc``: Python's
allocations, before the allocator's own overhead).

    python -m bench.risk_memory --against HEAD~1 --out bench/results/risk-memory-ab.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.provenance import provenance, resolve

ROOT = Path(__file__).resolve().parent.parent
TERMINALS = 50
MERCHANT = "898310048990001"


def drive(payments: int, traced: bool) -> dict[str, float]:
    import gc
    import random
    import time
    import tracemalloc

    import msgspec

    from risk.actor import subjects_of
    from risk.counters import Book, Counters
    from risk.messages import ADD, ASKS, CHECK, Ask, Check, encode_checks

    rng, now = random.Random(2), [1_000_000.0]
    book = Book(Counters(clock=lambda: now[0]))
    checks = encode_checks([
        Check("code-burst", "code", 600, max_count=5),
        Check("terminal-day", "terminal", 86_400, max_fen=10**12),
        Check("merchant-spread", "merchant", 3_600, across="terminal", max_distinct=1_000),
    ])  # fmt: skip
    frames = []
    for n in range(payments):
        terminal = f"T{rng.randrange(TERMINALS):07d}"
        subjects = list(subjects_of(f"{rng.getrandbits(256):064x}", terminal, MERCHANT))
        frames.append((
            msgspec.msgpack.encode([Ask(n, CHECK, subjects, "", 100, MERCHANT, terminal, checks)]),
            msgspec.msgpack.encode([Ask(n, ADD, subjects, f"{n:012d}", 100, MERCHANT, terminal)]),
        ))  # fmt: skip
    gc.collect()
    if traced:
        tracemalloc.start()
    cpu = time.process_time()
    for n, (check, add) in enumerate(frames):
        book.answer(ASKS.decode(check)[0])
        book.answer(ASKS.decode(add)[0])
        now[0] += 0.01
        if not traced and n % 6_000 == 0:
            book.counters.expire()
    cpu = time.process_time() - cpu
    if not traced:
        return {"cpu_us_per_payment": round(cpu / payments * 1e6, 2)}
    gc.collect()
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return {"bytes_per_payment": round(held / payments)}


def _measure(tree: Path, payments: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.risk_memory", "--drive", str(payments)],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.risk_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", default="HEAD~1", help="the commit whose counters are the baseline")
    parser.add_argument("--payments", type=int, default=100_000, help="payments per measurement (default 100,000)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per tree (default 3)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--drive", type=int, help=argparse.SUPPRESS)  # one tree's measurement
    args = parser.parse_args(argv)
    if args.drive:
        print(json.dumps({**drive(args.drive, traced=False), **drive(args.drive, traced=True)}))
        return 0
    runs: dict[str, list[dict[str, float]]] = {"against": [], "this": []}
    with tempfile.TemporaryDirectory(prefix="risk-memory-") as tmp:
        archive = subprocess.run(["git", "archive", args.against], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        (Path(tmp) / "bench" / "risk_memory.py").write_bytes(Path(__file__).read_bytes())  # the same driver
        trees = {"against": Path(tmp), "this": ROOT}
        for r in range(args.rounds):
            for name in trees if r % 2 == 0 else reversed(trees):
                runs[name].append(_measure(trees[name], args.payments))
                print(f"{name:8s} {runs[name][-1]}", flush=True)
    mean = {name: {key: round(sum(m[key] for m in ms) / len(ms), 2) for key in ms[0]} for name, ms in runs.items()}
    result = {
        **provenance(" ".join(["python -m bench.risk_memory", *(argv if argv is not None else sys.argv[1:])])),
        "against": resolve(args.against),
        "payments": args.payments,
        "runs": runs,
        "mean": mean,
        "this_over_against": {key: round(mean["this"][key] / mean["against"][key], 3) for key in mean["this"]},
    }
    print(json.dumps(result["this_over_against"]))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
