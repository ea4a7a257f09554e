"""Risk control before the channel (``risk/``): rules as data, decided after the write-ahead and
before the channel call, every hit journaled with its rule; lists and rules changed live.

The end-to-end tests run a switch of their own on a rules file the module writes, against the
session's simulators and journal."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import asyncpg
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.traffic import refund, reversal
from protocols.messages import CANCEL, ChannelRequest, Outcome
from risk.actor import _MOVES_SQL, _SNAPSHOT_SQL, FOLLOW_EVERY_S, Since, follow, follow_connection
from risk.control import Risk
from risk.counters import Counters
from risk.engine import Engine, Facts, Hit
from risk.lists import NOTIFY_CHANNEL as LISTS_CHANNEL
from risk.lists import Lists
from risk.rules import RulesError, RuleSet, load_rules
from switch.journal import Journal, NewTxn
from switch.journal.machine import FINAL
from switch.journal.roles import runtime_url
from switch.journal.schema import ensure_partitions, migrate
from switch.lifecycle import ORPHAN_GRACE_S
from tests.conftest import DEADLINE_MS, fresh_database, run, switch_with
from tests.support import STANS, connected, journal_row, new_purchase, sim_audit, wait_for_state, waits_for_a_lock
from tests.test_recon import channel_worker
from tests.test_workers import requests_by_worker

CAP_FEN = 500_000  # the module's single-payment cap
WATCH_FEN = 200_000  # its shadow rule's threshold
NEW_MERCHANT = "898310048990002"  # onboarded today in the module's configuration
# The refund ratio's merchant and terminal, the module's own: another test's refunds on the same
# journal today (locust's, say) would count against the demo merchant's ratio.
REFUNDING_MERCHANT, REFUNDING_TERMINAL = "898310048990009", "R0000009"
HELD_MERCHANT, HELD_TERMINAL = "898310048990008", "R0000008"  # the same, for the test that holds the journal up
NEW_MERCHANT_CAP_FEN = 10_000
NIGHT_TERMINAL = "T0000004"  # trading hours 08:00-22:00 apply to it alone
# Refunds at e-CNY may take the merchant's refunds of the day to 1 % of its sales, or of 1,000,000
# yuan if it sold less (as the session's merchant has): 1,000,000 fen of refunds, all channels'.
REFUND_PCT, REFUND_FLOOR_FEN = 1, 100_000_000
# The exactness test's rules, on e-CNY codes: per code, 3 approvals in 10 minutes, 7,000 yuan in an
# hour, 2 terminals in 10 minutes.
EXACT_COUNT, EXACT_FEN, EXACT_TILLS = 3, 700_000, 2

RULES = f"""
fail = "closed"

[[rule]]
id = "code-twice-an-hour"
kind = "cumulative"
per = "code"
window = "1h"
max_count = 2
scope = {{ channel = "unionpay" }}

[[rule]]
id = "code-at-one-merchant"
kind = "velocity"
across = "merchant"
window = "10m"
max_distinct = 1
scope = {{ channel = "alipay" }}

[[rule]]
id = "big-inbank"
kind = "amount"
max_fen = 300_000
action = "alert"
scope = {{ channel = "inbank" }}

[[rule]]
id = "cap"
kind = "amount"
max_fen = {CAP_FEN}

[[rule]]
id = "watch"
kind = "amount"
max_fen = {WATCH_FEN}
mode = "shadow"

[[rule]]
id = "black-code"
kind = "list"
of = "code"

[[rule]]
id = "black-terminal"
kind = "list"
of = "terminal"

[[rule]]
id = "grey-code"
kind = "list"
of = "code"
colour = "grey"
action = "review"

[[rule]]
id = "day-only"
kind = "hours"
opens = "08:00"
closes = "22:00"
scope = {{ terminal = "{NIGHT_TERMINAL}" }}

[[rule]]
id = "new-merchant"
kind = "new_merchant"
days = 30
max_fen = {NEW_MERCHANT_CAP_FEN}

[[rule]]
id = "exact-count"
kind = "cumulative"
per = "code"
window = "10m"
max_count = {EXACT_COUNT}
scope = {{ channel = "ecny" }}

[[rule]]
id = "exact-amount"
kind = "cumulative"
per = "code"
window = "1h"
max_fen = {EXACT_FEN}
scope = {{ channel = "ecny" }}

[[rule]]
id = "exact-tills"
kind = "velocity"
across = "terminal"
window = "10m"
max_distinct = {EXACT_TILLS}
scope = {{ channel = "ecny" }}

