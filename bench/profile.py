"""``paysw bench profile``: where a purchase's CPU goes. The demo stack under a closed-loop load
at one concurrency; the CPU time of every process per approved purchase (each channel's actor
and simulator by name), what PostgreSQL did per purchase, and with ``--py-spy DIR`` a py-spy
profile of the front end, the actors and the simulators (raw folded stacks, one file each) with
each one's hottest frames printed. This is how the next bottleneck is found (``README.md``).
"""

from __future__ import annotations

import collections
import contextlib
import glob
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import psutil
import uvloop

from bench.stack import Stack
from bench.throughput import closed_loop
from bench.traffic import Stans
from switch.operator import request as admin_request

WARM_UP_S = 5.0
_PG_TABLES = "SELECT sum(seq_scan), sum(seq_tup_read), sum(idx_scan) FROM pg_stat_user_tables WHERE relname ~ '^txn_'"
_PG_FIGURES = ("txn_seq_scans", "txn_rows_seq_read", "txn_index_scans", "commits", "rows_returned")
_PG_DATABASE = "SELECT xact_commit, tup_returned FROM pg_stat_database WHERE datname = current_database()"


def _named_processes(stack: Stack) -> dict[str, psutil.Process]:
    """Every process of the stack under a readable name: actors by their channel."""
    parts = stack.processes_by_part()
    actor_pids = {
        shard["pid"]: f"actor {name}:{shard['shard']}"
        for name, channel in admin_request(stack.config.switch.admin_listen, "/channels").items()
        for shard in channel["shards"]
    }
    named = {"front end": parts["front end"][0]}
    for process in parts["ray"]:
        program = process.cmdline()[0].rsplit("/", 1)[-1] if process.cmdline() else "?"
        named[actor_pids.get(process.pid) or f"ray {program} {process.pid}"] = process
    for i, process in enumerate(parts["postgresql"]):
        named[f"postgresql {i}"] = process
    for sim in stack.simulator_processes():
        named[f"simulator {sim.name.removeprefix('sim-')}"] = psutil.Process(sim.pid)
    named["load generator"] = psutil.Process()
    return named


async def _pg_counters(url_host: str) -> tuple[int, ...]:
    conn = await asyncpg.connect(host=url_host, user="postgres", database="postgres")
    try:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        tables = await conn.fetchrow(_PG_TABLES)
        database = await conn.fetchrow(_PG_DATABASE)
        return (*(int(v or 0) for v in tables), *(int(v or 0) for v in database))
    finally:
        await conn.close()


def _cpu(processes: dict[str, psutil.Process]) -> dict[str, float]:
    used = {}
    for name, process in processes.items():
        with contextlib.suppress(psutil.Error):  # a process that has just gone
            used[name] = sum(process.cpu_times()[:2])
    return used


def _spy(processes: dict[str, psutil.Process], seconds: float, folder: Path) -> list[subprocess.Popen]:
    """py-spy on the Python processes that carry payments, without pausing them."""
    folder.mkdir(parents=True, exist_ok=True)
    spy = str(Path(sys.executable).with_name("py-spy"))
    spies = []
    for name, process in processes.items():
        if name == "front end" or name.startswith(("actor ", "simulator ")):
            output = folder / f"{name.replace(' ', '_').replace(':', '-')}.txt"
            record = ["record", "--nonblocking", "-r", "100", "-d", str(int(seconds)), "-f", "raw"]
            spies.append(
                subprocess.Popen(
                    [spy, *record, "-p", str(process.pid), "-o", str(output)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
    return spies


def hottest(folded: Path, top: int = 6) -> list[tuple[float, str]]:
    """The frames a folded-stack file spends most samples in, itself (not its callees)."""
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        total += int(count)
        own[stack.rsplit(";", 1)[-1].strip()] += int(count)
    return [(round(100 * n / total, 1), frame) for frame, n in own.most_common(top)] if total else []


def main(concurrency: int = 128, seconds: float = 20.0, py_spy: Path | None = None, out: Path | None = None) -> int:
    with tempfile.TemporaryDirectory(prefix="paysw-profile-") as folder:
        stack = Stack(Path(folder))
        print(f"the demo stack in {folder}; {concurrency} purchases under way, {seconds:g} s", flush=True)
        try:
            stack.start()
            socket_dir = os.path.dirname(glob.glob(f"{folder}/**/.s.PGSQL.*", recursive=True)[0])
            stans = Stans(start=random.randrange(1, 500_000))
            uvloop.run(closed_loop("127.0.0.1", stack.port, concurrency, WARM_UP_S, stans))
            processes = _named_processes(stack)
            spies = _spy(processes, seconds - 2, py_spy) if py_spy is not None else []
            cpu_before, pg_before = _cpu(processes), uvloop.run(_pg_counters(socket_dir))
            load = uvloop.run(closed_loop("127.0.0.1", stack.port, concurrency, seconds, stans))
            cpu_after, pg_after = _cpu(processes), uvloop.run(_pg_counters(socket_dir))
            for spy in spies:
                spy.wait(timeout=60)
        finally:
            stack.stop()
    approved = load["approved_tps"] * seconds
    per_purchase = {
        name: round((cpu_after[name] - cpu_before[name]) * 1000 / approved, 3)
        for name in cpu_after
        if name in cpu_before and approved
    }
    grouped: dict[str, float] = collections.defaultdict(float)
    for name, ms in per_purchase.items():
        grouped[name.split(" ")[0] if name.startswith(("postgresql", "ray ")) else name] += ms
    pg = [(after - before) / approved for before, after in zip(pg_before, pg_after, strict=True)] if approved else []
    result = {
        "load": load,
        "cpu_ms_per_approved": dict(sorted(grouped.items(), key=lambda kv: -kv[1])),
        "postgresql_per_approved": {name: round(v, 3) for name, v in zip(_PG_FIGURES, pg, strict=True)},
        "command": " ".join(["paysw", *sys.argv[1:]]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(f"\n{load['approved_tps']:.0f} approved/s, p50 {load['p50_ms']} ms, p99 {load['p99_ms']} ms")
    print(f"CPU per approved purchase, {sum(grouped.values()):.2f} ms in all:")
    for name, ms in result["cpu_ms_per_approved"].items():
        print(f"  {name:22s} {ms:6.3f} ms")
    print("PostgreSQL per approved purchase:", result["postgresql_per_approved"])
    if py_spy is not None:
        result["hottest"] = {}
        for folded in sorted(py_spy.glob("*.txt")):
            result["hottest"][folded.stem] = frames = hottest(folded)
            print(f"\n{folded.stem} (py-spy, own samples):")
            for share, frame in frames:
                print(f"  {share:5.1f}%  {frame}")
    if out is not None:
        out.write_text(json.dumps(result, indent=1) + "\n")
    return 0
