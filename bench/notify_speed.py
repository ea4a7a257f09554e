"""``paysw bench notify``: notifications to the merchant under load. The demo stack runs twice in
the same run, on fresh data: once as the baseline with no merchant URL (nothing is notified), once
with the demo merchant's receiver taking a notification for every payment credited. Each run is
a loop of ISO 8583 purchases of that merchant (paced at ``rate`` a second, the throughput
issue's held load, or as fast as ``concurrency`` under way allow); the notified run reports the notifications
delivered a second and the delay from the credit (the move to APPROVED, as the journal times it)
to the merchant's receipt, p50 and p99, and both runs the approved purchases a second and their
p99, so what the outbox costs the payments is a ratio of the same run."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import uvloop

from bench.demo import _wait_for_ports
from bench.demo_config import DEMO_DIR
from bench.provenance import provenance
from bench.stack import Stack, demo_config_in
from bench.throughput import closed_loop
from bench.traffic import DEMO_MERCHANT, Stans, quantile

RECEIVER = ("127.0.0.1", 9590)  # the demo merchant's notify_url
DRAIN_S = 30.0  # after the load, how long the outbox may take to deliver what is left


class ReceiverProcess:
    """The merchant's receiver as a process of its own (``bench.merchant``), as a merchant is:
    in this one it would share the load generator's interpreter."""

    def __init__(self) -> None:
        key = DEMO_DIR / "keys" / "merchants" / DEMO_MERCHANT
        listen = f"{RECEIVER[0]}:{RECEIVER[1]}"
        command = [sys.executable, "-m", "bench.merchant", "--key", str(key), "--listen", listen, "--quiet"]
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        _wait_for_ports([listen])

    def received(self) -> tuple[list[dict], list[float]]:
        with urllib.request.urlopen(f"http://{RECEIVER[0]}:{RECEIVER[1]}/_received", timeout=30) as answer:
            got = json.load(answer)
        return got["received"], got["arrivals"]

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(10)


def run_side(notified: bool, concurrency: int, seconds: float, rate: float | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="paysw-notify-") as folder:
        config = demo_config_in(Path(folder), notify=notified)
        receiver = ReceiverProcess()
        stack = Stack(Path(folder), config)
        try:
            stack.start()
            stans = Stans(start=random.randrange(1, 500_000))
            uvloop.run(closed_loop("127.0.0.1", stack.port, concurrency, 5.0, stans))  # warm-up
            time.sleep(5)
            started, before = time.time(), len(receiver.received()[0])
            figures = uvloop.run(closed_loop("127.0.0.1", stack.port, concurrency, seconds, stans, rate))
            ended = time.time()
            expected = before + figures["answers_by_code"].get("00", 0)
            deadline = ended + DRAIN_S
            while notified and len(receiver.received()[0]) < expected and time.time() < deadline:
                time.sleep(0.5)
            received, arrivals = receiver.received()
        finally:
            stack.stop()
            receiver.stop()
        if notified:
            bodies = list(zip(received[before:], arrivals[before:], strict=True))
            in_window = [arrived for _, arrived in bodies if arrived <= ended]
            delays = [arrived - body["moved_at"] / 1000 for body, arrived in bodies if body["state"] == "APPROVED"]
            figures |= {
                "notified": len(bodies),
                "not_notified": expected - len(received),
                "delivered_per_s": round(len(in_window) / (ended - started), 1),
                "delay_p50_ms": round(quantile(delays, 50) * 1000, 1),
                "delay_p99_ms": round(quantile(delays, 99) * 1000, 1),
            }
    return figures


def main(concurrency: int = 128, seconds: float = 20.0, rate: float = 500.0, out: Path | None = None) -> int:
    """``rate`` purchases a second (0: as many as ``concurrency`` under way allow)."""
    paced = rate or None
    result: dict = {**provenance(), "concurrency": concurrency, "seconds": seconds, "rate": rate}
    load = f"{rate:g} purchases a second, at most {concurrency}" if rate else f"{concurrency} purchases"
    print(f"baseline (no merchant URL), then notified; {load} under way, {seconds:g} s each")
    result["baseline"] = baseline = run_side(False, concurrency, seconds, paced)
    print(f"  baseline: {baseline['approved_tps']:.1f} approved/s, p99 {baseline['p99_ms']:.1f} ms", flush=True)
    result["notified"] = notified = run_side(True, concurrency, seconds, paced)
    print(
        f"  notified: {notified['approved_tps']:.1f} approved/s, p99 {notified['p99_ms']:.1f} ms; "
        f"{notified['delivered_per_s']:.1f} notifications delivered/s, credit to receipt p50 "
        f"{notified['delay_p50_ms']:.1f} ms, p99 {notified['delay_p99_ms']:.1f} ms; "
        f"{notified['not_notified']} not notified within {DRAIN_S:g} s after the load",
        flush=True,
    )
    result["approved_ratio"] = round(notified["approved_tps"] / baseline["approved_tps"], 3)
    result["p99_ratio"] = round(notified["p99_ms"] / baseline["p99_ms"], 3)
    print(f"  notified / baseline: approved/s {result['approved_ratio']}, p99 {result['p99_ratio']}")
    if out is not None:
        out.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if notified["not_notified"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
