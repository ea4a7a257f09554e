"""The journal's hot path alone, old statements against new in one run: ``Journal.write_ahead``
then ``Journal.record`` (accepted, answered 00) for purchases at a fixed concurrency, on one
embedded PostgreSQL, each variant in a fresh database of it, the variants taking turns.

"Old" is the baseline commit's ``switch`` and ``protocols`` (``git archive``), schema and all;
"new" is this tree's. Each variant runs in a driver process of its own (this file, ``--drive``,
with that tree first on its path), so both are measured by the same code. A driver measures:

- ``mixed``: closed loop, each worker writing ahead, waiting as a channel would (1-4 ms), then
  recording the outcome: the figure per purchase;
- ``write_ahead`` and ``outcome``: every worker's write-aheads, then every worker's outcomes, so
  that each statement's share is seen apart.

Per purchase: PostgreSQL's CPU (every process of the server, read from /proc), the driver's
CPU (asyncpg's encoding and decoding, the group commit, and the driver's own loop, the same in
both), index scans and rows returned (``pg_stat_*`` of the database), WAL bytes, commits, and
index scans per index. A window's journal is opened in it and closed at its end (so that its
backends report their statistics); what opening and closing alone cost is measured the same way
and taken off.

    flock /tmp/paysw-bench.lock python -m bench.journal_speed --out bench/results/journal.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import io
import itertools
import json
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import psutil

ROOT = Path(__file__).resolve().parent.parent
POOL_SIZE, MAX_BATCH = 6, 512  # the demo configuration's [database]
_COUNTERS = """
SELECT (SELECT coalesce(sum(idx_scan), 0) FROM pg_stat_user_tables) AS index_scans,
       (SELECT coalesce(sum(seq_scan), 0) FROM pg_stat_user_tables) AS seq_scans,
       tup_returned AS rows_returned, tup_fetched AS rows_fetched, xact_commit AS commits,
       (SELECT wal_bytes FROM pg_stat_wal) AS wal_bytes
