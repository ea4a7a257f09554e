"""``paysw bench risk``: what risk control costs, with 20 rules (8 that read the payment alone, 12
counted), in one run:

- **decisions**: one process deciding payments against counters already holding a busy day (the
  work of a front end and of one risk actor shard, each ask encoded and decoded as on the link,
  without the link itself): decisions a second;
- **actor**: the same through a real risk actor on a local Ray, over its link, many asks under
  way: decisions a second, and the actor's CPU per decision;
- **expiry**: a shard's minutely pass forgetting what left the day, with a day of one-time payment
  codes held (a subject each, as dynamic codes are): its time, which the shard's asks wait behind;
- **rebuild**: a shard's start, reading a day's approved purchases back from the journal
  (``--rows`` of them; 10 million scale linearly from it), and the collector's full pass over
  them, as collected and frozen (``risk.actor``);
- **stack**: the demo stack under closed-loop load, its front end timing each step: the risk
  step's own time (the latency it adds), and approved/s against the same stack without rules.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import json
import os
import random
import re
import tempfile
import time
import tracemalloc
from pathlib import Path

import asyncpg
import msgspec
import psutil
import uvloop
from prometheus_client.parser import text_string_to_metric_families

from bench.provenance import provenance
from bench.stack import Stack, demo_config_in, with_step_timing
from bench.throughput import closed_loop
from bench.traffic import Stans
from risk.actor import rebuild, subjects_of
from risk.counters import Book, Counters, Entry
from risk.engine import Engine, Facts
from risk.lists import Lists
from risk.messages import ADD, ASKS, CHECK, Ask
from risk.rules import MAX_WINDOW_S, RuleSet

STEPS_TIMED = ("risk_ask", "write_ahead", "risk")  # the risk steps, and the write-ahead the ask overlaps
MERCHANT, TERMINALS = "898310048990001", ("T0000001", "T0000002", "T0000003", "T0000004")
# Twenty rules, none of which the bench's traffic breaks (their limits are far off): every one is
# evaluated on every payment, which is what costs.
RULES = """
[[rule]]
id = "cap"
kind = "amount"
max_fen = 100_000_000
[[rule]]
id = "cap-coffee"
kind = "amount"
max_fen = 90_000_000
scope = { mcc = "5814" }
[[rule]]
id = "cap-alipay"
kind = "amount"
max_fen = 80_000_000
scope = { channel = "alipay" }
[[rule]]
id = "black-code"
kind = "list"
of = "code"
[[rule]]
id = "black-terminal"
kind = "list"
of = "terminal"
[[rule]]
id = "black-merchant"
kind = "list"
of = "merchant"
[[rule]]
id = "grey-code"
kind = "list"
of = "code"
colour = "grey"
action = "review"
[[rule]]
id = "hours"
kind = "hours"
opens = "00:00"
closes = "23:59"
mode = "shadow"
""" + "".join(
    f'[[rule]]\nid = "{rule_id}"\nkind = "cumulative"\nper = "{per}"\nwindow = "{window}"\n{limit}\n'
    for rule_id, per, window, limit in (
        ("code-10m", "code", "10m", "max_count = 1_000_000"),
        ("code-1h", "code", "1h", "max_fen = 1_000_000_000"),
        ("code-1d", "code", "1d", "max_fen = 1_000_000_000\nmax_count = 1_000_000"),
        ("terminal-10m", "terminal", "10m", "max_count = 100_000_000"),
        ("terminal-1h", "terminal", "1h", "max_fen = 100_000_000_000"),
        ("terminal-1d", "terminal", "1d", "max_fen = 100_000_000_000"),
        ("merchant-1h", "merchant", "1h", "max_count = 100_000_000"),
        ("merchant-1d", "merchant", "1d", "max_fen = 1_000_000_000_000"),
        ("merchant-10m", "merchant", "10m", "max_count = 100_000_000"),
        ("code-1d-count", "code", "1d", "max_count = 1_000_000"),
    )
) + "".join(
    f'[[rule]]\nid = "velocity-{across}"\nkind = "velocity"\nacross = "{across}"\nwindow = "10m"\n'
    f"max_distinct = 1000\n"
    for across in ("merchant", "terminal")
)


def engine() -> Engine:
    rules = msgspec.toml.decode(RULES.encode(), type=RuleSet)
    assert len(rules.rules) == 20, len(rules.rules)
    return Engine(rules)


def busy_day(counters: Counters, payments: int, rng: random.Random) -> list[str]:
    """``payments`` approvals over the last day on 10,000 codes; the codes."""
    codes = [f"{rng.getrandbits(256):064x}" for _ in range(10_000)]
    now = time.time()
    for n in range(payments):
        code, terminal = rng.choice(codes), rng.choice(TERMINALS)
        at = now - 86_000 * (payments - n) / payments
        counters.add(subjects_of(code, terminal, MERCHANT), Entry(f"r{n}", at, rng.randrange(100, 10_000), MERCHANT,
                                                                   terminal))  # fmt: skip
    return codes


def facts(code: str, terminal: str, amount: int) -> Facts:
    return Facts("alipay", MERCHANT, "5814", terminal, amount, code, dt.time(12, 0), None, dt.date.today())


def decisions(seconds: float, payments: int) -> dict:
    """One shard's work in this process: the rules that read the payment alone, then every counted
    rule judged against the counters (all subjects on the one shard)."""
    rng = random.Random(1)
    rules, lists, counters = engine(), Lists([("black", "code", "0" * 64)]), Counters()
    codes = busy_day(counters, payments, rng)
    book = Book(counters)
    for _warm_up_then_measure in range(2):  # the first questions build the windows from the day
        done, started, cpu = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - started < seconds:
            for _ in range(1000):
                f = facts(rng.choice(codes), rng.choice(TERMINALS), rng.randrange(100, 10_000))
                scope = rules.scope(f)
                decision = rules.decide(f, lists, scope)
                subjects = list(subjects_of(f.code_fingerprint, f.terminal, f.merchant))
                ask = Ask(done, CHECK, subjects, "", f.amount_fen, f.merchant, f.terminal, scope.checks)
                answer = book.answer(ASKS.decode(msgspec.msgpack.encode([ask]))[0])  # as it comes off the link
                assert decision.decline is None and not answer.fired
                done += 1
        elapsed, used = time.perf_counter() - started, time.process_time() - cpu
    return {"decisions_per_s": round(done / elapsed), "cpu_us_per_decision": round(used / done * 1e6, 1),
            "rules": len(rules), "counted_payments": len(counters)}  # fmt: skip


def expiry(payments: int) -> dict:
    """One ``Counters.expire`` pass over a day of ``payments`` approvals, each on a code of its own
    (payment codes are one-time) whose 10-minute window a rule read (the demo's code-burst), the
    oldest minute's due: the pause it puts in a shard's answers. With it, the memory a payment
    held takes (Python's allocations, traced while adding, before the allocator's own overhead),
    its code's 10-minute window included: a running shard drops such a window within minutes,
    so what it holds for the rest of the day is less."""
    rng, now = random.Random(2), time.time()
    counters = Counters(clock=lambda: now)
    gc.collect()
    tracemalloc.start()
    for n in range(payments):
        code = f"{rng.getrandbits(256):064x}"
        at = now - MAX_WINDOW_S - 60 + (MAX_WINDOW_S * n / payments)
        subjects = subjects_of(code, rng.choice(TERMINALS), MERCHANT)
        counters.add(subjects, Entry(f"r{n}", at, 100, MERCHANT, "T"))
        counters.totals(subjects[0], 600)
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    held = counters.held()
    started = time.perf_counter()
    forgotten = counters.expire()
    return {"held": held, "bytes_per_payment": round(traced / max(1, payments)), "forgotten": forgotten,
            "pass_ms": round((time.perf_counter() - started) * 1000, 2)}  # fmt: skip


async def _through_actor(url: str, seconds: float, outstanding: int, payments: int) -> dict:
    import ray

    from risk.actor import RiskActor
    from risk.client import CounterShards

    actor = RiskActor.options(name=f"bench-risk-{os.getpid()}").remote(0, 1, url, None)
    shards = CounterShards([actor], timeout_s=5.0)
    shards.start()
    await asyncio.wait_for(shards.linked[0].wait(), 120)
    pid = (await actor.stats.remote())["pid"]
    rng = random.Random(2)
    codes = [f"{rng.getrandbits(256):064x}" for _ in range(10_000)]
    for start in range(0, payments, 500):  # a busy day's approvals, told as the journal's commits are
        told = []
        for n in range(start, min(start + 500, payments)):
            code, terminal = rng.choice(codes), rng.choice(TERMINALS)
            told.append((0, Ask(0, ADD, list(subjects_of(code, terminal, MERCHANT)), f"r{n}", 500, MERCHANT, terminal)))
        shards.tell(told)
        await asyncio.sleep(0)
    while (await actor.stats.remote())["payments"] < payments:  # told, and counted, before measuring
        await asyncio.sleep(0.2)
    rules = engine()
    checks = rules.scope(facts(codes[0], TERMINALS[0], 1)).checks
    done = 0
    stop_at = time.monotonic() + seconds

    async def asker() -> None:
        nonlocal done
        while time.monotonic() < stop_at:
            code, terminal = rng.choice(codes), rng.choice(TERMINALS)
            subjects = list(subjects_of(code, terminal, MERCHANT))
            await shards.ask({0: Ask(0, CHECK, subjects, "", 500, MERCHANT, terminal, checks)})
            done += 1

    actor_process = psutil.Process(pid)
    for _warm_up_then_measure in range(2):  # the first questions build the windows from the day
        done, stop_at = 0, time.monotonic() + seconds
        cpu_before, started = sum(actor_process.cpu_times()[:2]), time.perf_counter()
        await asyncio.gather(*(asker() for _ in range(outstanding)))
        elapsed, cpu = time.perf_counter() - started, sum(actor_process.cpu_times()[:2]) - cpu_before
    counted = (await actor.stats.remote())["payments"]
    await shards.close()
    ray.kill(actor)
    return {"decisions_per_s": round(done / elapsed), "actor_cpu_us_per_decision": round(cpu / done * 1e6, 1),
            "outstanding": outstanding, "counted_payments": counted}  # fmt: skip


async def _write_day(url: str, rows: int) -> None:
    """``rows`` approved purchases of the last day, straight into the journal."""
    from switch.journal.schema import ensure_partitions, migrate

    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
        day = dt.datetime.now(dt.UTC).date()
        await ensure_partitions(conn, day - dt.timedelta(days=2), day + dt.timedelta(days=1))
        await conn.execute("ALTER TABLE txn DISABLE TRIGGER USER")  # a bench day, not a day of moves
        await conn.execute("ALTER TABLE txn_move DISABLE TRIGGER USER")  # (its moves are made up below)
        await conn.execute(
            """
            INSERT INTO txn (tx_date, terminal_id, stan, transmitted, rrn, txn_type, mti, processing_code, merchant_id,
                amount_fen, currency, local_time, local_date, entry_mode, pan_masked, pan_hash, channel, out_trade_no,
                request_hash, state, received_at, updated_at)
            SELECT (now() - (n * interval '1 second' * 80000 / $1))::date, 'T' || lpad((n % 400)::text, 7, '0'),
                lpad((n % 1000000)::text, 6, '0'), lpad((n / 1000000)::text, 10, '0'), lpad(n::text, 12, '0'),
                'purchase', '0200', '000000', '8983100489' || lpad((n % 2000)::text, 5, '0'), 100 + n % 9000, '156',
                '120000', '0101', '031', '622202******1234', sha256(int8send(n % 1000000)), 'wechat',
                'b' || n, '\\x00', 'APPROVED', now() - (n * interval '1 second' * 80000 / $1),
                now() - (n * interval '1 second' * 80000 / $1)
            FROM generate_series(1, $1) AS n
            """,
            rows,
        )
        # Its log of moves, as the day made it: each purchase written RECEIVED, then APPROVED.
        await conn.execute(
            """
            INSERT INTO txn_move (tx_date, rrn, from_state, to_state, moved_at)
            SELECT tx_date, rrn, step.from_state, step.to_state, received_at + step.after
            FROM txn, (VALUES (NULL, 'RECEIVED', interval '0'), ('RECEIVED', 'APPROVED', interval '10 ms'))
                AS step (from_state, to_state, after)
            WHERE txn.out_trade_no LIKE 'b%'  -- the bench's day: every row approved
            """
        )
        await conn.execute("ALTER TABLE txn ENABLE TRIGGER USER")
        await conn.execute("ALTER TABLE txn_move ENABLE TRIGGER USER")
        await conn.execute("ANALYZE txn")
        await conn.execute("ANALYZE txn_move")
    finally:
        await conn.close()


async def _rebuild(url: str, rows: int) -> dict:
    await _write_day(url, rows)
    started, cpu = time.perf_counter(), time.process_time()
    counters, _ = await rebuild(url, 0, 1)
    elapsed, used = time.perf_counter() - started, time.process_time() - cpu
    # Why a shard freezes what it holds out of the collector (risk.actor): a full pass over a day.
    pauses = []
    for _ in ("as collected", "frozen"):
        started = time.perf_counter()
        gc.collect()
        pauses.append(round((time.perf_counter() - started) * 1000, 1))
        gc.freeze()
    gc.unfreeze()
    return {"rows": rows, "counted": len(counters), "seconds": round(elapsed, 2), "cpu_s": round(used, 2),
            "seconds_for_10_million_estimated": round(elapsed * 10_000_000 / rows),
            "full_collection_ms": pauses[0], "full_collection_frozen_ms": pauses[1]}  # fmt: skip


def _step_buckets(metrics: str, step: str) -> list[tuple[float, float]]:
    buckets = []
    for family in text_string_to_metric_families(metrics):
        for s in family.samples:
            labels = s.labels
            if s.name == "paysw_step_seconds_bucket" and labels["step"] == step and labels["txn_type"] == "purchase":
                buckets.append((float(labels["le"]), s.value))
    return sorted(buckets)


def _step_quantiles(metrics: str, step: str, since: str = "") -> dict[str, float]:
    """p50 and p99 of a step's time from the histogram (the bucket's upper edge, linear within);
    with ``since``, of the steps timed after that scrape only."""
    before = dict(_step_buckets(since, step)) if since else {}
    buckets = [(edge, count - before.get(edge, 0.0)) for edge, count in _step_buckets(metrics, step)]
    total = buckets[-1][1]
    out = {}
    for q in (50, 99):
        want, lower, below = total * q / 100, 0.0, 0.0
        for edge, count in buckets:
            if count >= want:
                share = (want - below) / (count - below) if count > below else 1.0
                out[f"p{q}_ms"] = round((lower + (edge - lower) * share) * 1000, 4)
                break
            lower, below = edge, count
    out["count"] = total
    return out


def _unreachable(metrics: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(metrics) for s in f.samples
               if s.name == "paysw_risk_unreachable_total")  # fmt: skip


def _stack_run(folder: Path, with_rules: bool, rate: float, concurrency: int, seconds: float) -> dict:
    """The stack paced at ``rate`` purchases a second, then as fast as ``concurrency`` under way
    are answered: each load's figures and the risk steps' times under it."""
    rules = folder / "rules.toml"
    rules.write_text(RULES)

    def edit(text: str) -> str:
        text = with_step_timing(text)
        text, n = re.subn(r'(?m)^rules = ".*"$', f'rules = "{rules if with_rules else ""}"', text)
        assert n == 1, "no [risk] rules in the demo configuration"
        return text

    data = folder / ("with" if with_rules else "without")
    data.mkdir()
    stack = Stack(data, demo_config_in(data, edit))
    result = {}
    try:
        stack.start()
        stans = Stans(start=random.randrange(1, 500_000))
        uvloop.run(closed_loop("127.0.0.1", stack.port, concurrency, 5, stans))
        before = stack.metrics()
        for name, paced in (("paced", rate), ("saturated", None)):
            load = uvloop.run(closed_loop("127.0.0.1", stack.port, concurrency, seconds, stans, paced))
            after = stack.metrics()
            result[name] = {"load": load, "rate": paced,
                            **{f"{step}_step": _step_quantiles(after, step, before) for step in STEPS_TIMED},
                            "counters_unreachable": _unreachable(after) - _unreachable(before)}  # fmt: skip
            before = after
    finally:
        stack.stop()
    return result


def main(seconds: float = 5.0, rows: int = 1_000_000, payments: int = 200_000, stack_seconds: float = 20.0,
         rate: float = 500.0, concurrency: int = 128, out: Path | None = None) -> int:  # fmt: skip
    import pgserver
    import ray

    result: dict = {**provenance(), "rules": 20}
    print("decisions in one process (a front end's and a shard's work, without the link) ...", flush=True)
    result["decisions"] = decisions(seconds, payments)
    print(f"  {result['decisions']}", flush=True)
    print(f"a shard's expiry pass, {payments:,} payments held on one-time codes ...", flush=True)
    result["expiry"] = expiry(payments)
    print(f"  {result['expiry']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="paysw-risk-bench-") as folder:
        server = pgserver.get_server(Path(folder) / "pg", cleanup_mode="stop")
        url = server.get_uri()
        asyncio.run(_migrate(url))
        print("through a risk actor on a local Ray, over its link ...", flush=True)
        ray.init(include_dashboard=False, logging_level="WARNING", num_cpus=2, namespace=f"bench-{os.getpid()}")
        try:
            result["actor"] = uvloop.run(_through_actor(url, seconds, 256, payments))
        finally:
            ray.shutdown()
        print(f"  {result['actor']}", flush=True)
        print(f"a shard's rebuild from the journal, {rows:,} approved purchases of the day ...", flush=True)
        result["rebuild"] = asyncio.run(_rebuild(url, rows))
        print(f"  {result['rebuild']}", flush=True)
        server.cleanup()
        if stack_seconds > 0:
            for with_rules in (False, True):
                name = "stack_with_rules" if with_rules else "stack_without_rules"
                print(f"the demo stack {'with' if with_rules else 'without'} the 20 rules: {rate:g}/s, then "
                      f"{concurrency} under way ...", flush=True)  # fmt: skip
                result[name] = _stack_run(Path(folder), with_rules, rate, concurrency, stack_seconds)
                for load, run in result[name].items():
                    steps = {step: run[f"{step}_step"] for step in STEPS_TIMED}
                    print(f"  {load}: {run['load']}\n    steps: {steps}", flush=True)
            with_rules, without = result["stack_with_rules"], result["stack_without_rules"]
            result["approved_ratio"] = {
                load: round(with_rules[load]["load"]["approved_tps"] / without[load]["load"]["approved_tps"], 3)
                for load in ("paced", "saturated")
            }
    print(json.dumps({k: v for k, v in result.items() if k not in ("stack_with_rules", "stack_without_rules")},
                     indent=1))  # fmt: skip
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {out}")
    return 0


async def _migrate(url: str) -> None:
    from switch.journal.schema import migrate

    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()

