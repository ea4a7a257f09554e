"""The front end's ISO 8583 codec, side by side in one run: microseconds per decode and per encode
of a typical MAC'd 0200 purchase, its 0210 answer and a 0400 reversal (field 90), through
pyiso8583 alone (``_decode_reference`` / ``_encode_reference``, what the front end ran before)
and through ``decode`` / ``encode_body`` (the one-pass codec, pyiso8583 as its fallback).

    flock /tmp/paysw-bench.lock python -m bench.codec_speed  # writes bench/results/codec.json

Each figure is the fastest of ``--repeats`` timings of ``--loops`` calls (the least disturbed by
whatever else the machine runs), the two ways interleaved so that both see the same machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.provenance import provenance
from bench.traffic import purchase, reversal
from protocols.iso8583 import (
    MAC_FIELD,
    Message,
    _decode_reference,
    _encode_reference,
    decode,
    encode_body,
)
from switch.answers import answer

OUT = Path(__file__).resolve().parent / "results" / "codec.json"
WHEN = dt.datetime(2024, 12, 2, 13, 39, 34, tzinfo=dt.UTC)
MAC = "0123456789ABCDEF"


def messages() -> dict[str, Message]:
    """What a terminal and the switch exchange on a purchase (with its MAC) and its reversal."""
    sale = purchase("T0000001", "898310048990001", "134567890123456700", 1234, "000123", WHEN)
    return {
        "0200 purchase": sale | {MAC_FIELD: MAC},
        "0210 answer": answer(sale, "00", rrn="433713000123", auth_id="000123", channel_txn_id="4200001234202412021339")
        | {MAC_FIELD: MAC},
        "0400 reversal": reversal(sale, "000124", WHEN) | {MAC_FIELD: MAC},
    }


def _timing(operation: Callable[[], object], loops: int) -> float:
    """Microseconds per call over ``loops`` calls."""
    started = time.perf_counter()
    for _ in range(loops):
        operation()
    return (time.perf_counter() - started) / loops * 1e6


def compare(reference: Callable[[], object], fast: Callable[[], object], loops: int, repeats: int) -> dict[str, float]:
    assert reference() == fast(), "the two ways disagree: nothing to compare"
    timings: dict[str, list[float]] = {"pyiso8583": [], "fast": []}
    for _ in range(repeats):
        timings["pyiso8583"].append(_timing(reference, loops))
        timings["fast"].append(_timing(fast, loops))
    best = {name: min(values) for name, values in timings.items()}
    return {
        "pyiso8583_us": round(best["pyiso8583"], 2),
        "fast_us": round(best["fast"], 2),
        "pyiso8583_median_us": round(statistics.median(timings["pyiso8583"]), 2),
        "fast_median_us": round(statistics.median(timings["fast"]), 2),
        "fast_over_pyiso8583": round(best["fast"] / best["pyiso8583"], 3),
    }


def measure(loops: int, repeats: int) -> dict[str, dict[str, object]]:
    results: dict[str, dict[str, object]] = {}
    for name, message in messages().items():
        body = encode_body(message)
        results[name] = {
            "bytes": len(body),
            "decode": compare(lambda b=body: _decode_reference(b), lambda b=body: decode(b), loops, repeats),
            "encode": compare(lambda m=message: _encode_reference(m), lambda m=message: encode_body(m), loops, repeats),
        }
    return results


def main(loops: int, repeats: int, out: Path | None) -> int:
    results = measure(loops, repeats)
    print(f"{'message':<15} {'op':<7} {'pyiso8583 µs':>13} {'fast µs':>8} {'fast/pyiso8583':>15}")
    for name, figures in results.items():
        for op in ("decode", "encode"):
            f: dict[str, float] = figures[op]  # type: ignore[assignment]
            ratio = f["fast_over_pyiso8583"]
            print(f"{name:<15} {op:<7} {f['pyiso8583_us']:>13.2f} {f['fast_us']:>8.2f} {ratio:>14.3f}x")
    if out is not None:
        setup = {"loops": loops, "repeats": repeats, "figure": "fastest of the repeats, microseconds per call"}
        document = {"provenance": provenance("python -m bench.codec_speed"), "setup": setup, "results": results}
        out.write_text(json.dumps(document, indent=1) + "\n")
        print(f"written to {out}")
    return 0


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loops", type=int, default=5000, help="calls per timing")
    parser.add_argument("--repeats", type=int, default=7, help="timings per figure, the fastest kept")
    parser.add_argument("--out", type=Path, default=OUT, help="the JSON result (default: %(default)s)")
    return parser.parse_args()


if __name__ == "__main__":
    args = _arguments()
    sys.exit(main(args.loops, args.repeats, args.out))
