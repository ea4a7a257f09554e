"""The benchmarks that start the demo stack on its fixed ports keep working: short runs of the
throughput, profile and start benchmarks. (The load tools that need no demo stack are in
test_bench_tools.py, so that they run beside these.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("demo_ports")  # the stack on the demo's fixed ports

ROOT = Path(__file__).resolve().parent.parent


def test_the_throughput_benchmark_runs_against_its_baseline(tmp_path):
    short = ["--steps", "2", "--step-seconds", "3", "--warm-up-seconds", "1"]
    result = subprocess.run(
        [sys.executable, "-m", "switch.cli", "bench", "throughput", *short, "--out-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "throughput.json").read_text())
    switch, baseline = report["switch"][0], report["baseline"][0]
    assert switch["approved_tps"] > 0 and baseline["approved_tps"] > 0
    # Every purchase is built to be approved. The demo configuration sheds by queueing delay, and
    # the neighbouring test process's load can push this switch past it: 91, and nothing else.
    assert set(switch["answers_by_code"]) <= {"00", "91"}, switch["answers_by_code"]
    assert switch["not_approved"] == switch["answers_by_code"].get("91", 0)
    assert set(switch["cpu_ms_per_approved"]) == {"front end", "ray", "postgresql", "simulators", "load generator"}
    # The floor times the four signatures of every channel's call; RSA and SM2 cost far more
    # than the HMAC channels, and no switch gets past the ceiling they set.
    signatures = report["floor"]["signature_us_per_call"]
    assert set(signatures) == {"wechat", "alipay", "unionpay", "ecny", "inbank"}
    assert all(len(ops) == 4 for ops in signatures.values())
    assert min(signatures["alipay"]["channel signs"], signatures["ecny"]["switch verifies"]) > 5 * max(
        signatures["wechat"].values()
    )
    assert report["floor"]["signatures_ms_per_purchase"] > 0
    assert switch["approved_tps"] < switch["ceiling_tps"]
    assert (tmp_path / "throughput.png").read_bytes()[:4] == b"\x89PNG"


def test_the_profile_benchmark_accounts_for_every_part_by_channel(tmp_path):
    """Paced (``--rate``), as the profile of a load below saturation is taken; with each step's time."""
    result = subprocess.run(
        [sys.executable, "-m", "switch.cli", "bench", "profile", "--concurrency", "8", "--seconds", "3",
         "--rate", "60", "--steps", "--out", str(tmp_path / "profile.json")],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PAYSW_BENCH_WARM_UP_S": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "profile.json").read_text())
    # Eight senders unpaced would answer hundreds a second; paced, some 60.
    assert report["rate"] == 60 and 0 < report["load"]["approved_tps"] <= 70
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert report["commit"].removesuffix("+changes") == head  # the figures name the code they measured
    assert report["totals_ms_per_approved"]["switch"] > 0 and report["totals_ms_per_approved"]["simulators"] > 0
    channels = ("wechat", "alipay", "unionpay", "ecny", "inbank")
    parts = {"front end", "postgresql", "load generator", "actor risk:0", *(f"actor {c}:0" for c in channels)}
    assert parts | {f"simulator {c}" for c in channels} <= set(report["cpu_ms_per_approved"])
    assert report["postgresql_per_approved"]["commits"] > 0  # the journal's group commits were seen
    means = report["mean_ms"]  # where a purchase's time goes: its steps, the answer, the channel call
    assert {"step_seconds{write_ahead,purchase}", "step_seconds{record,purchase}"} <= set(means), means
    assert means["request_seconds{wechat}"] > means["channel_call_seconds{wechat}"] > 2.0  # the simulator's 2 ms


def test_the_start_benchmark_times_the_switch_to_ready_and_its_processes_cpu(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "switch.cli", "bench", "start", "--rounds", "1", "--out", str(tmp_path / "start.json")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "start.json").read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert report["commit"].removesuffix("+changes") == head
    (start,) = report["starts"]  # the first start, which makes the database, is not counted
    assert start == report["median"]
    # Ready takes Ray's start and six actors: seconds, not the instant a stub would answer in.
    assert 1 < start["ready_s"] < 180
    # Ray's processes (the actors among them) and the front end did the work of it.
    assert start["cpu_s ray"] > 1 and start["cpu_s front end"] > 0.3
    # The simulators (five processes, forked from this process's fork server, warm since the first
    # start) opened their ports; then once more as `paysw sim` from cold, as the tests start them,
    # which takes the imports of the command and of its fork server at least.
    assert 0 < start["simulators_ready_s"] < 90 and start["cpu_s simulators"] > 0
    assert 0.1 < start["simulators_cold_ready_s"] < 90 and start["cpu_s simulators cold"] > 0.3
    assert "not counted" in result.stdout and "start 1/1" in result.stdout
