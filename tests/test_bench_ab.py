"""The profile A/B's medians (``bench.profile``), on the rounds of a committed A/B: PostgreSQL's
counts per purchase come with the CPU, each the median of its rounds."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from bench.profile import _medians

RESULT = Path(__file__).resolve().parent.parent / "bench" / "results" / "profile-follow-custom-plan-ab.json"


def test_the_profile_ab_takes_the_median_of_cpu_and_of_postgresql_counts():
    rounds = json.loads(RESULT.read_text())["rounds"]
    for side, results in rounds.items():
        medians = _medians(results)
        for name in results[0]["postgresql_per_approved"]:
            expected = statistics.median(r["postgresql_per_approved"][name] for r in results)
            assert medians[f"pg {name}"] == round(expected, 3), (side, name)
        expected = statistics.median(r["cpu_ms_per_approved"]["front end"] for r in results)
        assert medians["front end"] == round(expected, 3)
    # The change measured there: the risk shards' look at the journal no longer re-reads the day.
    assert _medians(rounds["this"])["pg rows_returned"] < 0.5 * _medians(rounds["against"])["pg rows_returned"]
