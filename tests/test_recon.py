"""Reconciliation batches against the real simulators' statements and the real journal: every
class of difference is found for the transactions a test makes, a batch stopped between steps
resumes where it stopped without fetching or matching twice, and a failed step is retried."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import random
import re
import time
import urllib.request

import asyncpg
import pytest

from actors.channel_actor import ChannelWorker
from bench.traffic import payment_code, refund, reversal
from protocols.messages import CANCEL, PAY, ChannelRequest, Outcome
from protocols.statements import CST, PAID
from switch.config import load_config
from switch.journal.roles import runtime_url
from switch.recon.batch import WHOLE_DAY, ReconBatch, StepFailed, window
from switch.recon.cli import inert
from switch.recon.handling import Handler, Threshold
from switch.recon.scheduler import HourlyReconciler, due_batches
from tests.conftest import demo_actor_setup, run
from tests.support import CHANNEL_ONLY_PREFIX, STANS, connected, new_purchase, out_trade_no, sim_ledger, wait_for_state

# Each pays, then reconciles or settles the hour (or day) it read off the clock.
pytestmark = pytest.mark.usefixtures("one_hour")


def order_statement_faults(ports, channel: str, faults: dict) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{ports.controls[channel]}/_sim/statement-faults", json.dumps(faults).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=5):
        pass


async def item_of(pool: asyncpg.Pool, batch_id: int, order: str) -> tuple:
    """The class, status and rule (if fixed by one) of ``order``'s item in a batch."""
    item = await pool.fetchrow(
        "SELECT i.class, i.status, a.rule FROM recon_item i LEFT JOIN recon_action a ON a.item_id = i.id "
        "WHERE i.batch_id = $1 AND i.out_trade_no = $2",
        batch_id,
        order,
    )
    return tuple(item)


class CountingFetch:
    """The switch's download call, through the channel worker, counting the fetches."""

    def __init__(self, config_dir) -> None:
        self._config = load_config(config_dir / "switch.toml")
        self.calls = 0

    async def __call__(self, channel: str, day: dt.date) -> bytes:
        self.calls += 1
        worker = ChannelWorker(channel, demo_actor_setup(channel, self._config), 0)
        try:
            return await worker.statement(day)
        finally:
            await worker.close()


