"""The benchmarks' arithmetic: CPU and PostgreSQL's work per purchase, the profile A/B's medians on
the rounds of a committed A/B (PostgreSQL's counts with the CPU, each the median of its rounds),
and a held run's growth of the cost per purchase."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from bench.held import cost_growth
from bench.profile import _medians, cpu_ms_per_approved, pg_per_approved

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


def test_cpu_and_postgresql_work_are_per_approved_purchase_by_part():
    before = {"front end": (10.0, 1.0), "postgresql 0": (2.0, 0.5), "postgresql 1": (3.0, 0.5), "gone": (1.0, 0.0)}
    after = {"front end": (10.5, 1.1), "postgresql 0": (2.2, 0.6), "postgresql 1": (3.1, 0.6), "new": (5.0, 0.0)}
    # 500 purchases: PostgreSQL's backends are one part; a process seen only once counts nothing.
    assert cpu_ms_per_approved(before, after, 500) == {"front end": 1.0, "postgresql": 0.6}
    assert cpu_ms_per_approved(before, after, 500, kernel=True) == {"front end": 0.2, "postgresql": 0.4}
    assert cpu_ms_per_approved(before, after, 0) == {}  # nothing approved: no figure, not a division by 0
    assert pg_per_approved((0, 0, 10, 100, 1000), (5, 50, 30, 150, 3000), 10) == {
        "txn_seq_scans": 0.5, "txn_rows_seq_read": 5.0, "txn_index_scans": 2.0, "commits": 5.0, "rows_returned": 200.0,
    }  # fmt: skip


def test_a_held_run_reports_the_cost_per_purchase_growing_from_its_second_window():
    def window(cpu: float, rows: float) -> dict:
        return {"switch_cpu_ms": cpu, "postgresql_per_approved": {"rows_returned": rows}}

    # The first window carries the warm-up; the day's growth shows from the second to the last.
    assert cost_growth([window(9.0, 60), window(2.0, 10), window(2.2, 10), window(3.0, 25)]) == {
        "switch_cpu": 1.5, "pg_rows_returned": 2.5,
    }  # fmt: skip
    assert cost_growth([window(2.0, 10), window(1.0, 20)]) == {"switch_cpu": 0.5, "pg_rows_returned": 2.0}
    assert cost_growth([window(0, 0), window(1.0, 5), window(1.0, 5)])["switch_cpu"] == 1.0
    assert cost_growth([window(1.0, 0), window(0, 0), window(1.0, 5)]) == {"switch_cpu": None, "pg_rows_returned": None}
