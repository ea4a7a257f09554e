"""A simulated channel's ledger: what it charged, refunded and puts on its statement (the test
equipment the reconciliation and refund tests rely on)."""

from __future__ import annotations

import time

from bench.simulators.outcomes import Ledger
from protocols.statements import PAID, PAY, REFUND


def test_refunds_are_idempotent_capped_at_what_was_paid_and_on_the_statement_of_their_own_time():
    ledger = Ledger(paying_s=1.0)
    ledger.pay("ORDER1", "134567890123456700", 1000, "CH1")
    ledger.pay("UNPAID", "134567890123456705", 1000, "CH2")  # the channel refuses it (05)
    paid_by = time.time()
    assert ledger.refund("ORDER1", "R1", 600) == "DONE"
    assert ledger.refund("ORDER1", "R1", 600) == "DONE"  # the same refund number again: no second refund
    assert ledger.refund("ORDER1", "R2", 500) == "REFUSED"  # 600 + 500 is more than was paid
    assert ledger.refund("ORDER1", "R2", 400) == "DONE"
    assert ledger.refund("UNPAID", "R3", 100) == "REFUSED"
    assert ledger.refund("NOSUCH", "R4", 100) == "REFUSED"
    assert ledger.snapshot()["ORDER1"]["refunded_fen"] == 1000
    assert ledger.snapshot()["UNPAID"]["refunded_fen"] == 0

    rows = ledger.statement(paid_by - 60, time.time() + 1, fee_per_10000=60)
    assert [(r.entry, r.out_trade_no, r.refund_no, r.amount_fen, r.status) for r in rows] == [
        (PAY, "ORDER1", "", 1000, PAID),
        (REFUND, "ORDER1", "R1", 600, PAID),
        (REFUND, "ORDER1", "R2", 400, PAID),
    ]
    # A window after the payment but holding the refunds' time has the refunds alone.
    later = ledger.statement(paid_by, time.time() + 1, fee_per_10000=60)
    assert [(r.entry, r.refund_no) for r in later if r.entry == REFUND] == [(REFUND, "R1"), (REFUND, "R2")]
    assert ledger.statement(time.time() + 1, time.time() + 2, fee_per_10000=60) == []