async def items(database_url: str, batch_id: int) -> dict[str, tuple[str, str]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT out_trade_no, class, status FROM recon_item WHERE batch_id = $1", batch_id)
    finally:
        await conn.close()
    return {r["out_trade_no"]: (r["class"], r["status"]) for r in rows}


def test_every_class_is_found_and_a_stopped_batch_resumes(switch, database_url, ports, config_dir):
    channel = "alipay"

    async def traffic() -> dict[str, str]:
        async with connected(switch) as terminal:
            made = {}
            for name in ("matched", "short", "amount", "status", "refunded"):
                purchase = new_purchase(channel, amount=5000)
                answer = await terminal.request(purchase)
                assert answer["39"] == "00"
                made[name] = out_trade_no(answer["37"])
                if name == "refunded":
                    back = await terminal.request(refund(purchase, answer["37"], 1200, STANS.next(purchase["41"])))
                    assert back["39"] == "00"
                    made["refund"] = out_trade_no(back["37"])
                    made["refund_missing"] = made["refund"]
            return made

    made = run(traffic())
    order_statement_faults(
        ports,
        channel,
        {
            "drop": [made["short"], made["refund_missing"]],
            "extra": {"LONG-" + made["matched"]: 777},
            "amounts": {made["amount"]: 4999},
            "statuses": {made["status"]: "REVOKED"},
        },
    )
    fetch = CountingFetch(config_dir)
    day, hour = dt.datetime.now(CST).date(), WHOLE_DAY

    async def reconcile():
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
        try:
            first = ReconBatch(pool, channel, channel, day, hour, fetch)
            assert await first.run(stop_after="load") == "extract"  # as if killed after loading
            order_statement_faults(ports, channel, {})  # the statement is already in: later changes do not count
            again = ReconBatch(pool, channel, channel, day, hour, fetch)
            assert await again.run() == "done"
            assert fetch.calls == 1 and again.id == first.id
            found = await items(database_url, again.id)
            summary = await again.summary()
            # Once more: nothing is done twice.
            assert await ReconBatch(pool, channel, channel, day, hour, fetch).run() == "done"
            assert fetch.calls == 1 and len(await items(database_url, again.id)) == len(found)
            return found, summary
        finally:
            await pool.close()

    found, summary = run(reconcile())
    assert found[made["matched"]] == ("MATCHED", "MATCHED")
    assert found[made["short"]] == ("SHORT", "OPEN")
    assert found[made["amount"]] == ("AMOUNT", "OPEN")
    assert found[made["status"]] == ("STATUS", "OPEN")
    assert found["LONG-" + made["matched"]] == ("LONG", "OPEN")
    assert found[made["refund"]] == ("REFUND", "OPEN")
    assert found[made["refunded"]] == ("MATCHED", "MATCHED")
    assert summary["SHORT"]["count"] >= 1 and summary["LONG"]["channel_fen"] >= 777
    # Operators see them: the switch exports the open differences by channel and class.
    for _ in range(30):
        _, text = switch.get("/metrics")
        if re.search(r'paysw_recon_open_differences\{channel="alipay",class="AMOUNT"\} [1-9]', text):
            break
        time.sleep(0.5)
    assert re.search(r'paysw_recon_open_differences\{channel="alipay",class="AMOUNT"\} [1-9]', text)


def test_a_failed_step_is_recorded_and_retried_from_that_step(database_url, switch, config_dir):
    channel = "inbank"
    fetch = CountingFetch(config_dir)

    async def broken(channel: str, day: dt.date) -> bytes:
        raise ConnectionError("channel unreachable")

    async def scenario():
        answer = await approved_purchase(switch, database_url, channel)
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
        try:
            day = dt.datetime.now(CST).date()
            with pytest.raises(StepFailed, match="fetch"):
                await ReconBatch(pool, channel, channel, day, WHOLE_DAY, broken).run()
            error = await pool.fetchval(
                "SELECT error FROM recon_batch WHERE channel = $1 AND day = $2 AND hour = -1", channel, day
            )
            assert "unreachable" in error
            batch = ReconBatch(pool, channel, channel, day, WHOLE_DAY, fetch)
            assert await batch.run() == "done" and fetch.calls == 1
            assert (await items(database_url, batch.id))[out_trade_no(answer["37"])][0] == "MATCHED"
        finally:
            await pool.close()

    run(scenario())


def test_batch_windows_are_beijing_days_and_hours():
    day = dt.date(2026, 11, 23)
    start, end = window(day, WHOLE_DAY)
    assert (start.astimezone(dt.UTC), end - start) == (
        dt.datetime(2026, 11, 22, 16, tzinfo=dt.UTC),
        dt.timedelta(days=1),
    )
    start, end = window(day, 9)
    assert (start.astimezone(dt.UTC), end - start) == (
        dt.datetime(2026, 11, 23, 1, tzinfo=dt.UTC),
        dt.timedelta(hours=1),
    )


def channel_worker(config_dir, channel: str) -> ChannelWorker:
    """The channel's actor logic, in the test's process, with the test switch's configuration."""
    config = load_config(config_dir / "switch.toml")
    return ChannelWorker(channel, demo_actor_setup(channel, config), 0)


# An hour's batch run afresh: another test (test_settlement, say) may have run the same one.
AFRESH = "DELETE FROM recon_batch WHERE channel = $1 AND day = $2 AND hour = $3"


async def approved_purchase(switch, database_url: str, channel: str) -> dict:
    """A purchase through the switch, once the journal has it approved."""
    async with connected(switch) as terminal:
        answer = await terminal.request(new_purchase(channel))
    await wait_for_state(database_url, answer["37"], {"APPROVED"})
    return answer


async def pay_at_the_channel_only(config_dir, channel: str, order: str, amount_fen: int, sent_at: float = 0) -> None:
    """A payment the channel takes that never went through this switch (sent with the order time
    ``sent_at``, as the switch sends its write-ahead's; else now)."""
    config = load_config(config_dir / "switch.toml")
    worker = ChannelWorker(channel, demo_actor_setup(channel, config), 0)
    try:
        request = ChannelRequest(
            1, PAY, order, amount_fen, payment_code(channel, "00"), "", "T0000001", time.time() + 10, sent_at
        )
        assert (await worker.call(request)).outcome is Outcome.APPROVED
    finally:
        await worker.close()


async def journal_told_in_progress(conn: asyncpg.Connection, rrn: str) -> tuple[str, str, int]:
    """``journal_unknown_copy``, its terminal told "in progress" (09): its money may be kept."""
    copy = await journal_unknown_copy(conn, rrn)
    await conn.execute("UPDATE txn SET response_code = '09' WHERE rrn = $1", copy[0])
    return copy


async def journal_unknown_copy(conn: asyncpg.Connection, rrn: str) -> tuple[str, str, int]:
    """A copy of a purchase, left UNKNOWN with no answer sent and not due for the resolver for
    an hour: (its RRN, its order number, its amount)."""
    new_rrn = f"9{random.randrange(10**10, 10**11)}"
    row = await conn.fetchrow(
        "INSERT INTO txn (tx_date, terminal_id, stan, transmitted, rrn, txn_type, mti, processing_code, merchant_id, "
        "amount_fen, currency, local_time, local_date, entry_mode, pan_masked, pan_hash, channel, out_trade_no, "
        "request_hash, state, next_check_at) "
        "SELECT tx_date, terminal_id, $2, transmitted, $3, txn_type, mti, processing_code, merchant_id, amount_fen, "
        "currency, local_time, local_date, entry_mode, pan_masked, pan_hash, channel, "
        "to_char(tx_date, 'YYYYMMDD') || $3, request_hash, 'RECEIVED', now() + interval '1 hour' "
        "FROM txn WHERE rrn = $1 RETURNING out_trade_no, amount_fen",
        rrn,
        f"U{random.randrange(10**5):05d}",
        new_rrn,
    )
    await conn.execute("UPDATE txn SET state = 'UNKNOWN' WHERE rrn = $1", new_rrn)  # written ahead, then moved
    return new_rrn, row["out_trade_no"], row["amount_fen"]


@contextlib.asynccontextmanager
async def paid_but_open(switch, database_url: str, config_dir, channel: str, told: str | None = None,
                        reversing: bool = False, written_ago_s: int = 0):  # fmt: skip
    """A pool, the channel's worker, and (RRN, order, amount) of a purchase the channel has paid
    while the journal has it UNKNOWN, answered ``told``, its reversal asked for if ``reversing``
    (a copy of an approved purchase, not due for the resolver for an hour), written ahead
    ``written_ago_s`` before it was sent (the channel is told the write-ahead's time)."""
    answer = await approved_purchase(switch, database_url, channel)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    worker = channel_worker(config_dir, channel)
    try:
        async with pool.acquire() as conn:
            rrn, order, amount = await journal_unknown_copy(conn, answer["37"])
            written = await conn.fetchval(
                "UPDATE txn SET response_code = $2, reversal_requested_at = CASE WHEN $3 THEN now() END, "
                "received_at = received_at - make_interval(secs => $4) WHERE rrn = $1 "
                "RETURNING extract(epoch FROM received_at)::float8",
                rrn,
                told,
                reversing,
                written_ago_s,
            )
        await pay_at_the_channel_only(config_dir, channel, order, amount, written)
        yield pool, worker, (rrn, order, amount)
    finally:
        await worker.close()
        await pool.close()


def test_automatic_handling_fixes_each_difference_once_within_its_threshold(
    switch, database_url, config_dir, simulators
):
    """Paid at the channel, open in the journal: approved where the terminal was told "in
    progress"; where it was told nothing (its front end crashed before answering), the money may
    not be kept, so it is handed to the resolver, which cancels it. Orders only the channel has
    are reversed."""
    channel = "wechat"
    fetch = CountingFetch(config_dir)
    caller_config = load_config(config_dir / "switch.toml")

    async def scenario():
        answer = await approved_purchase(switch, database_url, channel)
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
        worker = ChannelWorker(channel, demo_actor_setup(channel, caller_config), 0)
        try:
            async with pool.acquire() as conn:
                waiting_rrn, waiting_order, amount = await journal_told_in_progress(conn, answer["37"])
                untold_rrn, untold_order, _ = await journal_unknown_copy(conn, answer["37"])
            for order in (waiting_order, untold_order):
                await pay_at_the_channel_only(config_dir, channel, order, amount)  # paid, journal UNKNOWN
            long_orders = [f"{CHANNEL_ONLY_PREFIX}{random.randrange(10**12)}" for _ in range(2)]
            for order in long_orders:
                await pay_at_the_channel_only(config_dir, channel, order, 300)
            day = dt.datetime.now(CST).date()
            handler = Handler(pool, worker.call, Threshold(max_count=1000, max_fen=10**9))
            batch = ReconBatch(pool, channel, channel, day, WHOLE_DAY, fetch, handler)
            assert await batch.run() == "done"
            waiting = await pool.fetchval("SELECT state FROM txn WHERE rrn = $1", waiting_rrn)
            actions = await pool.fetch(
                "SELECT a.rule, i.out_trade_no FROM recon_action a JOIN recon_item i ON i.id = a.item_id "
                "WHERE i.batch_id = $1",
                batch.id,
            )
            again = await handler.handle(batch.id)  # a second run finds nothing left to do for these
            count_after = await pool.fetchval(
                "SELECT count(*) FROM recon_action a JOIN recon_item i ON i.id = a.item_id WHERE i.batch_id = $1",
                batch.id,
            )
            untold = await wait_for_state(database_url, untold_rrn, {"CANCELLED"}, timeout=30)  # by the resolver
            rules = {r["out_trade_no"]: r["rule"] for r in actions}
            return waiting, untold, rules, again, count_after, long_orders, (waiting_order, untold_order)
        finally:
            await worker.close()
            await pool.close()

    waiting, untold, actions, again, count_after, long_orders, paid_orders = run(scenario())
    assert waiting == "APPROVED"
    assert untold["state"] == "CANCELLED"
    assert all(actions[order] == "approve_paid" for order in paid_orders)
    assert all(actions[order] == "reverse_long" for order in long_orders)
    assert count_after == len(actions) and again.fixed == 0
    ledger = sim_ledger(simulators, channel)
    assert all(ledger[order]["status"] == "REVERSED" for order in long_orders)  # the money went back


def test_a_statement_alone_never_approves_an_open_purchase(switch, database_url, config_dir, ports):
    """A statement is a file, no signed answer of the channel's: one showing paid an order the
    journal has open, which the channel never charged (a file rewritten on its way), approves
    nothing. The rule asks the channel first, as the others do, and the item is left to a person
    (found in review: it approved on the file's word, and settlement would have paid for it)."""
    channel = "inbank"
    fetch = CountingFetch(config_dir)

    async def scenario():
        answer = await approved_purchase(switch, database_url, channel)
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
        worker = channel_worker(config_dir, channel)
        try:
            async with pool.acquire() as conn:
                rrn, order, amount = await journal_told_in_progress(conn, answer["37"])
            order_statement_faults(ports, channel, {"extra": {order: amount}})  # "paid", never charged
            day = dt.datetime.now(CST).date()
            await pool.execute(AFRESH, channel, day, WHOLE_DAY)
            batch = ReconBatch(pool, channel, channel, day, WHOLE_DAY, fetch,
                               Handler(pool, worker.call, Threshold(max_count=1000, max_fen=10**9)))  # fmt: skip
            assert await batch.run() == "done"
            item = await item_of(pool, batch.id, order)
            return item, await pool.fetchval("SELECT state FROM txn WHERE rrn = $1", rrn)
        finally:
            order_statement_faults(ports, channel, {})
            await worker.close()
            await pool.close()

    item, state = run(scenario())
    assert item == ("STATUS", "OPEN", None)
    assert state == "UNKNOWN"  # as it was: nothing approved


def test_an_order_the_channel_says_it_never_had_is_not_closed_as_nothing_to_do(switch, database_url, config_dir, ports):
    """A statement row of an order only the channel has, which the channel, asked, says it never
    had (no such order): not "closed, nothing to do" (that is for an order it reports closed), and
    not reversed: the file contradicts the channel, a person's."""
    channel = "inbank"
    order = f"{CHANNEL_ONLY_PREFIX}{random.randrange(10**12)}"

    async def scenario():
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
        worker = channel_worker(config_dir, channel)
        try:
            order_statement_faults(ports, channel, {"extra": {order: 777}})  # on the file, never at the channel
            day = dt.datetime.now(CST).date()
            await pool.execute(AFRESH, channel, day, WHOLE_DAY)
            batch = ReconBatch(pool, channel, channel, day, WHOLE_DAY, CountingFetch(config_dir),
                               Handler(pool, worker.call, Threshold(max_count=1000, max_fen=10**9)))  # fmt: skip
            assert await batch.run() == "done"
            return await item_of(pool, batch.id, order)
        finally:
            order_statement_faults(ports, channel, {})
            await worker.close()
            await pool.close()

    assert run(scenario()) == ("LONG", "OPEN", None)


def test_the_threshold_stops_the_automation_and_leaves_the_rest(switch, database_url, config_dir):
    channel = "ecny"
    fetch = CountingFetch(config_dir)

    async def scenario():
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
        worker = channel_worker(config_dir, channel)
        try:
            for _ in range(3):
                await pay_at_the_channel_only(
                    config_dir, channel, f"{CHANNEL_ONLY_PREFIX}{random.randrange(10**12)}", 300
                )
            batch = ReconBatch(
                pool,
                channel,
                channel,
                dt.datetime.now(CST).date(),
                WHOLE_DAY,
                fetch,
                Handler(pool, worker.call, Threshold(max_count=1, max_fen=10**9)),
            )
            assert await batch.run() == "done"
            handling = await batch.handling()
            fixed = await pool.fetchval(
                "SELECT count(*) FROM recon_item WHERE batch_id = $1 AND status = 'FIXED'", batch.id
            )
            still_open = await pool.fetchval(
                "SELECT count(*) FROM recon_item WHERE batch_id = $1 AND status = 'OPEN' AND class = 'LONG'", batch.id
            )
            all_open = await pool.fetchval(
                "SELECT count(*) FROM recon_item WHERE batch_id = $1 AND status = 'OPEN'", batch.id
            )
            # Run again, as after a failure: what the first run fixed still counts (it began afresh).
            again = await Handler(pool, worker.call, Threshold(max_count=1, max_fen=10**9)).handle(batch.id)
            return handling, fixed, still_open, all_open, again
        finally:
            await worker.close()
            await pool.close()

    handling, fixed, still_open, all_open, again = run(scenario())
    assert handling["stopped"] is True and handling["fixed"] == 1 and fixed == 1
    assert again.stopped and again.fixed == 0
    assert handling["left"] == all_open  # what "N left for a person" reports
    assert still_open >= 2  # left for a person


def test_the_recon_command_line_runs_exports_lists_and_resolves(switch, database_url, config_dir, ports, tmp_path):
    import os
    import subprocess
    import sys

    role_url = run(runtime_url(database_url))

    def paysw(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "switch.cli", "recon", *args, "--config", str(config_dir / "switch.toml")],
            capture_output=True,
            text=True,
            timeout=180,
            env={**os.environ, "SWITCH_DATABASE_URL": role_url},  # as the switch's role
        )

    async def approved_one() -> str:
        async with connected(switch) as terminal:
            answer = await terminal.request(new_purchase("unionpay"))
        return out_trade_no(answer["37"])

    # An hour batch of its own (the others in this module are whole days).
    order = run(approved_one())
    order_statement_faults(ports, "unionpay", {"amounts": {order: 1}})  # no rule fixes an amount difference
    try:
        hour = str(dt.datetime.now(CST).hour)
        ran = paysw(
            "--date",
            dt.datetime.now(CST).date().isoformat(),
            "--hour",
            hour,
            "--channel",
            "unionpay",
            "--export",
            str(tmp_path),
        )
    finally:
        order_statement_faults(ports, "unionpay", {})
    assert ran.returncode == 0, ran.stderr
    assert re.search(r"unionpay\s+AMOUNT\s+\d+", ran.stdout) and "unionpay: report" in ran.stdout
    exported = list(tmp_path.glob("recon-unionpay-*-differences.csv"))
    assert exported and order in exported[0].read_text()
    listed = paysw("errors")
    line = next(line for line in listed.stdout.splitlines() if order in line)
    item = line.split()[0]
    resolved = paysw("errors", "--resolve", item, "--reason", "checked with UnionPay: paid, file late")
    assert resolved.returncode == 0 and "resolved" in resolved.stdout
    assert order not in paysw("errors").stdout

    async def audited() -> list[tuple]:  # the break-glass path, outside the console's four eyes, audited
        conn = await asyncpg.connect(database_url)
        try:
            sql = (
                "SELECT user_name LIKE 'cli:%', after #>> '{}', outcome FROM console_audit "
                "WHERE action = 'recon.resolve' AND target = $1"
            )
            return [tuple(r) for r in await conn.fetch(sql, item)]
        finally:
            await conn.close()

    assert run(audited()) == [(True, "checked with UnionPay: paid, file late", "ok")]
    assert paysw("errors", "--resolve", item, "--reason", "again").returncode == 2
    assert paysw("errors", "--resolve", item).returncode == 2


