"""``paysw bench start``: how long ``paysw run`` takes to be ready on the demo stack (embedded
PostgreSQL, a local Ray, the five channels' actors and the risk actor), and the CPU its processes
spent getting there. It is how long a switch that starts its own Ray is away after a crash or a
restart; one on an external Ray cluster joins the actors already running there instead. Also
how long the simulators (test equipment, started first) took to open their ports, and their CPU:
every test of a stack pays it. Those are started by this process (``Stack``), so from the second
start on by its fork server, warm (their figures are their own start, after the fork); each
counted start is therefore preceded by a cold ``paysw sim``, as the tests and an operator run
them (``simulators_cold_ready_s``, ``cpu_s simulators cold``), stopped before the stack starts.

The first start makes the journal's database and imports the keys: it is run and not counted.
Then ``--rounds`` starts, each after a stop, in the same folder. With ``--against REV`` it is an
A/B, as for ``paysw bench profile`` (``bench.ab``): the medians of each side and their ratio."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench.ab import alternate
from bench.demo import _ports_in_use, listening
from bench.demo_config import DEMO_SIMULATORS_CONFIG
from bench.provenance import provenance, resolve
from bench.simulators.server import control_address
from bench.stack import Stack, _safe

PARTS = ("front end", "ray", "postgresql", "simulators")  # Stack.processes_by_part


def main(rounds: int, out: Path | None) -> int:
    starts: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="paysw-start-") as folder:
        for i in range(rounds + 1):
            stack = Stack(Path(folder))
            cold = cold_simulators(stack) if i else {}
            try:
                stack.start()
                cpu = stack.cpu_by_part_s()
            finally:
                stack.stop()
            if i == 0:
                print(f"first start (makes the database, imports the keys), not counted: {stack.ready_s:.2f} s")
                continue
            start = {
                "ready_s": round(stack.ready_s, 3),
                "simulators_ready_s": round(stack.simulators_ready_s, 3),
                **{f"cpu_s {part}": round(cpu[part], 2) for part in PARTS},
                **cold,
            }
            print(f"start {i}/{rounds}: " + ", ".join(f"{k} {v}" for k, v in start.items()), flush=True)
            starts.append(start)
    result = {**provenance(), "starts": starts, "median": medians(starts)}
    print(f"median of {rounds}: " + ", ".join(f"{k} {v}" for k, v in result["median"].items()))
    if out is not None:
        out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


def cold_simulators(stack: Stack) -> dict[str, float]:
    """``paysw sim`` on ``stack``'s simulators, as the tests and an operator start them: seconds
    from its launch to every port open (channels and controls), and the CPU its processes had
    spent by then (the command, its fork server, the simulators); then it is stopped."""
    busy = _ports_in_use(stack.config, stack.simulators)
    if busy:
        raise RuntimeError(f"ports already in use: {', '.join(busy)} (is a demo running?)")
    addresses = [a for s in stack.simulators.simulators.values() for a in (s.listen, control_address(s))]
    began = time.monotonic()
    command = [sys.executable, "-m", "switch.cli", "sim", "--config", str(DEMO_SIMULATORS_CONFIG)]
    sim = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        while not all(listening(a) for a in addresses):
            if sim.poll() is not None:
                raise RuntimeError(f"paysw sim ended (exit {sim.returncode}) before opening its ports")
            if time.monotonic() - began > 60:
                raise RuntimeError("paysw sim did not open its ports within 60 s")
            time.sleep(0.02)
        ready = time.monotonic() - began
        tree = psutil.Process(sim.pid)
        cpu = sum(_safe(lambda p=p: sum(p.cpu_times()[:2])) for p in (tree, *tree.children(recursive=True)))
    finally:
        sim.terminate()
        try:
            sim.wait(timeout=30)
        except subprocess.TimeoutExpired:
            sim.kill()  # its simulators end with it (they watch it)
            sim.wait(timeout=30)
    return {"simulators_cold_ready_s": round(ready, 3), "cpu_s simulators cold": round(cpu, 2)}


def medians(starts: list[dict]) -> dict[str, float]:
    return {figure: round(statistics.median(s[figure] for s in starts), 3) for figure in starts[0]}


def compare(against: str, rounds: int, out: Path | None) -> int:
    """This checkout against commit ``against``: ``rounds`` runs of each (a run is one counted
    start), alternately; the medians of each side and the ratio this / against."""
    runs = alternate(against, rounds, ["start", "--rounds", "1"])
    sides = {side: medians([run["starts"][0] for run in results]) for side, results in runs.items()}
    result = {
        **provenance(),
        "against": resolve(against),
        "runs": runs,
        "median": sides,
        "ratio_this_to_against": {
            figure: round(sides["this"][figure] / sides["against"][figure], 3)
            for figure in sides["this"]
            if sides["against"].get(figure)
        },
    }
    print(f"\nmedian of {rounds} starts each; this {result['commit'][:12]} against {result['against'][:12]}:")
    print(f"  {'figure':22s} {'against':>8s} {'this':>8s} {'ratio':>6s}")
    for figure, ratio in result["ratio_this_to_against"].items():
        print(f"  {figure:22s} {sides['against'][figure]:8.2f} {sides['this'][figure]:8.2f} {ratio:6.3f}")
    if out is not None:
        out.write_text(json.dumps(result, indent=1) + "\n")
    return 0
