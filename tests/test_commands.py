"""Ownership of the command line: bench/ registers its own commands with ``paysw`` (the
``paysw.commands`` entry points), and nothing under switch/ imports bench/."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ("isolation", "throughput", "recon", "sm2", "profile", "held", "overload", "link", "start")


def _imported_modules(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_no_module_under_switch_imports_bench():
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in sorted((ROOT / "switch").rglob("*.py"))
        for name in _imported_modules(ast.parse(path.read_text(), str(path)))
        if name == "bench" or name.startswith("bench.")
    ]
    assert offenders == []


def _paysw(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "switch.cli", *args], capture_output=True, text=True, timeout=60, cwd=ROOT
    )


def test_bench_commands_are_reachable_through_paysw():
    listed = _paysw("--help")
    assert listed.returncode == 0, listed.stderr
    for command, help_text in [
        ("bench", "benchmarks on the demo stack"),
        ("sim", "run the channel simulators"),
        ("demo", "start everything and send a burst of traffic"),
    ]:
        assert any(line.split(None, 1) == [command, help_text] for line in listed.stdout.splitlines()), (
            f"paysw --help does not list {command} (is the package installed with its paysw.commands entry "
            f"points? pip install -e .):\n{listed.stdout}"
        )
    benches = _paysw("bench", "--help")
    assert benches.returncode == 0, benches.stderr
    listed_benches = {
        line.split()[0] for line in benches.stdout.splitlines() if line.startswith("    ") and line.strip()
    }
    assert listed_benches >= set(BENCHMARKS), benches.stdout
    fault = _paysw("sim", "fault", "--help")
    assert fault.returncode == 0 and "--error-rate SHARE" in fault.stdout, fault.stderr
    # bench's own code runs them: its argument checks answer, before anything is started.
    bad_steps = _paysw("bench", "throughput", "--steps", "4,x")
    assert bad_steps.returncode == 2
    assert "paysw bench throughput: --steps: not a list of numbers: '4,x'" in bad_steps.stderr
    for command in (
        ["run", "--workers", "0"],
        ["bench", "start", "--rounds", "0"],
        ["bench", "profile", "--rounds", "x"],
    ):
        refused = _paysw(*command)
        assert refused.returncode == 2, (command, refused.stderr)
        assert f"argument {command[-2]}: expected a whole number of at least 1, not '{command[-1]}'" in refused.stderr
    no_config = _paysw("sim")
    assert (no_config.returncode, no_config.stderr.strip()) == (2, "paysw sim: --config is required")


def test_paysw_run_loads_no_other_packages_commands():
    """Only the registered command asked for is imported: `paysw run` runs no plugin's code."""
    from switch.cli import _registered

    assert _registered(["run", "--config", "x.toml"]) == {}
    assert list(_registered(["bench", "profile"])) == ["bench"]
    assert set(_registered(["--help"])) >= {"bench", "demo", "sim"}
