"""A/B of a benchmark: commit REV (a git worktree of it) against this checkout, each run as its
own ``paysw bench ...`` process, alternately, round after round on the same machine, each side
first in every other round. Compare medians of the rounds: the machine's own speed moves between
runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.provenance import ROOT


def alternate(against: str, rounds: int, bench: list[str]) -> dict[str, list[dict]]:
    """The results of ``paysw bench BENCH... --out FILE`` at commit ``against`` and here, ``rounds``
    of each: ``{"against": [...], "this": [...]}``. REV must know the options in ``bench``."""
    runs: dict[str, list[dict]] = {"against": [], "this": []}
    with tempfile.TemporaryDirectory(prefix="paysw-against-") as folder:
        base = Path(folder) / "checkout"
        subprocess.run(["git", "worktree", "add", "--detach", str(base), against], cwd=ROOT, check=True)
        try:
            sides = (("against", base), ("this", ROOT))
            for i in range(rounds):
                # Measured: the side run first in a round came out 3-4 % cheaper against the very
                # same commit (bench results, 1f3a3c2).
                for side, checkout in sides if i % 2 == 0 else sides[::-1]:
                    print(f"round {i + 1}/{rounds}: {side}", flush=True)
                    out = Path(folder) / f"{side}{i}.json"
                    command = [sys.executable, "-m", "switch.cli", "bench", *bench, "--out", str(out)]
                    env = {**os.environ, "PYTHONPATH": str(checkout)}
                    subprocess.run(command, cwd=checkout, env=env, check=True, stdout=subprocess.DEVNULL)
                    runs[side].append(json.loads(out.read_text()))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False)
    return runs
