"""``paysw bench profile``: where a purchase's CPU goes. The demo stack under a closed-loop load
at one concurrency; the CPU time of every process per approved purchase (each channel's actor
and simulator by name), what PostgreSQL did per purchase, and with ``--py-spy DIR`` a py-spy
profile of the front end, the actors and the simulators (raw folded stacks, one file each) with
each one's hottest frames printed. This is how the next bottleneck is found (``README.md``).

With ``--against REV`` it is an A/B: the same profile of commit REV (a git worktree of it, run
as its own ``paysw bench profile``) and of this checkout, alternately, round after round on the
same machine (each first in every other round), and the ratio of each part's CPU per purchase,
this over REV (medians of the rounds: the machine's own speed moves between runs).

With ``--steps`` the switch times each step of a purchase (``[switch] step_timing``) and the
mean of each is reported, with the front end's answer time and the channel call by channel: where
a purchase's time goes (its CPU figures then include the timing's own, a little).

With ``--rate R`` the purchases are paced at R a second instead (as ``paysw bench held --rate``):
below saturation each journal round trip and each frame to an actor carries fewer purchases, so a
purchase costs more CPU than at the closed loop's full batches, and its latency is the figure
that matters; p50 and p99 are compared too.
"""

from __future__ import annotations

import collections
import contextlib
import glob
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import asyncpg
import psutil
import uvloop
from prometheus_client.parser import text_string_to_metric_families

from bench.ab import alternate
from bench.provenance import provenance, resolve
from bench.stack import Stack, demo_config_in, with_step_timing
from bench.throughput import closed_loop
from bench.traffic import Stans
from switch.operator import request as admin_request

WARM_UP_S = float(os.environ.get("PAYSW_BENCH_WARM_UP_S", 5))  # as for bench.isolation
_PG_TABLES = "SELECT sum(seq_scan), sum(seq_tup_read), sum(idx_scan) FROM pg_stat_user_tables WHERE relname ~ '^txn_'"
_PG_FIGURES = ("txn_seq_scans", "txn_rows_seq_read", "txn_index_scans", "commits", "rows_returned")
_PG_DATABASE = "SELECT xact_commit, tup_returned FROM pg_stat_database WHERE datname = current_database()"


def named_processes(stack: Stack, ray: dict[str, list[psutil.Process]] | None = None) -> dict[str, psutil.Process]:
    """Every process of the stack under a readable name: each front end, actors by their channel
    and the risk counters' as ``actor risk:N``, Ray's other processes by program under their group
    of ``ray`` (by default, the local Ray the switch started, as "ray")."""
    parts = stack.processes_by_part()
    actor_pids = {
        shard["pid"]: f"actor {name}:{shard['shard']}"
        for name, channel in admin_request(stack.config.switch.admin_listen, "/channels").items()
        for shard in channel["shards"]
    }
    fronts = parts["front end"]
    if len(fronts) == 1:
        named = {"front end": fronts[0]}
    else:  # paysw run --workers N: the supervisor, then each worker
        named = {"front end supervisor": fronts[0], **{f"front end {i}": p for i, p in enumerate(fronts[1:])}}
    risk_shards = 0
    for group, processes in (ray or {"ray": parts["ray"]}).items():
        for process in processes:
            program = process.cmdline()[0].rsplit("/", 1)[-1] if process.cmdline() else "?"
            if program.startswith("ray::RiskActor"):  # the risk counters (Ray titles it by method while one runs)
                named[f"actor risk:{risk_shards}"] = process
                risk_shards += 1
                continue
            named[actor_pids.get(process.pid) or f"{group} {program} {process.pid}"] = process
    for i, process in enumerate(parts["postgresql"]):
        named[f"postgresql {i}"] = process
    for sim in stack.simulator_processes():
        named[f"simulator {sim.name.removeprefix('sim-')}"] = psutil.Process(sim.pid)
    named["load generator"] = psutil.Process()
    return named


def pg_socket_dir(folder: str | Path) -> str:
    """Where the embedded PostgreSQL of the stack in ``folder`` listens."""
    return os.path.dirname(glob.glob(f"{folder}/**/.s.PGSQL.*", recursive=True)[0])


async def pg_counters(socket_dir: str) -> tuple[int, ...]:
    """PostgreSQL's running counts, for ``pg_per_approved``."""
    conn = await asyncpg.connect(host=socket_dir, user="postgres", database="postgres")
    try:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        tables = await conn.fetchrow(_PG_TABLES)
        database = await conn.fetchrow(_PG_DATABASE)
        return (*(int(v or 0) for v in tables), *(int(v or 0) for v in database))
    finally:
        await conn.close()