def test_due_batches_are_the_closed_hours_not_done():
    now = dt.datetime(2026, 11, 23, 10, 20, tzinfo=CST).timestamp()
    done = {("wechat", dt.date(2026, 11, 23), 8)}
    due = due_batches(["wechat", "alipay"], done, now, grace_s=15 * 60, lookback_hours=3)
    assert due == [
        ("wechat", dt.date(2026, 11, 23), 7),
        ("alipay", dt.date(2026, 11, 23), 7),
        ("alipay", dt.date(2026, 11, 23), 8),
        ("wechat", dt.date(2026, 11, 23), 9),
        ("alipay", dt.date(2026, 11, 23), 9),
    ]
    # At 10:10 the 9 o'clock hour is closed but still in its grace period.
    early = dt.datetime(2026, 11, 23, 10, 10, tzinfo=CST).timestamp()
    assert ("wechat", dt.date(2026, 11, 23), 9) not in due_batches(["wechat"], set(), early, 15 * 60, 3)
    # Across midnight, the previous day's hours.
    past_midnight = dt.datetime(2026, 11, 24, 0, 30, tzinfo=CST).timestamp()
    assert due_batches(["ecny"], set(), past_midnight, 15 * 60, 1) == [("ecny", dt.date(2026, 11, 23), 23)]


