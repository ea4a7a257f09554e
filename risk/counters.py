"""Counters over sliding windows: the approved payments of each subject (a code or card by its
fingerprint, a terminal, a merchant) over the last day, and what the counted rules ask of them.

A payment counts from when it is approved (the journal's move to APPROVED) until it is reversed
or voided, at the time it was approved. An approved refund counts under its merchant alone, apart
from the sales (the refund ratio reads both). Each window length a rule asks about keeps, per subject, a
running total over that window, trimmed as time passes, so a check costs the same whether a
subject had ten payments or a hundred thousand."""

from __future__ import annotations

import heapq
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from sys import intern

from protocols import response_codes as rc
from risk.messages import ADD, ADD_REFUND, CHECKS, REMOVE, Answer, Ask, Check, Subject
from risk.rules import MAX_WINDOW_S


@dataclass(slots=True)
class Entry:
    rrn: str
    at: float  # epoch seconds it was approved
    amount_fen: int
    merchant: str
    terminal: str
    refund: bool = False  # an approved refund (counted under its merchant only), not a sale
    removed: bool = False  # reversed or voided: no longer counted
    subjects: tuple[Subject, ...] = ()  # what it counts under, here


@dataclass(slots=True)
class _Window:
    """One subject's payments within one window length, with their running totals."""

    seconds: int
    entries: deque[Entry] = field(default_factory=deque)
    count: int = 0  # sales
    fen: int = 0
    refund_fen: int = 0
    merchants: Counter[str] = field(default_factory=Counter)
    terminals: Counter[str] = field(default_factory=Counter)

    def take(self, entry: Entry, sign: int) -> None:
        if entry.refund:
            self.refund_fen += sign * entry.amount_fen
            return
        self.count += sign
        self.fen += sign * entry.amount_fen
        for across, name in ((self.merchants, entry.merchant), (self.terminals, entry.terminal)):
            across[name] += sign
            if not across[name]:
                del across[name]

    def trim(self, now: float) -> None:
        since = now - self.seconds
        while self.entries and self.entries[0].at <= since:
            entry = self.entries.popleft()
            if not entry.removed:
                self.take(entry, -1)