[[rule]]
id = "refunds-over-sales"
kind = "refund_ratio"
max_pct = {REFUND_PCT}
min_sales_fen = {REFUND_FLOOR_FEN}
scope = {{ channel = "ecny" }}
"""


# -- the rules file and the engine, without a switch ------------------------------------------

KNOWN = ({"wechat", "alipay"}, {"M1", "M2"}, {"T1"})


def rules_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('[[rule]]\nid = "a"\nkind = "velocityy"\n', r"Invalid value 'velocityy' - at `\$\.rule\[0\]\.kind`"),
        ('[[rule]]\nid = "a"\nkind = "amount"\n', r"missing required field `max_fen` - at `\$\.rule\[0\]`"),
        ('[[rule]]\nid = "a"\nkind = "amount"\nmax_fen = 1\nmode = "dry"\n', r"\$\.rule\[0\]\.mode"),
        ('[[rule]]\nid = "a b"\nkind = "amount"\nmax_fen = 1\n', r"\$\.rule\[0\]\.id"),
        ('[[rule]]\nid = "a"\nkind = "hours"\nopens = "8:00"\ncloses = "22:00"\n', r"\$\.rule\[0\]\.opens"),
        ('[[rule]]\nid = "a"\nkind = "hours"\nopens = "08:00"\ncloses = "08:00"\n', r"\$\.rule\[0\]: opens and closes"),
        ('[[rule]]\nid = "a"\nkind = "amount"\nmax_fen = 1\n[[rule]]\nid = "a"\nkind = "amount"\nmax_fen = 2\n',
         r"\$\.rule\[1\]\.id: 'a' is used twice"),
        ('[[rule]]\nid = "a"\nkind = "amount"\nmax_fen = 1\nscope = { merchant = "M9" }\n',
         r"\$\.rule\[0\]\.scope\.merchant: 'M9' is not in the switch configuration"),
        ('[[rule]]\nid = "a"\nkind = "amount"\nmax_fen = 1\nscope = { shop = "M1" }\n', r"unknown field `shop`"),
        ('[[rule]]\nid = "a"\nkind = "amount"\nmax_fen = 1\ncode = "00"\n', r"\$\.rule\[0\]\.code"),  # never approves
        ("[[rule]\n", "not valid TOML"),
    ],
)  # fmt: skip
def test_a_rules_file_is_refused_whole_with_the_field_at_fault(tmp_path, text, error):
    with pytest.raises(RulesError, match=error):
        load_rules(rules_file(tmp_path, text), *KNOWN)


def facts(**given) -> Facts:
    base = dict(
        channel="wechat", merchant="M1", mcc="5814", terminal="T1", amount_fen=100, code_fingerprint="ab" * 32,
        local_time=dt.time(12, 0), merchant_since=None, today=dt.date(2026, 12, 3),
    )  # fmt: skip
    return Facts(**{**base, **given})


def decide(text: str, lists: Lists | None = None, **given) -> list[tuple[str, str, str, str]]:
    import msgspec

    engine = Engine(msgspec.toml.decode(text.encode(), type=RuleSet))
    return [tuple(h) for h in engine.decide(facts(**given), lists or Lists()).hits]


def test_each_kind_fires_on_what_it_names_and_nothing_else():
    assert decide(RULES.replace(f'terminal = "{NIGHT_TERMINAL}"', 'terminal = "T1"'), amount_fen=CAP_FEN) == [
        ("watch", "decline", "shadow", "61")
    ]
    assert decide(RULES, amount_fen=CAP_FEN + 1)[:2] == [("cap", "decline", "enforce", "61"),
                                                         ("watch", "decline", "shadow", "61")]  # fmt: skip
    lists = Lists([("black", "code", "ab" * 32), ("grey", "terminal", "T1")])
    assert decide(RULES, lists) == [("black-code", "decline", "enforce", "62")]
    assert decide(RULES, Lists([("grey", "code", "ab" * 32)])) == [("grey-code", "review", "enforce", "62")]
    assert decide(RULES, Lists([("black", "terminal", "T9")])) == []
    since = dt.date(2026, 11, 4)  # 29 days before today: still new
    assert decide(RULES, merchant_since=since, amount_fen=NEW_MERCHANT_CAP_FEN + 1) == [
        ("new-merchant", "decline", "enforce", "61")
    ]
    assert decide(RULES, merchant_since=since - dt.timedelta(days=1), amount_fen=NEW_MERCHANT_CAP_FEN + 1) == []
    assert decide(RULES, merchant_since=since, amount_fen=NEW_MERCHANT_CAP_FEN) == []


def test_trading_hours_are_read_in_the_terminals_local_time_and_may_span_midnight():
    day = '[[rule]]\nid = "h"\nkind = "hours"\nopens = "08:00"\ncloses = "22:00"\n'
    night = '[[rule]]\nid = "h"\nkind = "hours"\nopens = "22:00"\ncloses = "02:00"\n'
    fired = {(label, t): bool(decide(text, local_time=dt.time(*t))) for label, text in (("day", day), ("night", night))
             for t in ((7, 59), (8, 0), (21, 59), (22, 0), (1, 59), (2, 0))}  # fmt: skip
    assert [t for (label, t), hit in fired.items() if label == "day" and hit] == [(7, 59), (22, 0), (1, 59), (2, 0)]
    assert [t for (label, t), hit in fired.items() if label == "night" and hit] == [(7, 59), (8, 0), (21, 59), (2, 0)]


def test_the_refund_ratio_is_judged_on_refunds_and_every_other_kind_on_purchases():
    import msgspec

    engine = Engine(msgspec.toml.decode(RULES.encode(), type=RuleSet))
    purchase, refund = facts(channel="ecny", amount_fen=CAP_FEN + 1), facts(channel="ecny", amount_fen=CAP_FEN + 1,
                                                                            refund=True)  # fmt: skip
    assert list(engine.scope(purchase).counted) == ["exact-count", "exact-amount", "exact-tills"]
    assert list(engine.scope(refund).counted) == ["refunds-over-sales"]
    assert [h.rule_id for h in engine.decide(purchase, Lists()).hits] == ["cap", "watch"]
    assert engine.decide(refund, Lists()).hits == ()  # a refund over the purchase cap is not a purchase
    assert list(engine.scope(facts(channel="wechat", refund=True)).counted) == []  # out of the rule's scope


def test_a_scope_of_several_fields_needs_them_all():
    text = '[[rule]]\nid = "s"\nkind = "amount"\nmax_fen = 1\nscope = { channel = "alipay", mcc = "5814" }\n'
    assert decide(text, channel="alipay") == [("s", "decline", "enforce", "61")]
    assert decide(text, channel="alipay", mcc="5411") == []
    assert decide(text, channel="wechat") == []


# -- against the real switch ------------------------------------------------------------------


@pytest.fixture(scope="module")
def risky(config_dir, database_url, simulators, tmp_path_factory):
    folder = tmp_path_factory.mktemp("risk")
    (folder / "rules.toml").write_text(RULES)
    edits = [
        (r'rules = "[^"]*"', f'rules = "{folder}/rules.toml"'),
        (r'(id = "898310048990002"\n)', rf"\1onboarded = {dt.date.today().isoformat()}\n"),
        (
            r'(\[\[terminals\]\]\nid = "T0000001"\n)',
            "".join(
                f'[[merchants]]\nid = "{merchant}"\nname = "Refund ratio test"\nchannels = ["ecny"]\n'
                f'channel_ids = {{ ecny = "ECNYSUB{merchant[-4:]}" }}\n\n'
                f'[[terminals]]\nid = "{terminal}"\nmerchant = "{merchant}"\n\n'
                for merchant, terminal in ((REFUNDING_MERCHANT, REFUNDING_TERMINAL), (HELD_MERCHANT, HELD_TERMINAL))
            )
            + r"\1",
        ),
    ]
    for switch in switch_with(config_dir, database_url, folder, "risk", edits):
        switch.rules = folder / "rules.toml"
        yield switch


def risk_cli(switch, database_url: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "switch.cli", "risk", *args, "--config", str(switch.config)],
        input=stdin, capture_output=True, text=True, timeout=60,
        env={**os.environ, "SWITCH_DATABASE_URL": database_url and run(runtime_url(database_url))},  # the switch's role
    )  # fmt: skip


async def decisions(database_url: str, rrn: str) -> list[tuple[str, str, str, str]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT rule_id, action, mode, code FROM risk_decision WHERE rrn = $1 ORDER BY rule_id", rrn
        )
    finally:
        await conn.close()
    return [tuple(r) for r in rows]


def pay(switch, request: dict) -> dict:
    async def one() -> dict:
        async with connected(switch) as client:
            return await client.request(request)

    return run(one())


def hits(switch) -> dict[tuple[str, str], float]:
    _, text = switch.get("/metrics")
    return {
        (s.labels["rule"], s.labels["mode"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "paysw_risk_hits_total"
    }


def assert_declined_and_never_sent(switch, database_url, simulators, request, answer, code, rule, channel):
    assert answer["39"] == code, answer
    row = run(journal_row(database_url, answer["37"]))
    assert (row["state"], row["response_code"], row["channel_code"]) == ("DECLINED", code, "RISK")
    assert rule in row["channel_message"]
    assert sim_audit(simulators, channel, row["out_trade_no"]) == []  # the channel never saw it
    assert (rule, "decline", "enforce", code) in run(decisions(database_url, answer["37"]))


def test_a_decline_by_each_kind_answers_its_code_is_journaled_with_its_rule_and_is_never_sent(
    risky, database_url, simulators
):
    before = hits(risky)
    over_cap = new_purchase("alipay", amount=CAP_FEN + 1)
    answer = pay(risky, over_cap)
    assert_declined_and_never_sent(risky, database_url, simulators, over_cap, answer, "61", "cap", "alipay")
    # The shadow rule fired too: journaled and counted, not applied.
    assert ("watch", "decline", "shadow", "61") in run(decisions(database_url, answer["37"]))

    at_night = {**new_purchase("wechat", terminal=NIGHT_TERMINAL), "12": "031500"}
    answer = pay(risky, at_night)
    assert_declined_and_never_sent(risky, database_url, simulators, at_night, answer, "57", "day-only", "wechat")
    by_day = {**new_purchase("wechat", terminal=NIGHT_TERMINAL), "12": "121500"}
    assert pay(risky, by_day)["39"] == "00"

    new = new_purchase("wechat", terminal="K0000001", merchant=NEW_MERCHANT, amount=NEW_MERCHANT_CAP_FEN + 1)
    answer = pay(risky, new)
    assert_declined_and_never_sent(risky, database_url, simulators, new, answer, "61", "new-merchant", "wechat")
    after = hits(risky)
    for rule in ("cap", "day-only", "new-merchant"):
        assert after[(rule, "enforce")] - before.get((rule, "enforce"), 0) == 1, rule


def test_a_shadow_rule_is_journaled_and_counted_and_the_payment_goes_through(risky, database_url, simulators):
    before = hits(risky).get(("watch", "shadow"), 0)
    watched = new_purchase("unionpay", amount=WATCH_FEN + 1)
    answer = pay(risky, watched)
    assert answer["39"] == "00"
    assert run(decisions(database_url, answer["37"])) == [("watch", "decline", "shadow", "61")]
    assert run(journal_row(database_url, answer["37"]))["state"] == "APPROVED"
    assert hits(risky)[("watch", "shadow")] == before + 1
    quiet = pay(risky, new_purchase("unionpay", amount=WATCH_FEN))
    assert quiet["39"] == "00" and run(decisions(database_url, quiet["37"])) == []


def wait_for(check, timeout: float = 10.0) -> None:
    """Until ``check()``: a change reaches the front ends by PostgreSQL's NOTIFY, in about a second."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not applied in time"
        time.sleep(0.2)


