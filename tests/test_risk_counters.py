"""The risk counters (``risk.counters``) against a model computed here by brute force: every check
of a random sequence of approvals, reversals, checks and time passing gives what the model gives."""

from __future__ import annotations

import random
from collections import Counter

import msgspec
import pytest

from risk.actor import shard_of, subjects_of
from risk.counters import Book, Counters, Entry, Subject
from risk.messages import ADD, ADD_REFUND, ASKS, CHECK, REMOVE, Ask, Check, encode_checks

CODES = [f"{i:064x}" for i in range(4)]
TERMINALS = ["T1", "T2", "T3"]
MERCHANTS = ["M1", "M2"]
CHECKS = [
    Check("code-day-fen", "code", 86_400, max_fen=30_000),
    Check("code-10m-count", "code", 600, max_count=3),
    Check("terminal-1h", "terminal", 3_600, max_fen=50_000, max_count=6),
    Check("merchant-90s-count", "merchant", 90, max_count=4),
    Check("code-merchants", "code", 300, across="merchant", max_distinct=1),
    Check("code-terminals", "code", 1_200, across="terminal", max_distinct=2),
    Check("merchant-refunds", "merchant", 3_600, max_pct=30, min_sales_fen=20_000),
]

ENCODED = encode_checks(CHECKS)


def wire(ask: Ask) -> Ask:
    """``ask`` as a risk actor reads it off its link."""
    return ASKS.decode(msgspec.msgpack.encode([ask]))[0]


def model(approved: list[dict], now: float, check: Check, subject: Subject, amount: int, merchant: str,
          terminal: str) -> str | None:  # fmt: skip
    within = [p for p in approved if p[subject.per] == subject.value and p["at"] > now - check.seconds]
    inside = [p for p in within if not p["refund"]]  # the sales
    if check.max_pct is not None:
        refunds = sum(p["amount"] for p in within if p["refund"])
        sales = max(sum(p["amount"] for p in inside), check.min_sales_fen)
        return "61" if (refunds + amount) * 100 > sales * check.max_pct else None
    if check.across:
        seen = {p[check.across] for p in inside} | {merchant if check.across == "merchant" else terminal}
        return "65" if len(seen) > check.max_distinct else None
    if check.max_fen is not None and sum(p["amount"] for p in inside) + amount > check.max_fen:
        return "61"
    if check.max_count is not None and len(inside) + 1 > check.max_count:
        return "65"
    return None


@pytest.mark.parametrize("seed", range(12))
def test_every_check_agrees_with_the_brute_force_model(seed):
    rng = random.Random(seed)
    now = [1_000_000.0]
    book = Book(Counters(clock=lambda: now[0]))
    approved: list[dict] = []
    removed: list[dict] = []
    checked, fired = 0, Counter()
    for n in range(1500):
        now[0] += rng.choice([0, 0, 1, 5, 30, 120, 900])
        code, terminal, merchant = rng.choice(CODES), rng.choice(TERMINALS), rng.choice(MERCHANTS)
        subjects = list(subjects_of(code, terminal, merchant))
        amount = rng.randrange(1, 12_000)
        roll = rng.random()
        if roll < 0.45:
            rrn, refund = f"{n:012d}", rng.random() < 0.2
            op, counted_under = (ADD, subjects) if not refund else (ADD_REFUND, [Subject("merchant", merchant)])
            book.answer(wire(Ask(n, op, counted_under, rrn, amount, merchant, terminal)))
            approved.append({"rrn": rrn, "at": now[0], "amount": amount, "code": None if refund else code,
                             "terminal": None if refund else terminal, "merchant": merchant,
                             "refund": refund})  # fmt: skip
            if rng.random() < 0.05:  # a resend of the same approval counts once
                book.answer(wire(Ask(n, op, counted_under, rrn, amount, merchant, terminal)))
        elif roll < 0.55 and approved:
            gone = rng.choice(approved)
            approved.remove(gone)
            book.answer(wire(Ask(n, REMOVE, [], gone["rrn"])))
            removed.append(gone)
        elif roll < 0.58 and (recent := [p for p in removed if p["at"] > now[0] - 86_400]):
            late = rng.choice(recent)  # an approval told late, after its reversal: never counted again
            op = ADD_REFUND if late["refund"] else ADD
            late_subjects = subjects_of(late["code"] or "", late["terminal"] or "", late["merchant"], late["refund"])
            book.answer(wire(Ask(n, op, list(late_subjects), late["rrn"], late["amount"], late["merchant"],
                                 late["terminal"] or "")))  # fmt: skip
        elif roll < 0.60:  # a reversal read from the journal before its approval was told
            book.answer(wire(Ask(n, REMOVE, [], f"early{n}")))
            book.answer(wire(Ask(n, ADD, subjects, f"early{n}", amount, merchant, terminal)))
        elif roll < 0.62:
            book.counters.expire()
            approved = [p for p in approved if p["at"] > now[0] - 86_400]
        else:
            answer = book.answer(wire(Ask(n, CHECK, subjects, "", amount, merchant, terminal, ENCODED)))
            expected = []
            for check in CHECKS:
                subject = next(Subject(*s) for s in subjects if s[0] == check.per)
                code_of = model(approved, now[0], check, subject, amount, merchant, terminal)
                if code_of is not None:
                    expected.append((check.rule_id, code_of))
            assert answer.fired == expected, (n, seed)
            checked += 1
            fired.update(rule_id for rule_id, _ in expected)
    # The sequence exercised both sides of every limit.
    assert checked > 500 and all(0 < fired[check.rule_id] < checked for check in CHECKS), fired