def test_the_hourly_reconciler_runs_a_closed_hour_once(switch, database_url, config_dir):
    channel = "ecny"
    fetch = CountingFetch(config_dir)

    async def scenario():
        answer = await approved_purchase(switch, database_url, channel)
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
        worker = channel_worker(config_dir, channel)
        hour_end = dt.datetime.now(CST).replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=1)
        reconciler = HourlyReconciler(
            pool, {channel: channel}, fetch, lambda _: worker.call, Threshold(10, 10**9), grace_s=60,
            lookback_hours=1, clock=lambda: hour_end.timestamp() + 61,  # as if this hour closed a minute ago
        )  # fmt: skip
        try:
            first = await reconciler.run_due()
            second = await reconciler.run_due()
            batch = await pool.fetchrow(
                "SELECT step, summary FROM recon_batch WHERE channel = $1 AND day = $2 AND hour = $3",
                channel,
                (hour_end - dt.timedelta(hours=1)).date(),
                (hour_end - dt.timedelta(hours=1)).hour,
            )
            matched = await pool.fetchval(
                "SELECT i.class FROM recon_item i JOIN recon_batch b ON b.id = i.batch_id "
                "WHERE i.out_trade_no = $1 AND b.hour >= 0",
                out_trade_no(answer["37"]),
            )
            return first, second, batch, matched
        finally:
            await worker.close()
            await pool.close()

    first, second, batch, matched = run(scenario())
    assert (first, second, fetch.calls) == (1, 0, 1)
    assert batch["step"] == "done" and json.loads(batch["summary"])["MATCHED"]["count"] >= 1
    assert matched == "MATCHED"


def test_statements_parse_in_a_ray_worker_as_in_a_thread():
    """The switch parses statements as Ray tasks, away from its event loop; same records."""
    import ray

    from bench.recon_bench import generate, statement_bytes
    from switch.recon.batch import parse_in_thread
    from switch.recon.scheduler import parse_in_ray

    _, statements, _ = generate(2_000)
    data = statement_bytes("alipay", statements["alipay"])
    start, end = window(dt.date(2026, 1, 15), WHOLE_DAY)
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
    try:
        in_ray = run(parse_in_ray(7, "alipay", data, start, end))
    finally:
        ray.shutdown()
    assert in_ray == run(parse_in_thread(7, "alipay", data, start, end)) and len(in_ray) == len(statements["alipay"])