def test_listing_a_code_declines_it_at_once_and_unlisting_lets_it_pay(risky, database_url, simulators):
    first = new_purchase("ecny")
    assert pay(risky, first)["39"] == "00"
    code = first["2"]
    added = risk_cli(risky, database_url, "list", "add", "--of", "code", "--code-stdin", "--reason", "stolen",
                     stdin=code + "\n")  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert code not in added.stdout + added.stderr  # the code itself is never shown
    shown = risk_cli(risky, database_url, "list", "show")
    assert "stolen" in shown.stdout and code not in shown.stdout

    def next_one() -> dict:
        return {**new_purchase("ecny"), "2": code}

    answers: list[dict] = []
    wait_for(lambda: answers.append(pay(risky, next_one())) or answers[-1]["39"] == "62")
    again = next_one()
    assert_declined_and_never_sent(risky, database_url, simulators, again, pay(risky, again), "62", "black-code",
                                   "ecny")  # fmt: skip

    removed = risk_cli(risky, database_url, "list", "remove", "--of", "code", "--code-stdin", "--reason", "found",
                       stdin=code + "\n")  # fmt: skip
    assert removed.returncode == 0, removed.stderr
    wait_for(lambda: pay(risky, next_one())["39"] == "00")


def test_a_grey_code_is_approved_and_flagged_for_review(risky, database_url):
    first = new_purchase("inbank")
    fingerprint = None
    answer = pay(risky, first)
    assert answer["39"] == "00"

    async def pan_hash() -> str:
        conn = await asyncpg.connect(database_url)
        try:
            return (await conn.fetchval("SELECT pan_hash FROM txn WHERE rrn = $1", answer["37"])).hex()
        finally:
            await conn.close()

    fingerprint = run(pan_hash())  # as an analyst finds it in the journal
    added = risk_cli(risky, database_url, "list", "add", "--colour", "grey", "--of", "code", "--value", fingerprint,
                     "--reason", "chargebacks")  # fmt: skip
    assert added.returncode == 0, added.stderr
    flagged: list[dict] = []
    wait_for(lambda: flagged.append(pay(risky, {**new_purchase("inbank"), "2": first["2"]})) or bool(
        run(decisions(database_url, flagged[-1]["37"]))))  # fmt: skip
    assert flagged[-1]["39"] == "00"
    assert run(decisions(database_url, flagged[-1]["37"])) == [("grey-code", "review", "enforce", "62")]


def test_a_blacklisted_terminal_is_declined(risky, database_url, simulators):
    terminal = "T0000003"
    added = risk_cli(risky, database_url, "list", "add", "--of", "terminal", "--value", terminal, "--reason", "stolen")
    assert added.returncode == 0, added.stderr
    try:
        wait_for(lambda: pay(risky, new_purchase("wechat", terminal=terminal))["39"] == "62")
        assert pay(risky, new_purchase("wechat", terminal="T0000002"))["39"] == "00"
    finally:
        risk_cli(risky, database_url, "list", "remove", "--of", "terminal", "--value", terminal, "--reason", "back")
    wait_for(lambda: pay(risky, new_purchase("wechat", terminal=terminal))["39"] == "00")


def test_a_reload_notified_and_under_way_when_risk_stops_applies_nothing_after(database_url):
    """``paysw risk list`` notifies every front end; a reload that notice began, still reading
    the rules when its front end stops, ends with it: it reads no lists and applies nothing after
    (the journal's pools close right after). It ran on, unheld, before."""

    async def scenario():
        results: list[str] = []
        reading, release = asyncio.Event(), asyncio.Event()

        async def read_rules() -> None:
            reading.set()
            await release.wait()

        risk = Risk(on_reload=lambda result, rules: results.append(result))
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
            await risk.start(pool, database_url, read_rules)
            await pool.execute(f"NOTIFY {LISTS_CHANNEL}")  # as `paysw risk list` tells every front end
            await asyncio.wait_for(reading.wait(), 10)
            await risk.stop()
            release.set()
            await asyncio.sleep(0.5)
            assert results == []
        finally:
            await pool.close()

    run(scenario())