FROM pg_stat_database WHERE datname = current_database()
"""
_BY_INDEX = "SELECT indexrelname, idx_scan FROM pg_stat_user_indexes WHERE idx_scan > 0"
_BY_FUNCTION = "SELECT funcname, self_time FROM pg_stat_user_functions"


# -- the driver: one variant, in a process of its own -------------------------------------------


class Driver:
    def __init__(self, url: str, postmaster: int, concurrency: int) -> None:
        self.url = url
        self.server = psutil.Process(postmaster)
        self.concurrency = concurrency
        self.keys = itertools.count(1)

    def purchase(self, rrn: str):
        from switch.journal import NewTxn

        n = next(self.keys)
        now = dt.datetime.now(dt.UTC)
        today = now.date()
        return NewTxn(
            today, f"T{n // 100_000:07d}", f"{n % 100_000:06d}", f"{today:%m%d}120000", rrn, "purchase", "0200",
            "000000", "898310048990001", 100 + n % 900, "156", "120000", f"{today:%m%d}", "031",
            "622202******1234", b"p" * 32, "wechat", f"{today:%Y%m%d}{rrn}", b"r" * 32, now,
            now + dt.timedelta(seconds=60),
        )  # fmt: skip

    @staticmethod
    def accepted(txn):
        from switch.journal import Event, Report

        later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)
        return Report(*txn.key, Event.ACCEPTED, "00", "123456", "SUCCESS", "OK", f"C{txn.rrn}", later)

    def _pg_cpu(self) -> dict[int, float]:
        used = {}
        for process in [self.server, *self.server.children()]:
            with contextlib.suppress(psutil.Error):  # a process that has just gone
                used[process.pid] = sum(process.cpu_times()[:2])
        return used

    async def _counters(self) -> tuple[dict, dict, dict]:
        conn = await asyncpg.connect(self.url)
        try:
            while await conn.fetchval(  # the window's backends gone, so their statistics are in
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ):
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
            await conn.execute("SELECT pg_stat_clear_snapshot()")
            totals = dict(await conn.fetchrow(_COUNTERS))
            by_index = {r["indexrelname"]: r["idx_scan"] for r in await conn.fetch(_BY_INDEX)}
            by_function = {r["funcname"]: r["self_time"] for r in await conn.fetch(_BY_FUNCTION)}
            return totals, by_index, by_function
        finally:
            await conn.close()

    async def window(self, work) -> dict:
        """Run ``work(journal)`` (which returns the purchases it made) on a journal of its own; what
        the window cost: PostgreSQL's and this process's CPU, and the database's counters."""
        from switch.journal import Journal

        before = await self._counters()
        pg_before, client_before, started = self._pg_cpu(), time.process_time(), time.perf_counter()
        journal = await Journal.open(self.url, POOL_SIZE, MAX_BATCH)
        try:
            purchases = await work(journal)
            pg_after = self._pg_cpu()  # before the journal's backends go, with their CPU
            client = time.process_time() - client_before
            elapsed = time.perf_counter() - started
        finally:
            await journal.close()
        after = await self._counters()
        return {
            "purchases": purchases,
            "seconds": elapsed,
            "pg_cpu_s": sum(cpu - pg_before.get(pid, 0.0) for pid, cpu in pg_after.items()),
            "client_cpu_s": client,
            **{name: float(after[0][name] - before[0][name]) for name in after[0]},
            "by_index": _delta(after[1], before[1]),
            "trigger_ms": _delta(after[2], before[2]),
        }

    async def mixed(self, journal, seconds: float) -> int:
        done = 0
        stop_at = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal done
            while time.monotonic() < stop_at:
                txn = self.purchase(await journal.next_rrn())
                assert await journal.write_ahead(txn)
                await asyncio.sleep(random.uniform(0.001, 0.004))  # the channel's answer
                assert await journal.record(self.accepted(txn)) is not None
                done += 1

        await asyncio.gather(*(worker() for _ in range(self.concurrency)))
        return done

    async def run(self, seconds: float) -> dict:
        await self.window(lambda journal: self.mixed(journal, 2.0))  # warm-up: the schema, a partition, caches
        idle = await self.window(_nothing)
        windows = {"mixed": await self.window(lambda journal: self.mixed(journal, seconds))}
        written: list = []

        async def write_ahead(journal) -> int:
            rounds = max(1, int(windows["mixed"]["purchases"] / self.concurrency / 2))
            for _ in range(rounds):
                txns = [self.purchase(await journal.next_rrn()) for _ in range(self.concurrency)]
                assert all(await asyncio.gather(*(journal.write_ahead(t) for t in txns)))
                written.extend(txns)
            return len(written)

        async def outcome(journal) -> int:
            for first in range(0, len(written), self.concurrency):
                reports = [self.accepted(t) for t in written[first : first + self.concurrency]]
                assert all(await asyncio.gather(*(journal.record(r) for r in reports)))
            return len(written)

        windows["write_ahead"] = await self.window(write_ahead)
        windows["outcome"] = await self.window(outcome)
        return {name: _less(w, idle) for name, w in windows.items()}


async def _nothing(_journal) -> int:
    return 0


def _delta(after: dict, before: dict) -> dict:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def _less(window: dict, idle: dict) -> dict:
    """A window's figures with what opening and closing a journal costs taken off."""
    out = {}
    for name, value in window.items():
        if isinstance(value, dict):
            out[name] = {k: v - idle[name].get(k, 0) for k, v in value.items()}
        elif name in ("purchases", "seconds"):
            out[name] = value
        else:
            out[name] = value - idle[name]
    return out


# -- the orchestrator ---------------------------------------------------------------------------


