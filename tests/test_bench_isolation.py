"""A short run of the isolation benchmark (``paysw bench isolation``), so that it keeps working:
the whole stack on the demo's ports, one fault, a few seconds a phase."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.usefixtures("demo_ports")  # the stack on the demo's fixed ports


def test_the_isolation_benchmark_runs_and_reports(tmp_path):
    out = tmp_path / "isolation.json"
    short = ["--rate", "5", "--phase-seconds", "4", "--recovery-seconds", "6", "--faults", "hang"]
    result = subprocess.run(
        [sys.executable, "-m", "switch.cli", "bench", "isolation", *short, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PAYSW_BENCH_WARM_UP_S": "2"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "healthy channels: throughput" in result.stdout
    report = json.loads(out.read_text())
    assert list(report["phases"]) == ["healthy", "hang", "healthy_again"]
    hang = report["phases"]["hang"]
    assert hang["healthy_min_tps_ratio"] >= 0.9  # the others kept approving while WeChat Pay hung
    assert hang["sick"]["share_91"] > 0.5 and hang["sick"]["within_deadline"]
    assert report["setup"]["command"].startswith("paysw bench isolation")
