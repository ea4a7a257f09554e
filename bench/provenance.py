"""What a benchmark result was measured on: the commit (and whether the checkout had changes
not yet committed), the command, the machine and the time. Every result file carries it, so a
figure can be traced to the code that gave it."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def git(*args: str, cwd: Path = ROOT) -> str:
    """What ``git ARGS`` prints in the checkout, stripped; "" when git fails."""
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def commit(cwd: Path = ROOT) -> str:
    """The checkout's commit, with ``+changes`` when its tracked files differ from it."""
    head = git("rev-parse", "HEAD", cwd=cwd) or "unknown"
    return head + ("+changes" if git("status", "--porcelain", "--untracked-files=no", cwd=cwd) else "")


def resolve(rev: str) -> str:
    """The full hash of commit ``rev``."""
    return git("rev-parse", rev) or rev


def provenance(command: str = "") -> dict[str, str]:
    return {
        "commit": commit(),
        "command": command or " ".join(["paysw", *sys.argv[1:]]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