def cpu_seconds(processes: dict[str, psutil.Process]) -> dict[str, tuple[float, float]]:
    """Each process's CPU seconds so far: (user + kernel, kernel)."""
    used = {}
    for name, process in processes.items():
        with contextlib.suppress(psutil.Error):  # a process that has just gone
            times = process.cpu_times()
            used[name] = (times.user + times.system, times.system)
    return used


def part_of(name: str) -> str:
    """The part a process is reported under: PostgreSQL's and Ray's own processes together."""
    return name.split(" ")[0] if name.startswith(("postgresql", "ray ")) else name


def cpu_ms_per_approved(
    before: dict[str, tuple[float, float]],
    after: dict[str, tuple[float, float]],
    approved: float,
    part: Callable[[str], str] = part_of,
    kernel: bool = False,
) -> dict[str, float]:
    """Each part's CPU (with ``kernel``, its kernel time only) between two ``cpu_seconds``, in ms
    per approved purchase, the largest first."""
    used: dict[str, float] = collections.defaultdict(float)
    for name in after.keys() & before.keys() if approved else ():
        used[part(name)] += (after[name][kernel] - before[name][kernel]) * 1000 / approved
    return {name: round(ms, 3) for name, ms in sorted(used.items(), key=lambda kv: -kv[1])}


def pg_per_approved(before: tuple[int, ...], after: tuple[int, ...], approved: float) -> dict[str, float]:
    """PostgreSQL's work between two ``pg_counters``, per approved purchase."""
    return {
        name: round((b - a) / approved, 3) if approved else 0.0
        for name, a, b in zip(_PG_FIGURES, before, after, strict=True)
    }


def totals(cpu_ms: dict[str, float]) -> dict[str, float]:
    """The switch's CPU per purchase (front end, actors, Ray, PostgreSQL: issue 17's figure) and
    the simulators'."""
    switch = sum(ms for part, ms in cpu_ms.items() if part.startswith(("front end", "actor ", "ray", "postgresql")))
    simulators = sum(ms for part, ms in cpu_ms.items() if part.startswith("simulator "))
    return {"switch": round(switch, 3), "simulators": round(simulators, 3)}


def _spy(processes: dict[str, psutil.Process], seconds: float, folder: Path) -> list[subprocess.Popen]:
    """py-spy on the Python processes that carry payments, without pausing them."""
    folder.mkdir(parents=True, exist_ok=True)
    spy = str(Path(sys.executable).with_name("py-spy"))
    spies = []
    for name, process in processes.items():
        if name == "front end" or name.startswith(("actor ", "simulator ")):
            output = folder / f"{name.replace(' ', '_').replace(':', '-')}.txt"
            # --gil: only what holds the GIL, so idle threads and a loop waiting in epoll do not count
            record = ["record", "--nonblocking", "--gil", "-r", "100", "-d", str(int(seconds)), "-f", "raw"]
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
        if not stack or not count.isdigit():  # not a folded stack (another file in the folder, say)
            continue
        total += int(count)
        own[stack.rsplit(";", 1)[-1].strip()] += int(count)
    return [(round(100 * n / total, 1), frame) for frame, n in own.most_common(top)] if total else []


_TIMED = ("paysw_step_seconds", "paysw_request_seconds", "paysw_channel_call_seconds")


def timings(metrics: str) -> dict[str, tuple[float, float]]:
    """Each timed series of a scrape (a step by transaction type, an answer or channel call by
    channel): its sum of seconds and its count."""
    out: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples if family.name in _TIMED else ():
            kind = sample.name.rpartition("_")[2]
            if kind in ("sum", "count"):
                key = f"{family.name.removeprefix('paysw_')}{{{','.join(sample.labels.values())}}}"
                out[key][kind == "count"] += sample.value
    return {key: (total, count) for key, (total, count) in out.items()}