def test_a_reload_takes_a_valid_file_and_leaves_the_running_rules_for_an_invalid_one(risky, database_url):
    reloads = lambda result: next(  # noqa: E731
        (s.value for f in text_string_to_metric_families(risky.get("/metrics")[1]) for s in f.samples
         if s.name == "paysw_risk_reloads_total" and s.labels["result"] == result), 0.0)  # fmt: skip
    original = risky.rules.read_text()
    try:
        risky.rules.write_text(original.replace("max_fen = 500000", "max_fen = oops"))
        invalid = reloads("invalid")
        assert risk_cli(risky, database_url, "reload").returncode == 0
        wait_for(lambda: reloads("invalid") == invalid + 1)
        assert pay(risky, new_purchase("wechat", amount=CAP_FEN + 1))["39"] == "61"  # the running rules stay
        assert pay(risky, new_purchase("wechat", amount=CAP_FEN // 2))["39"] == "00"

        risky.rules.write_text(original.replace(f"max_fen = {CAP_FEN}", f"max_fen = {CAP_FEN // 4}"))
        ok = reloads("ok")
        assert risk_cli(risky, database_url, "reload").returncode == 0
        wait_for(lambda: reloads("ok") == ok + 1)
        assert pay(risky, new_purchase("wechat", amount=CAP_FEN // 2))["39"] == "61"

        # SIGHUP does the same, as nginx's does.
        risky.rules.write_text(original.replace(f"max_fen = {CAP_FEN}", f"max_fen = {CAP_FEN // 8}"))
        ok = reloads("ok")
        risky.process.send_signal(signal.SIGHUP)
        wait_for(lambda: reloads("ok") == ok + 1)
        assert pay(risky, new_purchase("wechat", amount=CAP_FEN // 4))["39"] == "61"
        assert risky.process.poll() is None
    finally:
        risky.rules.write_text(original)
        risk_cli(risky, database_url, "reload")


def test_a_switch_with_an_invalid_rules_file_does_not_start_and_says_why(risky, tmp_path):
    bad = tmp_path / "rules.toml"
    bad.write_text('[[rule]]\nid = "x"\nkind = "amount"\n')
    config = tmp_path / "switch.toml"
    config.write_text(re.sub(r'rules = "[^"]*"', f'rules = "{bad}"', risky.config.read_text()))
    checked = risk_cli(type("S", (), {"config": config}), "", "check")
    assert checked.returncode == 2 and "missing required field `max_fen`" in checked.stderr
    started = subprocess.run(
        [sys.executable, "-m", "switch.cli", "run", "--config", str(config), "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "SWITCH_DATABASE_URL": "postgresql://nowhere/x"},
    )  # fmt: skip
    assert started.returncode == 2, started.stderr[-2000:]
    assert "$.risk.rules" in started.stderr and "missing required field `max_fen`" in started.stderr


# -- the report -------------------------------------------------------------------------------


class Made(NamedTuple):
    """A transaction the report test writes, and the rules that fired on it."""

    tx_date: dt.date
    terminal: str
    rrn: str
    txn_type: str
    merchant: str
    amount_fen: int
    code: str  # the fingerprint, hex
    state: str
    at: dt.datetime
    fired: list[tuple[str, str, str]]  # (rule, action, mode)


def made_day(day: dt.date, rng) -> list[Made]:
    """Transactions around the edges of the Beijing day ``day``, some with rules fired."""
    start = dt.datetime.combine(day, dt.time(), dt.timezone(dt.timedelta(hours=8)))
    moments = [start - dt.timedelta(seconds=1), start, start + dt.timedelta(hours=12), start + dt.timedelta(days=1)]
    rules = [("cap", "decline", "enforce"), ("watch", "decline", "shadow"), ("grey", "review", "enforce")]
    made = []
    for n in range(300):
        at = rng.choice(moments) + dt.timedelta(seconds=rng.randrange(0, 3600) if rng.random() < 0.5 else 0)
        made.append(Made(
            at.astimezone(dt.UTC).date(), rng.choice(["T1", "T2"]), f"{n:012d}",
            rng.choice(["purchase", "purchase", "refund"]), rng.choice(["M1", "M2", "M3"]), rng.randrange(1, 10_000),
            f"{rng.randrange(4):064x}",
            rng.choice(["APPROVED", "APPROVED", "DECLINED"]), at, rng.sample(rules, rng.randrange(0, 3)),
        ))  # fmt: skip
    return made


async def write_made(url: str, day: dt.date, made: list[Made]) -> None:
    from switch.journal.schema import ensure_partitions, migrate

    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
        await ensure_partitions(conn, day - dt.timedelta(days=2), day + dt.timedelta(days=2))
        await conn.executemany(
            "INSERT INTO txn (tx_date, terminal_id, stan, transmitted, rrn, txn_type, mti, processing_code, "
            "merchant_id, amount_fen, currency, local_time, local_date, entry_mode, pan_masked, pan_hash, channel, "
            "out_trade_no, request_hash, state, received_at) VALUES ($1, $2, right($3, 6), $3, $3, $4, '0200', "
            "'000000', $5, $6, '156', '120000', '1130', '031', '622202******1234', decode($7, 'hex'), 'wechat', $3, "
            "'\\x00', 'RECEIVED', $8)",
            [(m.tx_date, m.terminal, m.rrn, m.txn_type, m.merchant, m.amount_fen, m.code, m.at) for m in made],
        )
        for m in made:  # through the state machine's guard, as the journal moves them
            await conn.execute("UPDATE txn SET state = $2 WHERE rrn = $1", m.rrn, m.state)
        await conn.executemany(
            "INSERT INTO risk_decision (tx_date, rrn, rule_id, action, mode, code, merchant_id, terminal_id, "
            "channel, amount_fen, decided_at) VALUES ($1, $2, $3, $4, $5, '61', $6, $7, 'wechat', $8, $9)",
            [(m.tx_date, m.rrn, *rule, m.merchant, m.terminal, m.amount_fen, m.at) for m in made for rule in m.fired],
        )
    finally:
        await conn.close()


def test_the_day_report_counts_every_decision_of_that_beijing_day_and_no_other(database_url, tmp_path):
    """Decisions and transactions written straight into a database of the test's own, around the
    edges of a Beijing day, against figures counted here from the same list."""
    import random

    from risk.report import day_report, write_csv
    from tests.conftest import fresh_database

    day = dt.date(2026, 11, 30)
    made = made_day(day, random.Random(7))

    async def scenario() -> dict:
        url = await fresh_database(database_url, "paysw_risk_report")
        await write_made(url, day, made)
        conn = await asyncpg.connect(url)
        try:
            return await day_report(conn, day)
        finally:
            await conn.close()

    report = run(scenario())
    start = dt.datetime.combine(day, dt.time(), dt.timezone(dt.timedelta(hours=8)))
    inside = [m for m in made if start <= m.at < start + dt.timedelta(days=1)]
    expected: dict[tuple[str, str, str], tuple[int, int]] = {}
    for m in inside:
        for rule in m.fired:
            hits_before, fen = expected.get(rule, (0, 0))
            expected[rule] = (hits_before + 1, fen + m.amount_fen)
    assert {(r["rule_id"], r["action"], r["mode"]): (r["hits"], r["amount_fen"]) for r in report["rules"]} == expected
    declined = [m for m in inside if ("cap", "decline", "enforce") in m.fired]
    assert {r["merchant_id"]: r["declines"] for r in report["merchants"]} == Counter(m.merchant for m in declined)
    assert {r["terminal_id"]: r["declines"] for r in report["terminals"]} == Counter(m.terminal for m in declined)
    assert {r["code_fingerprint"]: r["declines"] for r in report["codes"]} == Counter(m.code for m in declined)
    approved = [m for m in inside if m.state == "APPROVED"]
    sums = {
        merchant: (sum(m.amount_fen for m in approved if m.merchant == merchant and m.txn_type == "purchase"),
                   sum(m.amount_fen for m in approved if m.merchant == merchant and m.txn_type == "refund"))
        for merchant in {m.merchant for m in approved}
    }  # fmt: skip
    assert {r["merchant_id"]: (r["sales_fen"], r["refunds_fen"]) for r in report["refund_ratios"]} == sums
    written = write_csv(report, tmp_path, day)
    assert sorted(p.name for p in written) == sorted(f"risk-{day}-{name}.csv" for name in report)
    assert (tmp_path / f"risk-{day}-rules.csv").read_text().splitlines()[0] == "rule_id,action,mode,hits,amount_fen"


def test_the_report_command_prints_the_days_rules_and_writes_csv(risky, database_url, tmp_path):
    """The command end to end, its CSV beside its print."""
    assert pay(risky, new_purchase("wechat", amount=CAP_FEN + 1))["39"] == "61"  # cap, and watch in shadow
    today = dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).date()
    done = risk_cli(risky, database_url, "report", "--date", today.isoformat(), "--csv", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert re.search(r"^  cap\s+decline\s+enforce\s+\d+ hits", done.stdout, re.M), done.stdout
    assert re.search(r"^  watch\s+decline\s+shadow\s+\d+ hits", done.stdout, re.M), done.stdout
    rules = (tmp_path / f"risk-{today}-rules.csv").read_text()
    assert "cap,decline,enforce," in rules and "watch,decline,shadow," in rules


# -- counted rules: the risk actors -----------------------------------------------------------


def same_code(channel: str, code: str, terminal: str = "T0000001", merchant: str = "898310048990001") -> dict:
    return {**new_purchase(channel, terminal=terminal, merchant=merchant), "2": code}


def test_a_cumulative_count_declines_the_third_payment_and_a_reversal_gives_one_back(risky, database_url, simulators):
    first = new_purchase("unionpay")
    code = first["2"]
    assert pay(risky, first)["39"] == "00"
    second = same_code("unionpay", code)
    assert pay(risky, second)["39"] == "00"
    third = same_code("unionpay", code)
    answer = pay(risky, third)
    assert_declined_and_never_sent(risky, database_url, simulators, third, answer, "65", "code-twice-an-hour",
                                   "unionpay")  # fmt: skip
    declined = new_purchase("unionpay", "51")  # refused by the channel: never counted
    assert [pay(risky, same_code("unionpay", declined["2"]))["39"] for _ in range(3)] == ["51"] * 3

    async def reverse() -> dict:
        async with connected(risky) as client:
            return await client.request(reversal(second, STANS.next(second["41"])))

    assert run(reverse())["39"] == "00"
    # The resolver cancels it at the channel; the journal's move to REVERSED gives the count back.
    wait_for(lambda: pay(risky, same_code("unionpay", code))["39"] == "00", timeout=30)
    assert pay(risky, same_code("unionpay", code))["39"] == "65"


def test_velocity_declines_a_code_at_a_second_merchant(risky, database_url, simulators):
    first = new_purchase("alipay")
    assert pay(risky, first)["39"] == "00"
    assert pay(risky, same_code("alipay", first["2"], terminal="T0000002"))["39"] == "00"  # the same merchant
    elsewhere = same_code("alipay", first["2"], terminal="K0000001", merchant=NEW_MERCHANT)
    answer = pay(risky, elsewhere)
    assert_declined_and_never_sent(risky, database_url, simulators, elsewhere, answer, "65", "code-at-one-merchant",
                                   "alipay")  # fmt: skip


def paid_at(switch, merchant: str, terminal: str) -> list[tuple[dict, str]]:
    """Three e-CNY purchases of 4,000 yuan at ``merchant`` (request, RRN): refunds of two stay
    within the refund ratio's floor, of the third pass it."""
    paid = []
    for _ in range(3):
        purchase = new_purchase("ecny", terminal=terminal, merchant=merchant, amount=400_000)
        answer = pay(switch, purchase)
        assert answer["39"] == "00", answer
        paid.append((purchase, answer["37"]))
    return paid


def test_a_refund_past_the_merchants_refund_ratio_is_declined_never_sent_and_its_amount_released(
    risky, database_url, simulators
):
    """Each refund adds to the merchant's refunds of the day (told to the risk actors as the journal
    approves it); the one that would take them past the ratio is declined 61 before its channel."""
    paid = paid_at(risky, REFUNDING_MERCHANT, REFUNDING_TERMINAL)
    last_order = run(journal_row(database_url, paid[2][1]))["out_trade_no"]
    calls_before = len(sim_audit(simulators, "ecny", last_order))
    answers = [pay(risky, refund(p, rrn, 400_000, STANS.next(p["41"]))) for p, rrn in paid]
    assert [a["39"] for a in answers] == ["00", "00", "61"], answers
    declined = run(journal_row(database_url, answers[2]["37"]))
    assert (declined["txn_type"], declined["state"], declined["channel_code"]) == ("refund", "DECLINED", "RISK")
    assert run(decisions(database_url, answers[2]["37"])) == [("refunds-over-sales", "decline", "enforce", "61")]
    assert len(sim_audit(simulators, "ecny", last_order)) == calls_before  # the refund never reached e-CNY
    purchase = run(journal_row(database_url, paid[2][1]))
    assert (purchase["reserved_fen"], purchase["refunded_fen"]) == (0, 0)  # what the refund reserved, released
    assert run(journal_row(database_url, paid[0][1]))["refunded_fen"] == 400_000
    # A restarted risk actor reads the day's refunds back from the journal with its sales.
    risk_actor_process(risky).kill()
    again: list[str] = []
    once_more = lambda: refund(paid[2][0], paid[2][1], 400_000, STANS.next(paid[2][0]["41"]))  # noqa: E731
    wait_for(lambda: again.append(pay(risky, once_more())["39"]) or again[-1] != "91", timeout=60)
    assert again[-1] == "61", again


def test_a_declined_refund_left_open_by_its_front_end_is_recorded_by_the_resolver_never_sent(
    risky, database_url, simulators
):
    """A front end of the previous release (a rolling upgrade) that journaled a refund's enforced
    decline after its write-ahead, then died or lost the journal before recording the outcome,
    leaves the refund RECEIVED with what it reserved. The resolver that takes it up records the
    decline and releases the reservation; it never sends the refund. (Front ends now write a
    declined refund DECLINED with its row.)"""
    purchase = new_purchase("alipay")
    paid = pay(risky, purchase)
    assert paid["39"] == "00", paid
    order = run(journal_row(database_url, paid["37"]))["out_trade_no"]
    calls_before = len(sim_audit(simulators, "alipay", order))

    async def left_open() -> str:  # the journal as that front end left it
        journal = await Journal.open(database_url, pool_size=2, max_batch=8)
        try:
            original = await journal.original(paid["37"], purchase["42"])
            assert original is not None
            now = dt.datetime.now(dt.UTC)
            rrn = await journal.next_rrn()
            stan = STANS.next(original.terminal_id)
            # Due to the resolvers a little later, as a front end's deadline would make it: not
            # between the write-ahead and the decision (one taken then has no decline to record).
            due = now + dt.timedelta(seconds=2)
            txn = NewTxn(
                now.date(), original.terminal_id, stan, now.strftime("%m%d%H%M%S"), rrn, "refund", "0200",
                "200000", original.merchant_id, 500, "156", now.strftime("%H%M%S"), now.strftime("%m%d"), "031",
                original.pan_masked, original.pan_hash, "alipay", f"{now:%Y%m%d}{rrn}", b"r", now, due,
            )  # fmt: skip
            assert await journal.write_ahead_undo(txn, original, refund_days=365) is None
            assert (await journal.original(paid["37"], purchase["42"])).reserved_fen == 500
            await journal.record_decision(txn, [Hit("refunds-over-sales", "decline", "enforce", "61")])
            return rrn
        finally:
            await journal.close()

    rrn = run(left_open())
    row = run(wait_for_state(database_url, rrn, FINAL, timeout=30))
    assert (row["state"], row["response_code"], row["channel_code"]) == ("DECLINED", "61", "RISK")
    assert len(sim_audit(simulators, "alipay", order)) == calls_before  # never sent to Alipay
    bought = run(journal_row(database_url, paid["37"]))
    assert (bought["state"], bought["reserved_fen"], bought["refunded_fen"]) == ("APPROVED", 0, 0)


def test_a_refund_declined_while_the_journal_holds_its_decision_up_is_never_sent(risky, database_url, simulators):
    """A refund's risk decision is written with its row, in one transaction. The journal here holds
    the decisions' table locked past the refund's deadline and the resolvers' grace, as a stalled
    journal (or front end) would: no resolver finds the refund written without its decline, to
    send it; it is declined once the journal lets go, and never reaches its channel."""
    paid = paid_at(risky, HELD_MERCHANT, HELD_TERMINAL)
    assert [pay(risky, refund(p, rrn, 400_000, STANS.next(p["41"])))["39"] for p, rrn in paid[:2]] == ["00", "00"]
    purchase, rrn = paid[2]
    order = run(journal_row(database_url, rrn))["out_trade_no"]
    calls_before = len(sim_audit(simulators, "ecny", order))

    async def held_up() -> dict:
        conn = await asyncpg.connect(database_url)
        try:
            lock = conn.transaction()
            await lock.start()
            await conn.execute("LOCK TABLE risk_decision IN EXCLUSIVE MODE")  # reads go on; writes wait
            async with connected(risky) as client:
                again = refund(purchase, rrn, 400_000, STANS.next(purchase["41"]))
                asked = asyncio.create_task(client.request(again, timeout=90))
                await asyncio.sleep(DEADLINE_MS / 1000 + ORPHAN_GRACE_S + 3)  # past both, and the resolvers' turn
                await lock.commit()  # the journal takes writes again
                return await asked
        finally:
            await conn.close()

    answer = run(held_up())
    assert answer["39"] == "61", answer
    row = run(wait_for_state(database_url, answer["37"], FINAL, timeout=30))
    assert (row["txn_type"], row["state"], row["channel_code"]) == ("refund", "DECLINED", "RISK")
    assert run(decisions(database_url, answer["37"])) == [("refunds-over-sales", "decline", "enforce", "61")]
    assert len(sim_audit(simulators, "ecny", order)) == calls_before  # the refund never reached e-CNY
    bought = run(journal_row(database_url, rrn))
    assert (bought["reserved_fen"], bought["refunded_fen"]) == (0, 0)


def test_a_move_made_by_another_process_on_the_journal_counts_within_a_second(risky, config_dir, database_url):
    """Reconciliation, or another site's resolver, moves rows without telling this switch's risk
    actors: they read such moves from the journal's log of moves."""
    first = new_purchase("unionpay")
    code = first["2"]
    paid = [pay(risky, p) for p in (first, same_code("unionpay", code))]
    assert [a["39"] for a in paid] == ["00", "00"]
    assert pay(risky, same_code("unionpay", code))["39"] == "65"

    async def reverse_behind_its_back() -> None:
        # As a writer that tells nobody would: the money returned at the channel (so the journal
        # still agrees with the channel's ledger), then the row moved.
        row = await journal_row(database_url, paid[1]["37"])
        worker = channel_worker(config_dir, "unionpay")
        try:
            cancel = ChannelRequest(
                1,
                CANCEL,
                row["out_trade_no"],
                row["amount_fen"],
                "",
                "",
                row["terminal_id"],
                time.time() + 10,
                row["received_at"].timestamp(),
                row["channel_txn_id"],
            )
            assert (await worker.call(cancel)).outcome is Outcome.APPROVED
        finally:
            await worker.close()
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute("UPDATE txn SET reversal_requested_at = now(), state = 'REVERSED' WHERE rrn = $1",
                               paid[1]["37"])  # fmt: skip
        finally:
            await conn.close()

    run(reverse_behind_its_back())
    started = time.monotonic()
    wait_for(lambda: pay(risky, same_code("unionpay", code))["39"] == "00", timeout=10)
    assert time.monotonic() - started < 4 * FOLLOW_EVERY_S + 1


async def backdate_approval(database_url: str, rrn: str, by: dt.timedelta) -> None:
    """Move a payment's approval back in the journal's log of moves (which refuses any change: this
    test's stand-in for time passing, as the database's superuser, with the triggers off), and
    touch its row now."""
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute(
                "UPDATE txn_move SET moved_at = moved_at - $2::interval WHERE rrn = $1 AND to_state = 'APPROVED'",
                rrn,
                by,
            )
        await conn.execute("UPDATE txn SET reserved_fen = reserved_fen WHERE rrn = $1", rrn)
    finally:
        await conn.close()


def risk_actor_process(switch) -> psutil.Process:
    found = [p for p in psutil.Process(switch.process.pid).children(recursive=True)
             if "RiskActor" in " ".join(p.cmdline())]  # fmt: skip
    assert len(found) == 1, found
    return found[0]


def may_raise_priority() -> bool:
    """Whether this host lets a process raise its CPU priority: CAP_SYS_NICE (root has it)."""
    status = Path("/proc/self/status").read_text()
    return bool(int(re.search(r"CapEff:\s*([0-9a-f]+)", status).group(1), 16) >> 23 & 1)


def test_every_thread_of_a_risk_actor_runs_at_the_configured_cpu_priority(risky):
    """Each payment waits for a shard's answer, and a shard is idle most of the time: on a busy
    host it must not wait for a CPU behind busier processes. Every thread (Linux keeps a priority
    per thread) runs at ``[risk] cpu_nice`` (-10 by default); a host that does not allow it is told."""
    actor = risk_actor_process(risky)
    if not may_raise_priority():
        wait_for(lambda: "raising it needs CAP_SYS_NICE" in risky.log_path.read_text())
        return
    priorities = lambda: {os.getpriority(os.PRIO_PROCESS, t.id) for t in actor.threads()}  # noqa: E731
    wait_for(lambda: priorities() == {-10})
    assert len(actor.threads()) > 1  # Ray's threads as well as the one that answers


def test_a_restarted_risk_actor_rebuilds_its_counts_from_the_journal_and_fails_as_configured(risky, database_url):
    """Closed: while the counters are gone, payments under counted rules are declined 91; the
    first one judged again is judged on the counts rebuilt from the journal, each payment at the
    time of its approval. Open: let through."""
    first = new_purchase("unionpay")
    code = first["2"]
    assert [pay(risky, p)["39"] for p in (first, same_code("unionpay", code))] == ["00", "00"]
    # Another code's first approval two hours old, its row touched since (as a refund's reservation
    # touches it): out of the rule's hour once rebuilt.
    second = new_purchase("unionpay")
    paid = [pay(risky, p) for p in (second, same_code("unionpay", second["2"]))]
    assert [a["39"] for a in paid] == ["00", "00"]
    run(backdate_approval(database_url, paid[0]["37"], dt.timedelta(hours=2)))
    unreachable = lambda policy: next(  # noqa: E731
        (s.value for f in text_string_to_metric_families(risky.get("/metrics")[1]) for s in f.samples
         if s.name == "paysw_risk_unreachable_total" and s.labels["policy"] == policy), 0.0)  # fmt: skip
    closed = unreachable("closed")
    old = risk_actor_process(risky)
    old.kill()
    answers = []
    wait_for(lambda: answers.append(pay(risky, same_code("unionpay", code))["39"]) or answers[-1] != "91", timeout=60)
    assert answers[-1] == "65", answers  # the two approvals, counted again from the journal
    assert pay(risky, same_code("unionpay", second["2"]))["39"] == "00"  # one in the hour, by approval time
    assert unreachable("closed") >= closed + answers.count("91")
    assert risk_actor_process(risky).pid != old.pid

    original = risky.rules.read_text()
    try:
        risky.rules.write_text(original.replace('fail = "closed"', 'fail = "open"'))
        assert risk_cli(risky, database_url, "reload").returncode == 0
        time.sleep(1.5)
        opened = unreachable("open")
        risk_actor_process(risky).kill()
        let_through = []
        wait_for(lambda: let_through.append(pay(risky, new_purchase("unionpay"))["39"]) or unreachable("open") > opened,
                 timeout=30)  # fmt: skip
        assert set(let_through) == {"00"}, let_through
    finally:
        risky.rules.write_text(original)
        risk_cli(risky, database_url, "reload")
    wait_for(lambda: pay(risky, same_code("unionpay", code))["39"] == "65", timeout=60)


@pytest.fixture(scope="module")
def two_front_ends(risky, config_dir, database_url, simulators, tmp_path_factory):
    folder = tmp_path_factory.mktemp("risk2")
    (folder / "rules.toml").write_text(RULES)
    edits = [(r'rules = "[^"]*"', f'rules = "{folder}/rules.toml"')]
    yield from switch_with(config_dir, database_url, folder, "risk2", edits, workers=2)


def both_workers_pay(switch) -> bool:
    """Whether both workers are linked again: a run of fresh codes, each on a connection of its own,
    all paid, and each worker took some of them (the kernel picks a worker for each connection, so a
    run all on one worker says nothing of the other's link)."""
    before = requests_by_worker(switch.get("/metrics")[1])
    answers = {pay(switch, new_purchase("ecny"))["39"] for _ in range(8)}
    after = requests_by_worker(switch.get("/metrics")[1])
    return answers == {"00"} and all(after[worker] > before[worker] for worker in ("0", "1"))


class Sale(NamedTuple):
    code: str
    terminal: str
    amount: int


def expected_code(approved: list[Sale], sale: Sale) -> str | None:
    """The exactness rules, computed here from what the test saw approved: the first that fires."""
    mine = [a for a in approved if a.code == sale.code]  # all inside every window: the test is short
    if len(mine) + 1 > EXACT_COUNT:
        return "65"
    if sum(a.amount for a in mine) + sale.amount > EXACT_FEN:
        return "61"
    if len({a.terminal for a in mine} | {sale.terminal}) > EXACT_TILLS:
        return "65"
    return None


def test_every_decision_across_two_front_ends_and_a_risk_actor_restart_is_the_models(
    two_front_ends, database_url, simulators
):
    """A known random sequence of e-CNY purchases on a few codes, each on a connection of its own
    (the kernel spreads them over the two workers), two reversals, and the risk actor killed
    halfway: every answer is what the model computes from the approvals the test saw, before and
    after the restart (the counts rebuilt from the journal), a code the channel declines never
    counting. Answers 91 while the counters are away (fail closed) are not decisions."""
    rng = random.Random(20)
    codes = [new_purchase("ecny")["2"] for _ in range(5)] + [new_purchase("ecny", "51")["2"]]
    approved: list[tuple[Sale, dict, str]] = []  # with its request and RRN
    answers: Counter[str] = Counter()

    def one(sale: Sale) -> None:
        request = {**new_purchase("ecny", terminal=sale.terminal, amount=sale.amount), "2": sale.code}
        want = expected_code([a for a, _, _ in approved], sale) or ("51" if sale.code == codes[-1] else "00")
        answer = pay(two_front_ends, request)
        assert answer["39"] == want, (sale, answer["39"], run(decisions(database_url, answer["37"])),
                                      [a for a, _, _ in approved if a.code == sale.code])  # fmt: skip
        answers[want] += 1
        if want == "00":
            approved.append((sale, request, answer["37"]))

    def sale() -> Sale:
        return Sale(rng.choice(codes), rng.choice(("T0000001", "T0000002", "T0000003")),
                    rng.choice((150_000, 250_000, 400_000)))  # fmt: skip

    for step in range(40):
        if step in (12, 28) and approved:  # a reversal gives its count back once the journal says so
            _, request, rrn = approved.pop(rng.randrange(len(approved)))
            assert pay(two_front_ends, reversal(request, STANS.next(request["41"])))["39"] == "00"
            run(wait_for_state(database_url, rrn, {"REVERSED"}, timeout=30))
            # Any resolver on the journal may carry it out; one of another switch (the module's
            # other) tells its own risk actors, and these read it from the journal's log.
            time.sleep(2 * FOLLOW_EVERY_S)
        if step == 20:  # the shard killed: Ray starts it again, and it rebuilds from the journal
            old = risk_actor_process(two_front_ends)
            old.kill()
            old.wait(10)
            wait_for(lambda: both_workers_pay(two_front_ends), timeout=60)
        one(sale())
    assert answers["00"] >= 5 and answers["65"] + answers["61"] >= 5 and answers["51"] >= 1, answers
    served = requests_by_worker(two_front_ends.get("/metrics")[1])
    assert sorted(served) == ["0", "1"] and all(served.values()), served  # both workers judged some of them


def test_an_alert_rule_is_journaled_and_counted_and_the_payment_goes_through(risky, database_url):
    answer = pay(risky, new_purchase("inbank", amount=300_001))
    assert answer["39"] == "00"
    assert run(decisions(database_url, answer["37"])) == [("big-inbank", "alert", "enforce", "61"),
                                                          ("watch", "decline", "shadow", "61")]  # fmt: skip
    assert hits(risky)[("big-inbank", "enforce")] >= 1


def test_following_the_journal_while_days_are_made_deadlocks_with_neither(database_url):
    """A risk shard's follow reads the moves (txn_move), then the payments (txn); making days
    locks txn, then txn_move (migration 30). A day made between follow's two reads deadlocked
    with it, and PostgreSQL aborted one (helper 76 reproduced it). Follow takes txn first now."""

    async def scenario() -> list[str]:
        url = await fresh_database(database_url, "paysw_follow_days")
        owner = await asyncpg.connect(url)
        await migrate(owner)
        today = await owner.fetchval("SELECT current_date")
        await ensure_partitions(owner, today - dt.timedelta(days=2), today + dt.timedelta(days=1))
        later = today + dt.timedelta(days=40)
        follower, maker = await follow_connection(url), await asyncpg.connect(url)
        try:
            since = Since(*await follower.fetchrow(_SNAPSHOT_SQL))
            await owner.execute("SET session_replication_role = replica")  # a move of the test's making
            await owner.execute("INSERT INTO txn_move (tx_date, rrn, to_state) VALUES (current_date, 'F1', 'APPROVED')")
            await owner.execute("RESET session_replication_role")
            async with owner.transaction():
                await owner.execute("LOCK TABLE ONLY txn IN ROW EXCLUSIVE MODE")  # a write under way
                making = asyncio.ensure_future(ensure_partitions(maker, later, later))
                await waits_for_a_lock(owner, maker.get_server_pid())
                following = asyncio.ensure_future(follow(follower, Counters(), since, 0, 1))
                await waits_for_a_lock(owner, follower.get_server_pid())
            await following
            return await making
        finally:
            await follower.close()
            await maker.close()
            await owner.close()

    later = dt.date.today() + dt.timedelta(days=40)
    assert run(scenario()) == [f"txn_{later:%Y%m%d}", f"txn_move_{later:%Y%m%d}"]


def test_following_the_journal_reads_only_the_moves_since_its_last_look(database_url):
    """A risk shard follows the journal every half second on one connection: however often its
    statement has run, it is planned for the snapshot it is given, and a day of approvals is not
    read again, only the moves since (a cached generic plan, on a partition without statistics,
    read them all every time)."""

    async def scenario() -> tuple[list[int], tuple[int, int], int]:
        url = await fresh_database(database_url, "paysw_follow")
        conn = await asyncpg.connect(url)
        try:
            await migrate(conn)
            today = await conn.fetchval("SELECT current_date")
            await ensure_partitions(conn, today - dt.timedelta(days=2), today + dt.timedelta(days=1))
            # Moves of the test's own making, which the journal refuses from anything but its triggers:
            # this connection writes them with the triggers off (as the database's superuser).
            await conn.execute("SET session_replication_role = replica")
            approvals = "INSERT INTO txn_move (tx_date, rrn, to_state) SELECT current_date, $1 || g, 'APPROVED' "
            approvals += "FROM generate_series(1, $2) g"
            await conn.execute(approvals, "day-", 5_000)  # the day so far
            follower = await follow_connection(url)
            (since,) = await follower.fetchrow("SELECT pg_snapshot_xmax(s) FROM pg_current_snapshot() s")
            await conn.execute(approvals, "new-", 3)
            # As follow() runs it (asyncpg prepares it once), past the five runs PostgreSQL plans
            # for their parameters before it may cache a generic plan.
            found = [len(await follower.fetch(_MOVES_SQL, since, [])) for _ in range(8)]
            plans = await follower.fetchrow(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement = $1", _MOVES_SQL
            )
            await follower.execute(f"PREPARE moves(xid8, xid8[]) AS {_MOVES_SQL}")
            run_it = f"EXECUTE moves('{since}', '{{}}')"
            for _ in range(6):
                await follower.fetch(run_it)
            plan = json.loads(await follower.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {run_it}"))
            await follower.close()
        finally:
            await conn.close()

        def rows_read(node: dict) -> int:  # by the scans at the leaves, whatever their kind
            if "Plans" in node:
                return sum(rows_read(child) for child in node["Plans"])
            return node["Actual Rows"] + node.get("Rows Removed by Filter", 0)

        return found, tuple(plans), rows_read(plan[0]["Plan"])

    found, (generic, custom), read = run(scenario())
    assert found == [3] * 8
    assert generic == 0 and custom == 8, f"{generic} generic and {custom} custom plans of 8 runs"
    assert read <= 10, f"{read} rows read for 3 new moves: the day was read again"