class Counters:
    """Every subject's approved payments of the last day (``MAX_WINDOW_S``), and per window length
    asked about, their running totals."""

    def __init__(self, clock=time.time) -> None:
        self._clock = clock
        # A subject's payments of the day: the one Entry while it has one (a payment code is used
        # once: a deque, 760 bytes empty, would be half of what such a payment holds), then a deque.
        self._day: dict[Subject, Entry | deque[Entry]] = {}
        self._windows: dict[tuple[Subject, int], _Window] = {}
        self._lengths: dict[Subject, set[int]] = {}  # the window lengths kept for a subject
        # Every payment of the day by RRN, those no longer counted too (marked removed): a move told
        # twice, or late (by a front end, and by the journal's log), changes nothing.
        self._by_rrn: dict[str, Entry] = {}
        # Each terminal's and merchant's subject, held once (a payment's own copies, as its ask
        # decodes them, would be some 130 bytes of it): a payment code's is its payment's alone.
        self._named: dict[Subject, Subject] = {}
        self._unseen: deque[Entry] = deque()  # removals of payments never counted here, for a day
        # Every payment added, in time order: what ``expire`` forgets is found at its head, so a pass
        # costs what it forgets, not what is held (a day's distinct codes are millions of subjects).
        self._added: deque[Entry] = deque()
        # When each window's payments have all left it, if no more come (its newest's time plus its
        # length), soonest first: a window left empty is dropped within a minute of it (one per
        # payment code asked about, a day's worth else). One each, put back at its newest's end
        # while payments come, not one per payment: a terminal's day-long window would hold a day
        # of them.
        self._ends: list[tuple[float, int, Subject]] = []
        self._counted = 0
        self._latest = 0.0  # the latest time added: every deque stays in time order

    def __len__(self) -> int:
        """The payments counted."""
        return self._counted

    def now(self) -> float:
        return self._clock()

    def knows(self, rrn: str, counted: bool) -> bool:
        """Whether the payment is already added (``counted``) or removed, as a move would leave it."""
        found = self._by_rrn.get(rrn)
        return found is not None and (counted or found.removed)

    def add(self, subjects: tuple[Subject, ...], entry: Entry) -> bool:
        """Count an approved payment under each of its subjects; False if it is known already
        (counted, or removed: a payment reversed or voided is never counted again)."""
        if entry.rrn in self._by_rrn:
            return False
        # Times come from two clocks (the shard's for what it is told, the journal's for what it
        # reads) and a read comes late: one older than what is held counts from the latest time,
        # a second or so longer than its own, so that trimming and removal see every deque in order.
        entry.at = self._latest = max(entry.at, self._latest)
        # Kept for a day: each payment's own copies of its terminal's and merchant's names (as a
        # link or a journal read decodes them) would be some 400 bytes of it; interned, held once.
        entry.merchant, entry.terminal = intern(entry.merchant), intern(entry.terminal)
        entry.subjects = subjects = tuple(map(self._held, subjects))
        self._by_rrn[entry.rrn] = entry
        self._added.append(entry)
        self._counted += 1
        for subject in subjects:
            day = self._day.get(subject)
            if day is None:
                self._day[subject] = entry
            elif type(day) is Entry:
                self._day[subject] = deque((day, entry))
            else:
                day.append(entry)
            for seconds in self._lengths.get(subject, ()):
                window = self._windows[(subject, seconds)]
                window.trim(entry.at)  # a window nobody reads (a refund ratio's, between refunds) stays its length
                window.entries.append(entry)
                window.take(entry, +1)
        return True

    def _held(self, subject: Subject) -> Subject:
        if subject.per == "code":
            return Subject(intern(subject.per), subject.value)
        held = self._named.get(subject)
        if held is None:
            held = Subject(intern(subject.per), intern(subject.value))
            self._named[held] = held  # its own key too: the ask's copy is not kept
        return held

    def remove(self, rrn: str) -> bool:
        """No longer count a payment (reversed, voided); False if it was not counted (it never
        will be: a removal can come before the approval it undoes)."""
        entry = self._by_rrn.get(rrn)
        if entry is None:
            entry = Entry(rrn, self._clock(), 0, "", "", removed=True)
            self._by_rrn[rrn] = entry
            self._unseen.append(entry)
            return False
        if entry.removed:
            return False
        entry.removed = True
        self._counted -= 1
        for subject in entry.subjects:
            for seconds in self._lengths.get(subject, ()):
                window = self._windows[(subject, seconds)]
                if window.entries and window.entries[0].at <= entry.at:  # still inside it
                    window.take(entry, -1)
        return True

    def totals(self, subject: Subject, seconds: int) -> _Window:
        """What ``subject`` was approved for over the last ``seconds`` (its running totals: read,
        never change them)."""
        now = self._clock()
        window = self._windows.get((subject, seconds))
        if window is None and subject not in self._day:  # nothing paid: nothing kept (most codes asked about)
            return _NOTHING
        if window is None:  # the first question about this length: built from the day's payments
            window = self._windows[(subject, seconds)] = _Window(seconds)
            self._lengths.setdefault(subject, set()).add(seconds)
            day = self._day.get(subject, ())
            for entry in (day,) if type(day) is Entry else day:
                if entry.at > now - seconds:
                    window.entries.append(entry)
                    if not entry.removed:
                        window.take(entry, +1)
            newest = window.entries[-1].at if window.entries else now
            heapq.heappush(self._ends, (newest + seconds, seconds, subject))
        window.trim(now)
        return window

    def expire(self) -> int:
        """Forget payments older than a day, with the subjects they leave empty, and windows left
        empty; how many counted went. Each pass costs what it forgets: it reads the oldest payments
        and the windows whose last payment has just left them, never all that is held."""
        since = self._clock() - MAX_WINDOW_S
        gone = 0
        while self._added and self._added[0].at <= since:
            entry = self._added.popleft()
            if self._by_rrn.get(entry.rrn) is entry:
                del self._by_rrn[entry.rrn]
                if not entry.removed:
                    self._counted -= 1
                    gone += 1
            for subject in entry.subjects:  # each subject's day is in the same order: this entry is its first
                day = self._day[subject]
                if type(day) is not Entry:
                    day.popleft()
                if type(day) is Entry or not day:
                    del self._day[subject]
                    self._named.pop(subject, None)
                    for seconds in self._lengths.pop(subject, ()):
                        del self._windows[(subject, seconds)]
        while self._unseen and self._unseen[0].at <= since:
            entry = self._unseen.popleft()
            if self._by_rrn.get(entry.rrn) is entry:
                del self._by_rrn[entry.rrn]
        now, ends, again = since + MAX_WINDOW_S, self._ends, []
        while ends and ends[0][0] <= now:
            _, seconds, subject = heapq.heappop(ends)
            window = self._windows.get((subject, seconds))
            if window is None:  # gone with its subject's day already
                continue
            window.trim(now)
            if window.entries:  # payments came since: look again when the newest has left
                # (after this pass: a time that rounds to ``now`` would be popped again forever)
                again.append((window.entries[-1].at + seconds, seconds, subject))
                continue
            del self._windows[(subject, seconds)]
            lengths = self._lengths[subject]
            lengths.discard(seconds)
            if not lengths:
                del self._lengths[subject]
        for due in again:
            heapq.heappush(ends, due)
        return gone

    def held(self) -> dict[str, int]:
        """What the counters hold: payments counted, subjects with a payment, windows kept."""
        return {"payments": self._counted, "subjects": len(self._day), "windows": len(self._windows)}


