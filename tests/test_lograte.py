"""Rate-limited warnings: one line per key and interval, with the count of those held back."""

from __future__ import annotations

import logging

from switch.lograte import RateLimitedLog


def test_one_line_per_key_and_interval_with_the_count_held_back(caplog):
    logger = logging.getLogger("paysw.test.lograte")
    now = [0.0]
    limited = RateLimitedLog(60, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger=logger.name):
        logged = [limited.warn(logger, ("junk", "10.0.0.1"), "junk frame", peer="10.0.0.1") for _ in range(5)]
        other = limited.warn(logger, ("junk", "10.0.0.2"), "junk frame", peer="10.0.0.2")
        now[0] = 61
        later = limited.warn(logger, ("junk", "10.0.0.1"), "junk frame", peer="10.0.0.1")
    assert logged == [True, False, False, False, False] and other and later
    assert [(r.peer, r.suppressed) for r in caplog.records] == [("10.0.0.1", 0), ("10.0.0.2", 0), ("10.0.0.1", 4)]