def test_a_payment_read_late_from_the_journal_then_reversed_leaves_nothing_counted():
    """What a shard is told carries its own clock; what it reads from the journal's log carries
    the journal's, up to a second behind. Read after a later one was told, then reversed, it is
    taken out of the window, and nothing stays counted once the window has passed."""
    now = [1_000.0]
    counters = Counters(clock=lambda: now[0])
    merchant = Subject("merchant", "M1")
    assert counters.totals(merchant, 60).fen == 0
    counters.add((merchant,), Entry("told", 1_000.0, 100, "M1", "T1"))
    counters.add((merchant,), Entry("read", 999.0, 200, "M1", "T1"))
    assert counters.totals(merchant, 60).fen == 300
    now[0] = 1_059.5
    assert counters.remove("read")
    assert counters.totals(merchant, 60).fen == 100
    now[0] = 1_061.0
    assert (counters.totals(merchant, 60).fen, counters.totals(merchant, 60).count) == (0, 0)


def test_what_a_day_leaves_behind_is_forgotten_with_it():
    """Checks of codes never paid keep nothing; a day on, every payment, subject and window is
    forgotten, and a subject still paying keeps its own."""
    now = [1_000_000.0]
    book = Book(Counters(clock=lambda: now[0]))
    checks = encode_checks([Check("code-10m-count", "code", 600, max_count=3)])
    for n in range(200):  # codes asked about, then declined or paid elsewhere
        book.answer(wire(Ask(n, CHECK, [Subject("code", f"unpaid{n}")], "", 100, "M1", "T1", checks)))
    assert book.counters.held() == {"payments": 0, "subjects": 0, "windows": 0}
    for n in range(100):
        subjects = [Subject("code", f"paid{n}"), Subject("merchant", "M1")]
        book.answer(wire(Ask(n, CHECK, subjects, "", 100, "M1", "T1", checks)))
        book.answer(wire(Ask(0, ADD, subjects, f"r{n}", 100, "M1", "T1")))
        book.answer(wire(Ask(n, CHECK, subjects, "", 100, "M1", "T1", checks)))  # its window is built
        now[0] += 60
    assert book.counters.held() == {"payments": 100, "subjects": 101, "windows": 100}
    now[0] += 86_400 - 60 * 50 - 30  # the first 50 payments' day is over
    assert book.counters.expire() == 50
    # The 50 codes still in the day keep their subjects; their 10-minute windows, long empty, went.
    assert book.counters.held() == {"payments": 50, "subjects": 51, "windows": 0}
    code = Subject("code", "paid99")
    assert book.counters.totals(code, 86_400).count == 1
    now[0] += 86_400
    assert book.counters.expire() == 50
    assert book.counters.held() == {"payments": 0, "subjects": 0, "windows": 0}
    assert book.counters.totals(code, 86_400).count == 0