def test_a_recon_process_killed_mid_batch_resumes_at_its_step(switch, database_url, config_dir, ports):
    """kill -9 of ``paysw recon`` while the channel holds the statement download; the batch stays
    at its step, and the next run finishes the same batch."""
    import os
    import signal
    import subprocess
    import sys

    from bench.simulators.control import set_fault
    from bench.simulators.faults import NO_FAULT, Fault

    # Yesterday's hour: no other test's batch. (The previous hour was the command-line test's own
    # current hour whenever an hour ended between the two: its batch done, and this one's too.)
    yesterday = dt.datetime.now(CST) - dt.timedelta(days=1)
    command = [sys.executable, "-m", "switch.cli", "recon", "--config", str(config_dir / "switch.toml")]
    command += ["--channel", "unionpay", "--date", yesterday.date().isoformat(), "--hour", str(yesterday.hour)]
    env = {**os.environ, "SWITCH_DATABASE_URL": database_url}

    async def batch_step() -> tuple[int, str] | None:
        conn = await asyncpg.connect(database_url)
        try:
            row = await conn.fetchrow(
                "SELECT id, step FROM recon_batch WHERE channel = 'unionpay' AND day = $1 AND hour = $2",
                yesterday.date(),
                yesterday.hour,
            )
            return (row["id"], row["step"]) if row else None
        finally:
            await conn.close()

    control = f"127.0.0.1:{ports.controls['unionpay']}"
    set_fault(control, Fault(hang=True))
    try:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            if run(batch_step()) is not None:
                break
            time.sleep(0.2)
        time.sleep(1.0)  # the download is under way, held by the channel
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        set_fault(control, NO_FAULT)
    killed = run(batch_step())
    assert killed is not None and killed[1] == "fetch"
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert run(batch_step()) == (killed[0], "done")


def test_the_channel_is_asked_about_an_order_by_the_time_it_was_sent(switch, database_url, config_dir):
    """UnionPay names an order by its number and the time it was sent (txnTime) together: a query
    with another time is of no order (34, as its simulator answers too). Reconciliation asks about
    an order the journal has by its write-ahead's time, not the statement's (seconds later): paid,
    its terminal told "in progress", it is approved."""
    channel = "unionpay"  # its current hour's batch is this test's own

    async def scenario():
        async with paid_but_open(switch, database_url, config_dir, channel, told="09", written_ago_s=5) as (
            pool, worker, (rrn, order, _)
        ):  # fmt: skip
            now = dt.datetime.now(CST)
            await pool.execute(AFRESH, channel, now.date(), now.hour)
            batch = ReconBatch(pool, channel, channel, now.date(), now.hour, CountingFetch(config_dir),
                               Handler(pool, worker.call, Threshold(1000, 10**9)))  # fmt: skip
            assert await batch.run() == "done"
            item = await item_of(pool, batch.id, order)
            return item, await pool.fetchval("SELECT state FROM txn WHERE rrn = $1", rrn)

    item, state = run(scenario())
    assert (item, state) == (("STATUS", "FIXED", "approve_paid"), "APPROVED")


def test_an_order_only_unionpay_has_is_asked_by_the_time_its_file_shows(switch, database_url, config_dir, simulators):
    """An order only the channel has, sent 5 s before UnionPay took it: its file's time column is the
    order's txnTime (as the switch's orders are named by), so reconciliation's query finds it paid
    and reverses it. With the time it was taken, the query names no order, a person's."""
    channel = "unionpay"  # its current hour's batch is this test's own
    order = f"{CHANNEL_ONLY_PREFIX}{random.randrange(10**12)}"

    async def scenario():
        if dt.datetime.now(CST).strftime("%M%S") < "0010":
            await asyncio.sleep(10)  # sent and taken in one hour: the batch is the hour's
        await pay_at_the_channel_only(config_dir, channel, order, 4321, time.time() - 5)
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
        worker = channel_worker(config_dir, channel)
        try:
            now = dt.datetime.now(CST)
            await pool.execute(AFRESH, channel, now.date(), now.hour)
            batch = ReconBatch(pool, channel, channel, now.date(), now.hour, CountingFetch(config_dir),
                               Handler(pool, worker.call, Threshold(1000, 10**9)))  # fmt: skip
            assert await batch.run() == "done"
            return await item_of(pool, batch.id, order)
        finally:
            await worker.close()
            await pool.close()

    assert run(scenario()) == ("LONG", "FIXED", "reverse_long")
    assert sim_ledger(simulators, channel)[order]["status"] == "REVERSED"


def test_a_journal_that_moved_since_the_match_is_not_fixed_over(switch, database_url, config_dir):
    """Between match and handle the resolver may settle a transaction: the rule must not claim
    a fix it did not make (the item stays open for a person, no action is recorded)."""
    channel = "unionpay"  # no other test makes its whole-day batch
    fetch = CountingFetch(config_dir)

    async def scenario():
        async with paid_but_open(switch, database_url, config_dir, channel) as (pool, worker, (rrn, order, amount)):
            batch = ReconBatch(pool, channel, channel, dt.datetime.now(CST).date(), WHOLE_DAY, fetch,
                               Handler(pool, worker.call, Threshold(1000, 10**9)))  # fmt: skip
            assert await batch.run(stop_after="match") == "handle"
            await pool.execute("UPDATE txn SET state = 'CANCELLED' WHERE rrn = $1", rrn)  # the resolver got there first
            assert await batch.run() == "done"
            item = await pool.fetchrow(
                "SELECT id, class, status FROM recon_item WHERE batch_id = $1 AND out_trade_no = $2", batch.id, order
            )
            actions = await pool.fetchval("SELECT count(*) FROM recon_action WHERE item_id = $1", item["id"])
            # Leave the channel agreeing with the journal, as the resolver's cancel would have.
            cancel = ChannelRequest(2, CANCEL, order, amount, "", "", "T0000001", time.time() + 10, time.time())
            assert (await worker.call(cancel)).outcome is Outcome.APPROVED
            return item, actions, await pool.fetchval("SELECT state FROM txn WHERE rrn = $1", rrn)

    item, actions, state = run(scenario())
    assert (item["class"], item["status"], actions, state) == ("STATUS", "OPEN", 0, "CANCELLED")


