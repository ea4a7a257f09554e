"""Settlement from reconciled transactions only: fees at the merchant's rate rounded half up, T+1
and D0 cycles, each transaction settled once, differences carried until resolved, and the
check that merchants' nets plus fees equal what the channel settles, to the fen."""

from __future__ import annotations

import datetime as dt

import asyncpg
import pytest

from bench.traffic import refund, void
from protocols.statements import CST
from switch.config import load_config
from switch.recon.batch import ReconBatch
from switch.settlement import settle, write_file
from tests.conftest import run
from tests.support import STANS, connected, new_purchase, out_trade_no
from tests.test_recon import AFRESH, CountingFetch, order_statement_faults

# Each pays, then reconciles the hour and settles the day it read off the clock.
pytestmark = pytest.mark.usefixtures("one_hour")

COFFEE, KIOSK = "898310048990001", "898310048990002"  # T+1 at 0.20 % on inbank; D0 at 0.25 % on alipay


def test_settlement_of_reconciled_transactions(switch, database_url, config_dir, ports, tmp_path):
    config = load_config(config_dir / "switch.toml")

    async def scenario():
        async with connected(switch) as terminal:
            purchases = [new_purchase("inbank", amount=a) for a in (10_000, 2_499, 12_345)]
            paid = [await terminal.request(p) for p in purchases]
            back = await terminal.request(refund(purchases[0], paid[0]["37"], 2_500, STANS.next(purchases[0]["41"])))
            disputed = await terminal.request(new_purchase("inbank", amount=5_000))
            kiosk = await terminal.request(new_purchase("alipay", terminal="K0000001", merchant=KIOSK, amount=8_000))
        assert all(a["39"] == "00" for a in (*paid, back, disputed, kiosk))
        today, hour = dt.datetime.now(CST).date(), dt.datetime.now(CST).hour
        order_statement_faults(ports, "inbank", {"amounts": {out_trade_no(disputed["37"]): 4_000}})
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
        fetch = CountingFetch(config_dir)
        try:
            for channel in ("inbank", "alipay"):  # afresh: test_recon runs this hour's batches of its own
                await pool.execute(AFRESH, channel, today, hour)
                assert await ReconBatch(pool, channel, channel, today, hour, fetch).run() == "done"
            order_statement_faults(ports, "inbank", {})
            same_day = await settle(pool, config, today)
            next_day = await settle(pool, config, today + dt.timedelta(days=1))
            again = await settle(pool, config, today + dt.timedelta(days=1))
            mine = {out_trade_no(a["37"]) for a in (*paid, back, disputed, kiosk)}
            settled = {
                r["out_trade_no"]: (r["settled_on"], r["fee_fen"])
                for r in await pool.fetch("SELECT * FROM settlement_item WHERE out_trade_no = ANY($1)", list(mine))
            }
            item = await pool.fetchval(
                "SELECT id FROM recon_item WHERE out_trade_no = $1 AND class = 'AMOUNT'", out_trade_no(disputed["37"])
            )
            await pool.execute("UPDATE recon_item SET status = 'RESOLVED', note = 'test' WHERE id = $1", item)
            later = await settle(pool, config, today + dt.timedelta(days=2))
            return paid, back, disputed, kiosk, same_day, next_day, again, settled, later
        finally:
            await pool.close()

    paid, back, disputed, kiosk, same_day, next_day, again, settled, later = run(scenario())
    today = dt.datetime.now(CST).date()
    tomorrow = today + dt.timedelta(days=1)
    # D0: the kiosk's payment is settled the same day; T+1: the coffee shop's the next day.
    assert settled[out_trade_no(kiosk["37"])] == (today, (8_000 * 25 + 5_000) // 10_000)
    assert settled[out_trade_no(paid[0]["37"])] == (tomorrow, 20)  # 10,000 fen at 0.20 %
    assert settled[out_trade_no(paid[1]["37"])] == (tomorrow, 5)  # 4.998 fen, rounded half up
    assert settled[out_trade_no(paid[2]["37"])] == (tomorrow, 25)  # 24.69
    assert settled[out_trade_no(back["37"])] == (tomorrow, -5)  # the fee on the refunded 2,500 comes back
    assert out_trade_no(disputed["37"]) not in settled  # the difference carried
    # (Other tests' differences resolved by hand on other channels may settle the same days.)
    assert not {
        c: m for c, m in (*same_day.mismatches().items(), *next_day.mismatches().items()) if c in ("inbank", "alipay")
    }
    assert again.lines == next_day.lines  # settled once: running the day again adds nothing
    coffee = next(line for line in next_day.lines if (line.merchant_id, line.channel) == (COFFEE, "inbank"))
    assert coffee.net == coffee.gross - coffee.refunds - coffee.fees
    # Resolved by a person, it is settled two days on with the journal's amount; the check shows
    # the channel settles 10 yuan less for it.
    ours, theirs = later.mismatches()["inbank"]
    assert ours - theirs == 1_000
    path = write_file(next_day, tmp_path)
    totals = {
        line.split(",")[1]: line.split(",")[-1] for line in path.read_text().splitlines() if line.startswith("TOTAL")
    }
    assert totals["inbank"] == "OK"


def test_a_payment_settled_and_then_voided_is_clawed_back_once(switch, database_url, config_dir, tmp_path):
    """A D0 merchant's payments settled within the hour their statement listed them, then voided:
    the next settlement takes each back whole with the fee it was charged, once, and the day still
    adds up against the channel (which shows the order revoked, no entry of its own). Found among
    every payment settled with no run before (the first), or with a mark from another database (a
    journal moved to a new cluster, whose transaction ids start afresh: the second); else among the
    moves since the last run's snapshot (the third). A day before the newest is only read again."""
    config = load_config(config_dir / "switch.toml")
    amounts = (6_000, 7_000, 8_000)

    async def scenario():
        async with connected(switch) as terminal:
            sales = [new_purchase("alipay", terminal="K0000001", merchant=KIOSK, amount=a) for a in amounts]
            paid = [await terminal.request(sale) for sale in sales]
            assert [p["39"] for p in paid] == ["00"] * 3
            today, hour = dt.datetime.now(CST).date(), dt.datetime.now(CST).hour
            pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
            try:
                await pool.execute(AFRESH, "alipay", today, hour)
                batch = ReconBatch(pool, "alipay", "alipay", today, hour, CountingFetch(config_dir))
                assert await batch.run() == "done"
                # The newest day settled (the other test settles days ahead in the same journal).
                day = await pool.fetchval("SELECT greatest((SELECT day FROM settlement_mark), $1)", today)
                await settle(pool, config, day)
                runs = []
                for n, (sale, answer) in enumerate(zip(sales, paid, strict=True)):
                    voided = await terminal.request(void(sale, answer["37"], STANS.next(sale["41"])))
                    assert voided["39"] == "00"
                    if n == 0:
                        await pool.execute("DELETE FROM settlement_mark")
                    elif n == 1:  # as another cluster's ids: far ahead of this one's
                        await pool.execute("UPDATE settlement_mark SET seen_below = '9000000000000000000'::xid8")
                    else:
                        paid_day = "SELECT count(*) FROM settlement_item WHERE settled_on = $1"
                        kept = await pool.fetchval(paid_day, day - dt.timedelta(days=1))
                        before = await settle(pool, config, day - dt.timedelta(days=1))
                        assert not any(line.clawbacks for line in before.lines if line.merchant_id == KIOSK)
                        assert await pool.fetchval(paid_day, day - dt.timedelta(days=1)) == kept  # only read
                    runs.append(await settle(pool, config, day))
                again = await settle(pool, config, day)
                later = await settle(pool, config, day + dt.timedelta(days=1))
                items = await pool.fetch(
                    "SELECT out_trade_no, entry, settled_on, amount_fen, channel_fen, fee_fen FROM settlement_item "
                    "WHERE out_trade_no = ANY($1) ORDER BY amount_fen, entry",
                    [out_trade_no(p["37"]) for p in paid],
                )
                # The batch, due for every merchant by then, is settled whole: no run looks at it again.
                assert await pool.fetchval("SELECT settled_at IS NOT NULL FROM recon_batch WHERE id = $1", batch.id)
                return day, paid, runs, again, later, [tuple(r) for r in items]
            finally:
                await pool.close()

    day, paid, runs, again, later, items = run(scenario())
    expected = []
    for answer, amount in zip(paid, amounts, strict=True):
        fee = (amount * 25 + 5_000) // 10_000
        expected += [(out_trade_no(answer["37"]), "CLAWBACK", day, amount, amount, -fee),
                     (out_trade_no(answer["37"]), "PAY", day, amount, amount, fee)]  # fmt: skip
    assert items == expected
    kiosk = next(line for line in runs[-1].lines if (line.merchant_id, line.channel) == (KIOSK, "alipay"))
    assert kiosk.clawbacks >= sum(amounts)
    assert kiosk.net == kiosk.gross - kiosk.refunds - kiosk.clawbacks - kiosk.fees
    assert "alipay" not in runs[-1].mismatches()
    assert again.lines == runs[-1].lines  # clawed back once
    assert not any(line.clawbacks for line in later.lines if line.merchant_id == KIOSK)
    text = write_file(runs[-1], tmp_path).read_text()
    assert text.splitlines()[0].split(",")[7:] == ["net_fen", "clawbacks_fen"]  # added last: the others stay
    assert f"{KIOSK},alipay,D0," in text


def test_a_day_after_tomorrow_is_refused_before_anything_is_settled(config_dir, tmp_path):
    """Settled, a day ahead would leave every day until it "before the newest", only read: refused."""
    import subprocess
    import sys

    ahead = dt.datetime.now(CST).date() + dt.timedelta(days=2)
    command = ["settle", "--date", str(ahead), "--config", str(config_dir / "switch.toml"), "--data-dir", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, "-m", "switch.cli", *command], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode == 2, done.stderr
    assert f"--date {ahead} is in the future" in done.stderr and "Traceback" not in done.stderr


def test_a_difference_adopting_the_journals_row_of_another_day_is_settled_on_its_day(database_url, config_dir):
    """A rule may close a difference with the journal's row of a day outside its batch's (the days a
    run reads for a batch): the item is still settled on its day, not a run later."""
    from switch.journal import Event, Journal, State
    from tests.test_journal import new_txn, outcome

    config = load_config(config_dir / "switch.toml")
    today = dt.datetime.now(CST).date()

    async def scenario() -> bool:
        journal = await Journal.open(database_url, pool_size=2, max_batch=64)
        try:
            pool = journal.pool
            day = await pool.fetchval("SELECT greatest((SELECT day FROM settlement_mark), $1)", today)
            old = day - dt.timedelta(days=6)
            await pool.fetch("SELECT journal_make_days($1, $1)", old)
            txn = new_txn(await journal.next_rrn(), amount=4_321)._replace(merchant_id=KIOSK, tx_date=old)
            assert await journal.write_ahead(txn)
            assert await journal.record(outcome(txn, Event.ACCEPTED)) is State.APPROVED
            batch = await pool.fetchval(
                "INSERT INTO recon_batch (channel, day, hour, step) VALUES ('settle-test', $1, 5, 'done') RETURNING id",
                day,
            )
            await pool.execute(
                "INSERT INTO recon_item (batch_id, class, entry, out_trade_no, rrn, journal_state, journal_fen, "
                "channel_status, channel_fen, status) VALUES ($1, 'LONG', 'PAY', $2, $3, 'APPROVED', 4321, 'SUCCESS', "
                "4321, 'FIXED')",
                batch, txn.out_trade_no, txn.rrn,
            )  # fmt: skip
            await settle(pool, config, day)
            return await pool.fetchval(
                "SELECT settled_on = $2 FROM settlement_item WHERE entry = 'PAY' AND out_trade_no = $1",
                txn.out_trade_no, day,
            )  # fmt: skip
        finally:
            await journal.close()

    assert run(scenario()) is True