def test_a_window_nobody_reads_stays_its_length_while_its_subject_pays():
    """A merchant's refund-ratio window is read only by its refunds, while every sale is added to
    it: between refunds it keeps no more than its hour, however long the merchant sells."""
    now = [1_000_000.0]
    counters = Counters(clock=lambda: now[0])
    merchant = Subject("merchant", "M1")
    assert counters.add((merchant,), Entry("first", now[0], 100, "M1", "T1"))
    assert counters.totals(merchant, 3_600).count == 1  # read once: the window is kept
    for n in range(3 * 24 * 60):  # a sale a minute for three days, the window never read
        now[0] += 60
        counters.add((merchant,), Entry(f"r{n}", now[0], 100, "M1", "T1"))
        if n % 60 == 0:
            counters.expire()
    window = counters._windows[(merchant, 3_600)]  # (white box: what it holds, not what it says)
    assert len(window.entries) <= 61 and window.count == len(window.entries)
    assert counters.totals(merchant, 3_600).count == 60


def test_a_window_its_payments_have_left_is_dropped_while_its_subject_is_kept():
    """A card paid twice keeps a 10-minute window; once its payments have left the window, the
    next pass drops it (the card's day is kept: a day's worth of windows would be one per card)."""
    now = [1_000_000.0]
    counters = Counters(clock=lambda: now[0])
    cards = [Subject("code", f"card{n}") for n in range(50)]
    for n, card in enumerate(cards):
        counters.add((card,), Entry(f"a{n}", now[0], 100, "M1", "T1"))
        assert counters.totals(card, 600).count == 1
    counters.add((cards[0],), Entry("later", now[0] + 300, 100, "M1", "T1"))
    now[0] += 599
    counters.expire()
    assert counters.held() == {"payments": 51, "subjects": 50, "windows": 50}
    now[0] += 2
    counters.expire()
    assert counters.held() == {"payments": 51, "subjects": 50, "windows": 1}  # card0 paid again since
    assert counters.totals(cards[0], 600).count == 1
    now[0] += 300
    counters.expire()
    assert counters.held() == {"payments": 51, "subjects": 50, "windows": 0}
    assert counters.totals(cards[1], 600).count == 0  # built again from the day: nothing within it
    assert counters.totals(cards[1], 86_400).count == 1


def test_a_window_read_while_its_subject_pays_is_looked_at_once_not_once_a_payment():
    """What expiry keeps to find a window its payments have left is one entry a window, put back
    while payments come: one a payment would hold a day of them for a terminal's day-long
    window. The window still goes once its payments have."""
    now = [1_000_000.0]
    counters = Counters(clock=lambda: now[0])
    terminal = Subject("terminal", "T1")
    counters.add((terminal,), Entry("first", now[0], 100, "M1", "T1"))
    assert counters.totals(terminal, 86_400).count == 1
    for n in range(5_000):
        now[0] += 1
        counters.add((terminal,), Entry(f"r{n}", now[0], 100, "M1", "T1"))
    counters.expire()
    assert len(counters._ends) == 1  # (white box: what it holds)
    assert counters.totals(terminal, 86_400).count == 5_001
    now[0] += 86_400 - 2_500  # the first half of them have left the window
    counters.expire()
    assert len(counters._ends) == 1 and counters.totals(terminal, 86_400).count == 2_500
    now[0] += 2_500
    counters.expire()
    assert counters.held() == {"payments": 0, "subjects": 0, "windows": 0} and not counters._ends


def test_a_window_looked_at_again_in_a_pass_is_not_looked_at_twice_in_it():
    """A window still holding payments is put back at its newest's end, after the pass: at a
    float's binade edge (2**31 s, in 2038) that time rounds down to the pass's own, and put back
    at once it was popped again forever (helper 75 found it; the pass hung)."""
    import threading

    now = [2.0**31 - 600 + 2.0**-22]
    counters = Counters(clock=lambda: now[0])
    terminal = Subject("terminal", "T1")
    counters.add((terminal,), Entry("r1", now[0], 100, "M1", "T1"))
    assert counters.totals(terminal, 600).count == 1
    now[0] = 2.0**31  # the payment is still inside the window, and its end rounds to now
    passed = threading.Thread(target=counters.expire, daemon=True)
    passed.start()
    passed.join(5)
    assert not passed.is_alive(), "the pass never ended"
    assert counters.totals(terminal, 600).count == 1