def test_a_payment_reversed_after_its_statement_was_cut_is_no_difference(switch, database_url, config_dir, ports):
    """A batch fetches the statement before it reads the journal: a payment reversed in between is
    paid on the statement and reversed in the journal. The channel, asked again, agrees with the
    journal: closed with no money moved, not left to a person (a flaky stateful lifecycle test found
    it, the resolver's cancel in between). Left to a person: a decline the channel charged (asked
    again, still paid); one reversed before the statement was asked for which the statement shows
    paid (the file contradicts the journal, whatever the channel says now). A payment never made
    that its terminal reversed is no difference at all."""
    channel = "inbank"  # its current hour's batch is this test's own

    async def scenario():
        agreed, unpaid, early = new_purchase(channel), new_purchase(channel, "08"), new_purchase(channel)
        async with connected(switch) as terminal:  # 08: the customer never confirms
            rrns = {name: (await terminal.request(message))["37"] for name, message in
                    (("agreed", agreed), ("unpaid", unpaid), ("early", early))}  # fmt: skip
            for message in (unpaid, early):
                assert (await terminal.request(reversal(message, STANS.next(message["41"]))))["39"] == "00"
        await wait_for_state(database_url, rrns["agreed"], {"APPROVED"})
        for name in ("unpaid", "early"):
            await wait_for_state(database_url, rrns[name], {"REVERSED"})
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
        worker = channel_worker(config_dir, channel)
        try:
            async with pool.acquire() as conn:
                rrns["declined"], order, amount = await journal_unknown_copy(conn, rrns["agreed"])
            await pay_at_the_channel_only(config_dir, channel, order, amount)
            now = dt.datetime.now(CST)
            await pool.execute(AFRESH, channel, now.date(), now.hour)
            handler = Handler(pool, worker.call, Threshold(max_count=1000, max_fen=10**9))
            batch = ReconBatch(pool, channel, channel, now.date(), now.hour, CountingFetch(config_dir), handler)
            order_statement_faults(ports, channel, {"statuses": {out_trade_no(rrns["early"]): PAID}})
            try:
                assert await batch.run(stop_after="load") == "extract"  # the statement shows them paid
            finally:
                order_statement_faults(ports, channel, {})
            async with connected(switch) as terminal:
                assert (await terminal.request(reversal(agreed, STANS.next(agreed["41"]))))["39"] == "00"
            await wait_for_state(database_url, rrns["agreed"], {"REVERSED"})
            await pool.execute("UPDATE txn SET state = 'DECLINED' WHERE rrn = $1", rrns["declined"])
            assert await batch.run() == "done"
            await handler.handle(batch.id)  # a second run asks again, and still leaves them
            found = await pool.fetch(
                "SELECT i.rrn, i.class, i.status, i.journal_state, a.rule FROM recon_item i "
                "LEFT JOIN recon_action a ON a.item_id = i.id WHERE i.batch_id = $1 AND i.rrn = ANY($2)",
                batch.id,
                list(rrns.values()),
            )
            reversing = await pool.fetchval(
                "SELECT reversal_requested_at IS NOT NULL FROM txn WHERE rrn = $1", rrns["unpaid"]
            )
            return {r["rrn"]: tuple(r.values())[1:] for r in found}, rrns, reversing
        finally:
            await worker.close()
            await pool.close()

    found, rrns, reversing = run(scenario())
    assert found[rrns["agreed"]] == ("STATUS", "FIXED", "REVERSED", "agrees_now")
    assert found[rrns["declined"]] == ("STATUS", "OPEN", "DECLINED", None)
    assert found[rrns["early"]] == ("STATUS", "OPEN", "REVERSED", None)
    # Never paid, reversed by its terminal and closed at the channel: no money on either side, so
    # no difference at all (its reversal's mark made it "still open" once, a person's to clear).
    assert reversing and rrns["unpaid"] not in found