_NOTHING = _Window(0)  # the totals of a subject with no payment (shared: read, never changed)


def judge(check: Check, totals: _Window, amount_fen: int, merchant: str, terminal: str) -> str | None:
    """The code a counted rule's decline answers if this payment, added to ``totals``, breaks it;
    None if it does not."""
    if check.max_pct is not None:  # refund ratio: this refund added to the window's refunds
        sales = max(totals.fen, check.min_sales_fen)
        return rc.EXCEEDS_AMOUNT_LIMIT if (totals.refund_fen + amount_fen) * 100 > sales * check.max_pct else None
    if check.across:  # velocity: this payment's merchant (or terminal) counts among them
        seen, mine = (totals.merchants, merchant) if check.across == "merchant" else (totals.terminals, terminal)
        return rc.EXCEEDS_FREQUENCY_LIMIT if len(seen) + (mine not in seen) > check.max_distinct else None
    if check.max_fen is not None and totals.fen + amount_fen > check.max_fen:
        return rc.EXCEEDS_AMOUNT_LIMIT
    if check.max_count is not None and totals.count + 1 > check.max_count:
        return rc.EXCEEDS_FREQUENCY_LIMIT
    return None


CHECK_LISTS_KEPT = 10_000  # the scopes' lists of checks decoded (a few per rule set and scope)


class Book:
    """The counters as an actor keeps them, answering the front ends' asks (``risk.messages``)."""

    def __init__(self, counters: Counters | None = None) -> None:
        self.counters = counters if counters is not None else Counters()  # (an empty one is falsy)
        self._checks: dict[bytes, list[Check]] = {}

    def _decoded(self, encoded: bytes) -> list[Check]:
        checks = self._checks.get(encoded)
        if checks is None:
            if len(self._checks) >= CHECK_LISTS_KEPT:
                self._checks.clear()
            checks = self._checks[encoded] = CHECKS.decode(encoded)
        return checks

    def answer(self, ask: Ask) -> Answer | None:
        """A check's answer; None to an approval or a reversal told (nobody waits for those)."""
        if ask.op in (ADD, ADD_REFUND):
            refund = ask.op == ADD_REFUND
            entry = Entry(ask.rrn, self.counters.now(), ask.amount_fen, ask.merchant, ask.terminal, refund)
            self.counters.add(tuple(ask.subjects), entry)
            return None
        subjects = tuple(ask.subjects)
        if ask.op == REMOVE:
            self.counters.remove(ask.rrn)
            return None
        by_per = {s.per: s for s in subjects}
        fired = []
        for check in self._decoded(bytes(ask.checks)):
            subject = by_per.get(check.per)
            if subject is None:  # counted on another shard
                continue
            totals = self.counters.totals(subject, check.seconds)
            code = judge(check, totals, ask.amount_fen, ask.merchant, ask.terminal)
            if code is not None:
                fired.append((check.rule_id, code))
        return Answer(ask.key, fired)