def test_subjects_spread_over_shards_the_same_way_in_every_process():
    subjects = [Subject("code", c) for c in CODES] + [Subject("terminal", t) for t in TERMINALS]
    assert [shard_of(s, 4) for s in subjects] == [shard_of(Subject(*tuple(s)), 4) for s in subjects]
    assert len({shard_of(Subject("code", f"{i:064x}"), 4) for i in range(64)}) == 4


def test_one_shard_takes_every_subject_without_a_hash():
    from risk.client import spread

    subjects = subjects_of("c0de", "T0000001", "898310048990001")

    def never(subject: Subject, shards: int) -> int:
        raise AssertionError("hashed")

    assert spread(subjects, 1, never) == {0: list(subjects)}
    assert spread((), 1, never) == {}  # nothing to ask or tell, as with more shards
    by_shard = spread(subjects, 4, shard_of)  # more shards: each subject where shard_of says
    assert {s: n for n, mine in by_shard.items() for s in mine} == {s: shard_of(s, 4) for s in subjects}


def test_a_shard_judges_only_the_rules_counting_the_subjects_it_holds():
    """Every shard gets the scope's whole list of checks; the code's rules are judged only where
    the code is counted, however often the list comes."""
    book = Book(Counters(clock=lambda: 1_000_000.0))
    terminal_only = [Subject("terminal", "T1")]
    for n in range(7):
        book.answer(wire(Ask(n, ADD, terminal_only, f"r{n}", 10, "M1", "T1")))
    answer = book.answer(wire(Ask(99, CHECK, terminal_only, "", 10, "M1", "T1", ENCODED)))
    assert answer.fired == [("terminal-1h", "65")]  # an eighth breaks max_count 6; no code rule is judged


def test_orders_over_http_count_only_under_what_is_theirs():
    """A QR order has no code the switch saw, and ``HTTP`` is every merchant's pseudo-terminal:
    counted under them, one merchant's QR orders would trip another's per-code and per-terminal
    rules."""
    assert subjects_of("", "HTTP", "M1") == (Subject("merchant", "M1"),)
    assert subjects_of(CODES[0], "HTTP", "M1") == (Subject("code", CODES[0]), Subject("merchant", "M1"))
    assert subjects_of(CODES[0], "T1", "M1") == (
        Subject("code", CODES[0]), Subject("terminal", "T1"), Subject("merchant", "M1"),
    )  # fmt: skip


def test_a_day_of_one_time_codes_holds_little_per_payment():
    """A shard holds every payment of the day, and most are on a payment code used once: such a
    payment must not keep a container of its own (an empty deque is 760 bytes), nor its own
    copies of its terminal's and merchant's names as the link decoded them. Measured as Python
    allocates, for payments decoded off the link one by one (1,145 bytes each with the names
    copied, about 1,900 with a deque per code; 700 with a terminal's and a merchant's subject
    decoded anew for each payment, and a tuple of them; 531 now)."""
    import gc
    import hashlib
    import tracemalloc

    frames = []
    for n in range(2_000):
        code = hashlib.sha256(str(n).encode()).hexdigest()
        merchant, terminal = f"M{n % 5:014d}", f"T{n % 50:07d}"
        ask = Ask(0, ADD, list(subjects_of(code, terminal, merchant)), f"{n:012d}", 100, merchant, terminal)
        frames.append(msgspec.msgpack.encode([ask]))
    book = Book(Counters())
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for frame in frames:
            for ask in ASKS.decode(frame):
                book.answer(ask)
        gc.collect()
        per_payment = (tracemalloc.get_traced_memory()[0] - before) / len(frames)
    finally:
        tracemalloc.stop()
    assert len(book.counters) == 2_000
    assert per_payment < 600, f"{per_payment:.0f} bytes a payment"