@pytest.mark.parametrize("later_first", [False, True], ids=["in-order", "later-first"])
def test_a_refund_on_either_side_of_an_hour_is_no_difference(switch, database_url, config_dir, ports, later_first):
    """A refund the switch took at the end of an hour that the channel's statement has in the next
    (its clock, or the batch's fetch, past the hour): the earlier batch finds it on the journal's
    side only, the later on the statement's only. The later's rule finds the journal's refund
    outside its window, kept for the same amount: the item takes its RRN (settlement refunds it
    once) and the earlier batch's item is closed with it; run the other way round (a rerun hour),
    the earlier's item is closed by the mirror rule. A payment so is fixed on both sides too. Left
    to a person: a refund the statement shows still in progress (no money back yet), even in the
    hour of its arrival, and one another statement of the channel has too."""
    channel = "wechat"  # its batches of this hour and the one before are this test's own

    async def scenario():
        backs = {}
        async with connected(switch) as terminal:
            for name in ("kept", "pending", "twice", "unfinished"):
                purchase = new_purchase(channel, amount=5000)
                paid = await terminal.request(purchase)
                backs[name] = await terminal.request(refund(purchase, paid["37"], 1200, STANS.next(purchase["41"])))
                assert (paid["39"], backs[name]["39"]) == ("00", "00")
            backs["paid"] = await terminal.request(new_purchase(channel, amount=3000))
        rrns = {name: back["37"] for name, back in backs.items()}
        for rrn in rrns.values():
            await wait_for_state(database_url, rrn, {"APPROVED"})
        now = dt.datetime.now(CST)
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
        worker = channel_worker(config_dir, channel)
        try:
            # The journal has them arriving in the hour before; the statement, in this one.
            await pool.execute(
                "UPDATE txn SET received_at = received_at - interval '1 hour' WHERE rrn = ANY($1)",
                [rrns[name] for name in ("kept", "pending", "twice", "paid")],
            )
            # Another hour's statement of the channel listed one of them already (done twice?).
            await pool.execute(
                "WITH b AS (INSERT INTO recon_batch (channel, day, hour, step) VALUES ($1, '2001-01-01', 3, 'done') "
                "ON CONFLICT (channel, day, hour) DO UPDATE SET step = 'done' RETURNING id) "
                "INSERT INTO recon_item (batch_id, class, entry, out_trade_no, channel_status, channel_fen, status) "
                "SELECT id, 'REFUND', 'REFUND', $2, 'SUCCESS', 1200, 'OPEN' FROM b",
                channel,
                out_trade_no(rrns["twice"]),
            )
            handler = Handler(pool, worker.call, Threshold(1000, 10**9))
            batches = []
            pending = {out_trade_no(rrns[name]): "PROCESSING" for name in ("pending", "unfinished")}
            order_statement_faults(ports, channel, {"statuses": pending})
            try:
                hours = [now - dt.timedelta(hours=1), now]
                for when in reversed(hours) if later_first else hours:
                    await pool.execute(AFRESH, channel, when.date(), when.hour)
                    fetch = CountingFetch(config_dir)
                    batch = ReconBatch(pool, channel, channel, when.date(), when.hour, fetch, handler)
                    assert await batch.run() == "done"
                    batches.append(batch.id)
                lacking = [out_trade_no(rrns[name]) for name in ("kept", "paid")]
                order_statement_faults(ports, channel, {"drop": lacking})
                journal_day = hours[0].date()  # of the journal's hour (past midnight, the day before this one)
                await pool.execute(AFRESH, channel, journal_day, WHOLE_DAY)
                whole = ReconBatch(pool, channel, channel, journal_day, WHOLE_DAY, CountingFetch(config_dir), handler)
                assert await whole.run() == "done"
                day = {name: await item_of(pool, whole.id, out_trade_no(rrns[name])) for name in ("kept", "paid")}
            finally:
                order_statement_faults(ports, channel, {})
            found = await pool.fetch(  # the earlier hour's item first
                "SELECT i.out_trade_no, i.class, i.status, i.rrn, i.channel_status, a.rule FROM recon_item i "
                "JOIN recon_batch b ON b.id = i.batch_id LEFT JOIN recon_action a ON a.item_id = i.id "
                "WHERE i.out_trade_no = ANY($1) AND i.batch_id = ANY($2) ORDER BY b.day, b.hour",
                [out_trade_no(rrn) for rrn in rrns.values()],
                batches,
            )
            by_refund = {name: [tuple(r)[1:] for r in found if r["out_trade_no"] == out_trade_no(rrn)]
                         for name, rrn in rrns.items()}  # fmt: skip
            # The later hour run again: adopting the refund again, it closes no day batch's item.
            later = hours[1]
            await pool.execute(AFRESH, channel, later.date(), later.hour)
            again = ReconBatch(pool, channel, channel, later.date(), later.hour, CountingFetch(config_dir), handler)
            assert await again.run() == "done"
            day["kept after the hour again"] = await item_of(pool, whole.id, out_trade_no(rrns["kept"]))
            return by_refund, rrns, day
        finally:
            await worker.close()
            await pool.close()

    found, rrns, day = run(scenario())
    # The journal's side, in the hour before: closed by the later batch's rule, or by its mirror.
    closed = "statement_elsewhere" if later_first else "journal_elsewhere"
    assert found["kept"] == [
        ("REFUND", "FIXED", rrns["kept"], None, closed),
        ("REFUND", "FIXED", rrns["kept"], "SUCCESS", "journal_elsewhere"),  # the statement's, with the journal's RRN
    ]
    # In order, the earlier batch's short is confirmed by asking the channel before the later runs.
    assert found["paid"] == [
        ("SHORT", "FIXED", rrns["paid"], None, "statement_elsewhere" if later_first else "confirm_short"),
        ("LONG", "FIXED", rrns["paid"], "SUCCESS", "journal_elsewhere"),
    ]
    assert found["pending"] == [
        ("REFUND", "OPEN", rrns["pending"], None, None),
        ("REFUND", "OPEN", None, "PROCESSING", None),  # no money back yet: a person's
    ]
    assert found["twice"] == [("REFUND", "OPEN", rrns["twice"], None, None), ("REFUND", "OPEN", None, "SUCCESS", None)]
    # In one hour on both sides, but still in progress at the channel: not matched.
    assert found["unfinished"] == [("REFUND", "OPEN", rrns["unfinished"], "PROCESSING", None)]
    # The day's file, which the channel settles by, lacking both: the hour's adoption closes neither.
    assert day == {
        "kept": ("REFUND", "OPEN", None),
        "paid": ("SHORT", "FIXED", "confirm_short"),
        "kept after the hour again": ("REFUND", "OPEN", None),
    }


def test_a_reversal_asked_for_before_the_statement_is_carried_out(switch, database_url, config_dir, simulators):
    """A 0400 answered ``00`` while the purchase was still open (its channel down, the resolver
    backing off): the statement then shows it paid. Reconciliation must not settle it as kept:
    the customer was promised the money back, so the reversal is carried out at the channel."""
    channel = "wechat"  # its current hour's batch is this test's own
    fetch = CountingFetch(config_dir)

    async def scenario():
        # Told "in progress" (09), then reversed by the terminal: the reversal waits for the
        # channel (due in an hour, as the resolver's backoff would have it).
        async with paid_but_open(switch, database_url, config_dir, channel, told="09", reversing=True) as (
            pool, worker, (rrn, order, _)
        ):  # fmt: skip
            now = dt.datetime.now(CST)
            await pool.execute(AFRESH, channel, now.date(), now.hour)
            batch = ReconBatch(pool, channel, channel, now.date(), now.hour, fetch,
                               Handler(pool, worker.call, Threshold(1000, 10**9)))  # fmt: skip
            assert await batch.run() == "done"
            row = await wait_for_state(database_url, rrn, {"REVERSED"}, timeout=30)
            return order, row

    order, row = run(scenario())
    assert row["state"] == "REVERSED"
    assert sim_ledger(simulators, channel)[order]["status"] == "REVERSED"  # the money went back


