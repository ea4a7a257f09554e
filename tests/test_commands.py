"""Ownership of the command line: bench/ registers its own commands with ``paysw`` (the
``paysw.commands`` entry points), and nothing under switch/ imports bench/."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ("isolation", "throughput", "recon", "archive", "sm2", "profile", "held", "overload", "link", "start")


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


def _paysw(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "switch.cli", *args], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env
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


def test_a_command_loads_only_its_own_module_and_the_simulators_no_ray():
    """Only the command asked for is imported: `paysw run` runs no plugin's code, and `paysw sim`
    (each simulator process imports the command line again) loads neither Ray nor the console."""
    from switch.cli import ON_CONFIG, PLAIN, _load_commands

    assert _load_commands(["run", "--config", "x.toml"]) == ({}, {}, {})
    bench = _load_commands(["bench", "profile"])
    assert (list(bench.on_config), list(bench.registered)) == ([], ["bench"])
    recon = _load_commands(["recon", "--config", "x.toml"])
    assert (list(recon.on_config), list(recon.registered)) == (["recon"], [])
    assert list(_load_commands(["journal", "migrate"]).plain) == ["journal"]
    for argv in (["--help"], ["-h", "recon"], []):  # the top-level help lists every command
        everything = _load_commands(argv)
        assert set(everything.on_config) == set(ON_CONFIG) and set(everything.registered) >= {"bench", "demo", "sim"}
        assert set(everything.plain) == set(PLAIN)
    probe = "import sys, switch.cli as c; c._load_commands(['sim']); print(*(m in sys.modules for m in sys.argv[1:]))"
    probe = [sys.executable, "-c", probe, "ray", "switch.console.cli"]
    loaded = subprocess.run(probe, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert (loaded.returncode, loaded.stdout.strip()) == (0, "False False"), loaded.stderr


def test_a_package_registering_a_built_in_command_is_told_and_the_switch_keeps_its_own(tmp_path):
    """Another installed package cannot take ``paysw run`` over; it is told so, not ignored silently."""
    dist = tmp_path / "shadow-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: shadow\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[paysw.commands]\nrun = shadow_run\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    listed = _paysw("--help", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "paysw: shadow_run registers the command 'run', which is built in: ignored" in listed.stderr
    assert any(line.split(None, 1) == ["run", "run the switch"] for line in listed.stdout.splitlines()), listed.stdout
    bench = _paysw("bench", "--help", env=env)  # any other command's help: the same word
    assert bench.returncode == 0 and "which is built in: ignored" in bench.stderr, bench.stderr