def mean_ms(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> dict[str, float]:
    """The mean milliseconds of each series over what was timed between two scrapes, longest first."""
    means = {}
    for key, (total, count) in after.items():
        was_total, was_count = before.get(key, (0.0, 0.0))
        if count > was_count:
            means[key] = round((total - was_total) / (count - was_count) * 1000, 3)
    return dict(sorted(means.items(), key=lambda item: -item[1]))


def main(
    concurrency: int = 128,
    seconds: float = 20.0,
    py_spy: Path | None = None,
    out: Path | None = None,
    rate: float | None = None,
    steps: bool = False,
) -> int:
    with tempfile.TemporaryDirectory(prefix="paysw-profile-") as folder:
        stack = Stack(Path(folder), demo_config_in(Path(folder), with_step_timing) if steps else None)
        paced = f", paced at {rate:g}/s" if rate else ""
        print(f"the demo stack in {folder}; {concurrency} purchases under way{paced}, {seconds:g} s", flush=True)
        try:
            stack.start()
            socket_dir = pg_socket_dir(folder)
            stans = Stans(start=random.randrange(1, 500_000))
            uvloop.run(closed_loop("127.0.0.1", stack.port, concurrency, WARM_UP_S, stans))
            processes = named_processes(stack)
            spies = _spy(processes, seconds - 2, py_spy) if py_spy is not None else []
            times_before = timings(stack.metrics()) if steps else {}
            cpu_before, pg_before = cpu_seconds(processes), uvloop.run(pg_counters(socket_dir))
            load = uvloop.run(closed_loop("127.0.0.1", stack.port, concurrency, seconds, stans, rate))
            cpu_after, pg_after = cpu_seconds(processes), uvloop.run(pg_counters(socket_dir))
            times_after = timings(stack.metrics()) if steps else {}
            for spy in spies:
                spy.wait(timeout=60)
        finally:
            stack.stop()
    approved = load["approved_tps"] * seconds
    cpu_ms = cpu_ms_per_approved(cpu_before, cpu_after, approved)
    kernel = cpu_ms_per_approved(cpu_before, cpu_after, approved, kernel=True)
    result = {
        **provenance(),
        "rate": rate,
        "load": load,
        "cpu_ms_per_approved": cpu_ms,
        "kernel_ms_per_approved": {part: kernel[part] for part in cpu_ms},
        "totals_ms_per_approved": totals(cpu_ms),
        "postgresql_per_approved": pg_per_approved(pg_before, pg_after, approved),
    }
    print(f"\n{load['approved_tps']:.0f} approved/s, p50 {load['p50_ms']} ms, p99 {load['p99_ms']} ms")
    print(f"CPU per approved purchase, {sum(cpu_ms.values()):.2f} ms in all (of which in the kernel):")
    for name, ms in cpu_ms.items():
        print(f"  {name:22s} {ms:6.3f} ms  ({result['kernel_ms_per_approved'][name]:.3f})")
    print("  " + ", ".join(f"{part} {ms:.3f} ms" for part, ms in result["totals_ms_per_approved"].items()))
    print("PostgreSQL per approved purchase:", result["postgresql_per_approved"])
    if steps:
        result["mean_ms"] = means = mean_ms(times_before, times_after)
        print("\nmean time (ms): each step of a purchase, the answer and the channel call by channel")
        for key, ms in means.items():
            print(f"  {ms:8.3f}  {key}")
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


def compare(
    against: str, rounds: int, concurrency: int, seconds: float, out: Path | None, rate: float | None = None
) -> int:
    """This checkout against commit ``against``: ``rounds`` profiles of each, alternately; the
    median of each part's CPU per purchase (and of approved/s, p50 and p99) and the ratio this /
    against. With ``rate``, REV must know ``--rate`` too."""
    bench = ["profile", "--concurrency", str(concurrency), "--seconds", str(seconds)]
    runs = alternate(against, rounds, bench + (["--rate", str(rate)] if rate else []))
    medians = {side: _medians(results) for side, results in runs.items()}
    parts = sorted(medians["this"].keys() | medians["against"].keys(), key=lambda p: -medians["against"].get(p, 0))
    result = {
        **provenance(),
        "against": resolve(against),
        "rate": rate,
        "rounds": runs,
        "median_ms_per_approved": medians,
        "ratio_this_to_against": {
            part: round(medians["this"][part] / medians["against"][part], 3)
            for part in parts
            if medians["against"].get(part) and part in medians["this"]
        },
    }
    print(
        f"\nCPU ms (and PostgreSQL's counts, pg) per approved purchase, median of {rounds} rounds each; "
        f"this {result['commit'][:12]}"
        f" against {result['against'][:12]}:"
    )
    print(f"  {'part':22s} {'against':>8s} {'this':>8s} {'ratio':>6s}")
    for part in parts:
        was, now = medians["against"].get(part), medians["this"].get(part)
        ratio = result["ratio_this_to_against"].get(part)
        print(f"  {part:22s} {was or 0:8.3f} {now or 0:8.3f} {'' if ratio is None else f'{ratio:6.3f}'}")
    if out is not None:
        out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


def _medians(results: list[dict]) -> dict[str, float]:
    """Each part's median CPU per purchase over the runs, with the totals, approved/s, p50 and p99,
    and PostgreSQL's work per purchase (``pg ...``: counts, which the machine's speed does not move)."""
    figures: dict[str, list[float]] = collections.defaultdict(list)
    for result in results:
        cpu, load = result["cpu_ms_per_approved"], result["load"]
        latency = {"approved/s": load["approved_tps"], "p50 ms": load["p50_ms"], "p99 ms": load["p99_ms"]}
        postgresql = {f"pg {name}": n for name, n in result.get("postgresql_per_approved", {}).items()}
        for part, ms in {**cpu, **totals(cpu), **latency, **postgresql}.items():
            figures[part].append(ms)
    return {part: round(statistics.median(values), 3) for part, values in figures.items()}