def test_a_payment_kept_elsewhere_reversed_meanwhile_is_not_fixed_as_kept(switch, database_url, config_dir):
    """A LONG item whose journal row was read kept with the batch's candidates, then asked to be
    reversed before its turn came (earlier items wait on channel calls): it stays open for a
    person, with no action recorded."""
    from switch.recon.handling import _CANDIDATES

    channel = "wechat"  # its current hour's batch is this test's own

    async def scenario():
        answer = await approved_purchase(switch, database_url, channel)
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
        worker = channel_worker(config_dir, channel)
        try:
            moved = "UPDATE txn SET received_at = received_at - interval '2 hours' WHERE rrn = $1"
            await pool.execute(moved, answer["37"])
            now = dt.datetime.now(CST)
            await pool.execute(AFRESH, channel, now.date(), now.hour)
            handler = Handler(pool, worker.call, Threshold(1000, 10**9))
            batch = ReconBatch(pool, channel, channel, now.date(), now.hour, CountingFetch(config_dir), handler)
            assert await batch.run(stop_after="match") == "handle"
            order = await pool.fetchval("SELECT out_trade_no FROM txn WHERE rrn = $1", answer["37"])
            item = next(c for c in await pool.fetch(_CANDIDATES, batch.id) if c["out_trade_no"] == order)
            assert item["kept_elsewhere"]
            await pool.execute("UPDATE txn SET reversal_requested_at = now() WHERE rrn = $1", answer["37"])
            fixed = await handler._journal_elsewhere(item)
            status = await pool.fetchval("SELECT status FROM recon_item WHERE id = $1", item["id"])
            actions = await pool.fetchval("SELECT count(*) FROM recon_action WHERE item_id = $1", item["id"])
            await pool.execute("UPDATE txn SET reversal_requested_at = NULL WHERE rrn = $1", answer["37"])
            return fixed, status, actions
        finally:
            await worker.close()
            await pool.close()

    assert run(scenario()) == (False, "OPEN", 0)


def test_a_purchase_a_terminal_dates_a_day_ahead_is_reconciled_in_the_hour_it_arrived(
    switch, database_url, config_dir, simulators
):
    """Field 7 may be a day from the switch's date (a terminal's clock ahead, or Beijing's date
    sent for UTC's): its transaction date is the next day, and the batch of the hour it arrived in
    must still take it from the journal (it was LONG there: the journal's rows were read only up
    to the window's own date)."""
    from bench.traffic import purchase
    from tests.support import MERCHANT, TERMINAL

    channel = "unionpay"  # its current hour's batch is this test's own
    fetch = CountingFetch(config_dir)

    async def scenario():
        ahead = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
        request = purchase(TERMINAL, MERCHANT, payment_code(channel, "00"), 4_321, STANS.next(TERMINAL), when=ahead)
        async with connected(switch) as terminal:
            answer = await terminal.request(request)
        assert answer["39"] == "00", answer["39"]
        await wait_for_state(database_url, answer["37"], {"APPROVED"})
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
        try:
            row = await pool.fetchrow("SELECT tx_date, out_trade_no FROM txn WHERE rrn = $1", answer["37"])
            assert row["tx_date"] == ahead.date()
            now = dt.datetime.now(CST)
            await pool.execute(AFRESH, channel, now.date(), now.hour)
            batch = ReconBatch(pool, channel, channel, now.date(), now.hour, fetch)
            assert await batch.run() == "done"
            return await pool.fetchval(
                "SELECT class FROM recon_item WHERE batch_id = $1 AND out_trade_no = $2", batch.id, row["out_trade_no"]
            )
        finally:
            await pool.close()

    assert run(scenario()) == "MATCHED"


def test_a_payment_the_journal_has_outside_the_batchs_window_is_not_reversed(
    switch, database_url, config_dir, simulators
):
    """The statement's time is the channel's, the journal's window the switch's arrival time: a
    payment on either side of an hour (a QR order created at 10:55, paid at 11:02) is LONG for
    the batch. The journal has it approved, the merchant told paid: reconciliation must not cancel
    it at the channel. Kept in the journal for the same amount, it is reconciled with the hour of
    its arrival (fixed, nothing done, the item taking the journal's RRN for settlement, however
    low the automation's threshold: it moves no money); one the journal has otherwise (a reversal
    owed, here) is left open for a person."""
    channel = "alipay"  # its current hour's batch is this test's own
    fetch = CountingFetch(config_dir)

    async def scenario():
        answers = [await approved_purchase(switch, database_url, channel) for _ in range(2)]
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
        worker = channel_worker(config_dir, channel)
        try:
            rrns = [a["37"] for a in answers]
            orders = [await pool.fetchval("SELECT out_trade_no FROM txn WHERE rrn = $1", rrn) for rrn in rrns]
            moved = "UPDATE txn SET received_at = received_at - interval '2 hours' WHERE rrn = ANY($1)"
            await pool.execute(moved, rrns)  # arrived, for the journal's window, in an earlier hour
            await pool.execute("UPDATE txn SET reversal_requested_at = now() WHERE rrn = $1", rrns[1])
            now = dt.datetime.now(CST)
            await pool.execute(AFRESH, channel, now.date(), now.hour)
            batch = ReconBatch(pool, channel, channel, now.date(), now.hour, fetch,
                               Handler(pool, worker.call, Threshold(0, 0)))  # fmt: skip
            assert await batch.run() == "done"
            items = [
                await pool.fetchrow(
                    "SELECT i.class, i.status, a.rule, i.rrn FROM recon_item i "
                    "LEFT JOIN recon_action a ON a.item_id = i.id WHERE i.batch_id = $1 AND i.out_trade_no = $2",
                    batch.id,
                    order,
                )
                for order in orders
            ]
            states = [await pool.fetchval("SELECT state FROM txn WHERE rrn = $1", rrn) for rrn in rrns]
            return orders, rrns, items, states
        finally:
            await worker.close()
            await pool.close()

    orders, rrns, items, states = run(scenario())
    # The fixed one carries the journal's RRN: settlement pays it from here if its arrival's hour never does.
    assert [tuple(item) for item in items] == [
        ("LONG", "FIXED", "journal_elsewhere", rrns[0]),
        ("LONG", "OPEN", None, None),
    ]
    assert states == ["APPROVED", "APPROVED"]
    ledger = sim_ledger(simulators, channel)
    assert [ledger[order]["status"] for order in orders] == ["PAID", "PAID"]  # the customers' payments stand


def test_the_differences_file_shows_a_cell_from_the_statement_as_text_never_a_formula():
    """Order numbers and notes come from the channel's file: one read as a formula would run
    where the differences CSV is opened (found in review)."""
    assert [inert(v) for v in ("=HYPERLINK(1)", "+1", "-2", "@SUM(A1)", "2026120400001", 12, None)] == [
        "'=HYPERLINK(1)", "'+1", "'-2", "'@SUM(A1)", "2026120400001", 12, None,
    ]  # fmt: skip