def _baseline_tree(commit: str, folder: Path) -> Path:
    """The baseline's ``switch`` and ``protocols`` packages, as they were at ``commit``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit, "switch", "protocols"], check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def _per_purchase(window: dict) -> dict:
    n = window["purchases"]
    return {
        "purchases": n,
        "purchases_per_s": round(n / window["seconds"], 1),
        "pg_cpu_ms": round(window["pg_cpu_s"] * 1000 / n, 4),
        "client_cpu_ms": round(window["client_cpu_s"] * 1000 / n, 4),
        "index_scans": round(window["index_scans"] / n, 3),
        "seq_scans": round(window["seq_scans"] / n, 4),
        "rows_returned": round(window["rows_returned"] / n, 3),
        "rows_fetched": round(window["rows_fetched"] / n, 3),
        "commits": round(window["commits"] / n, 3),
        "wal_bytes": round(window["wal_bytes"] / n, 1),
        "index_scans_by_index": {k: round(v / n, 3) for k, v in sorted(window["by_index"].items()) if v},
        "trigger_ms_by_function": {k: round(v / n, 4) for k, v in sorted(window["trigger_ms"].items()) if v},
    }


def _mean(runs: list[dict]) -> dict:
    """Figures per purchase summed over the runs of a variant (so weighted by purchases)."""
    total: dict = {}
    for run in runs:
        for name, value in run.items():
            if isinstance(value, dict):
                inner = total.setdefault(name, {})
                for k, v in value.items():
                    inner[k] = inner.get(k, 0) + v
            else:
                total[name] = total.get(name, 0) + value
    return _per_purchase(total)


def main(concurrency: int, seconds: float, rounds: int, baseline: str | None, out: Path | None) -> int:
    from bench.provenance import git, provenance, resolve  # (here: a driver runs with another tree on its path)
    from switch.journal.embedded import EmbeddedPostgres

    base = resolve(baseline) if baseline else git("merge-base", "HEAD", "main")
    with tempfile.TemporaryDirectory(prefix="paysw-journal-speed-") as folder:
        trees = {"old": _baseline_tree(base, Path(folder) / "old"), "new": ROOT}
        server = EmbeddedPostgres(Path(folder) / "pg")
        url = server.start()
        try:
            postmaster = int((Path(folder) / "pg" / "postmaster.pid").read_text().split()[0])
            runs: dict[str, list[dict]] = {"old": [], "new": []}
            for n, variant in enumerate(["old", "new"] * rounds):
                database = asyncio.run(_fresh_database(url, f"journal_speed_{n}"))
                print(f"{variant}: {concurrency} purchases under way, {seconds:g} s", flush=True)
                drive = [sys.executable, __file__, "--drive", database, "--postmaster", str(postmaster)]
                drive += ["--concurrency", str(concurrency), "--seconds", str(seconds)]
                env = {**os.environ, "PYTHONPATH": str(trees[variant])}
                done = subprocess.run(drive, env=env, check=True, capture_output=True, text=True, cwd=folder)
                runs[variant].append(json.loads(done.stdout))
        finally:
            server.stop()
    windows = ("mixed", "write_ahead", "outcome")
    figures = {v: {w: _mean([r[w] for r in runs[v]]) for w in windows} for v in runs}
    ratios = {
        w: {
            k: round(figures["new"][w][k] / figures["old"][w][k], 3)
            for k in ("pg_cpu_ms", "client_cpu_ms", "index_scans", "rows_returned", "wal_bytes", "purchases_per_s")
            if figures["old"][w][k]
        }
        for w in windows
    }
    result = {
        "setup": {
            **provenance(" ".join(["python -m bench.journal_speed", *sys.argv[1:]])),
            "baseline_commit": base,
            "concurrency": concurrency,
            "seconds": seconds,
            "rounds": rounds,
            "journal": {"pool_size": POOL_SIZE, "group_commit_max": MAX_BATCH},
        },
        "per_purchase": figures,
        "ratio_new_to_old": ratios,
    }
    _print(figures, ratios)
    if out is not None:
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"written to {out}")
    return 0


async def _fresh_database(url: str, name: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
        await conn.execute(f"ALTER DATABASE {name} SET track_functions = 'pl'")  # the triggers' time
    finally:
        await conn.close()
    return urlsplit(url)._replace(path=f"/{name}").geturl()


def _print(figures: dict, ratios: dict) -> None:
    shown = ("pg_cpu_ms", "client_cpu_ms", "index_scans", "rows_returned", "commits", "wal_bytes", "purchases_per_s")
    for window in figures["old"]:
        print(f"\n{window}, per purchase:  {'old':>10} {'new':>10} {'new/old':>8}")
        for k in shown:
            old, new = figures["old"][window][k], figures["new"][window][k]
            print(f"  {k:18s} {old:10.3f} {new:10.3f} {ratios[window].get(k, float('nan')):8.3f}")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=128, help="purchases under way (default 128)")
    parser.add_argument("--seconds", type=float, default=10.0, help="the mixed window of each run (default 10)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each variant, taking turns (default 2)")
    parser.add_argument("--baseline", help="the commit of the old statements (default: where main and HEAD meet)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--drive", metavar="URL", help=argparse.SUPPRESS)  # a driver, on this database
    parser.add_argument("--postmaster", type=int, help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    args = _arguments()
    if args.drive:
        import uvloop

        result = uvloop.run(Driver(args.drive, args.postmaster, args.concurrency).run(args.seconds))
        print(json.dumps(result))
    else:
        sys.exit(main(args.concurrency, args.seconds, args.rounds, args.baseline, args.out))
