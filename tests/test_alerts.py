"""The alerting rules shipped for operators (switch/monitoring/alerts.yml): every expression parses
as PromQL, and every metric, label matcher, grouping label and label an annotation names is one a
running switch (and a --workers supervisor) puts in /metrics; and promtool's own checks and unit
tests (alerts_test.yml: when each fires, and when it must not) pass."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from switch.metrics import Metrics, merged_exposition
from tests.conftest import run
from tests.debian import debian_binary
from tests.support import connected, new_purchase

MONITORING = Path(__file__).parent.parent / "switch" / "monitoring"
RULES = yaml.safe_load((MONITORING / "alerts.yml").read_text())
ALERTS = [rule for group in RULES["groups"] for rule in group["rules"]]
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
SCRAPED = {"instance", "job", "worker"}  # labels Prometheus (and a --workers supervisor) add to every series
PROMETHEUS_OWN = {"up": {"instance": set(), "job": set()}}  # whether a target answered its scrape


Matched = dict[str, dict[str, set[str]]]  # series name: each label matched, with the values named


def read_by(node) -> tuple[Matched, Matched, set[str]]:
    """The series an expression reads (each label it matches and the values it names, a regex's
    alternatives each), those of them read by increase(), and the labels it groups by."""
    series: Matched = {}
    increased: Matched = {}
    grouping: set[str] = set()

    def visit(node, in_increase: bool = False) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            for into in (series, increased) if in_increase else (series,):
                matched = into.setdefault(node.name, {})
                for m in node.matchers.matchers:
                    matched.setdefault(m.name, set()).update(m.value.split("|"))
        elif isinstance(node, promql_parser.MatrixSelector):
            visit(node.vector_selector, in_increase)
        elif isinstance(node, promql_parser.AggregateExpr):
            grouping.update(node.modifier.labels if node.modifier is not None else ())
            visit(node.expr, in_increase)
        elif isinstance(node, promql_parser.Call):
            for arg in node.args:
                visit(arg, in_increase or node.func.name == "increase")
        elif isinstance(node, promql_parser.BinaryExpr):
            visit(node.lhs, in_increase)
            visit(node.rhs, in_increase)
        elif isinstance(node, promql_parser.ParenExpr | promql_parser.UnaryExpr):
            visit(node.expr, in_increase)

    visit(node)
    return series, increased, grouping


def exported(text: str) -> dict[str, dict[str, set[str]]]:
    """Each series name /metrics can hold (a counter's with _total, a histogram's buckets...),
    with the values each label was seen with (le for buckets)."""
    out: dict[str, dict[str, set[str]]] = {}
    for family in text_string_to_metric_families(text):
        for suffix in SUFFIXES.get(family.type, ("",)):
            labels = out.setdefault(family.name + suffix, {})
            for sample in family.samples:
                for label, value in sample.labels.items():
                    if label != "le" or suffix == "_bucket":
                        labels.setdefault(label, set()).add(value)
    return out


@pytest.fixture(scope="module")
def metrics(switch) -> dict[str, set[str]]:
    """What a running switch exports once it has answered a purchase, as a --workers supervisor
    merges it (the worker label, paysw_worker_up); with the gauges whose series come and go (open
    transactions, reconciliation's differences) set, on the switch's own Metrics, for their labels."""

    async def one_purchase() -> None:  # the answers' series are born with the first
        async with connected(switch) as terminal:
            assert (await terminal.request(new_purchase("wechat")))["39"] == "00"

    run(one_purchase())
    status, text = switch.get("/metrics")
    assert status == 200
    out = exported(merged_exposition([text, None]).decode())

    async def with_gauges() -> bytes:  # Metrics watches the event loop it is made on
        gauges = Metrics()
        gauges.set_open([("wechat", "UNKNOWN", 1)])
        gauges.set_recon([("wechat", "AMOUNT", 1)], [("wechat", 1)])
        gauges.set_dead_letters([("wechat", 1)])
        return gauges.exposition()

    for name, labels in exported(run(with_gauges()).decode()).items():
        for label, values in labels.items():
            out.setdefault(name, {}).setdefault(label, set()).update(values)
    return out | PROMETHEUS_OWN


@pytest.mark.parametrize("alert", ALERTS, ids=[alert["alert"] for alert in ALERTS])
def test_an_alert_reads_the_switchs_own_metrics_and_labels(alert, metrics):
    assert set(alert) <= {"alert", "expr", "for", "labels", "annotations"}, alert
    assert alert["labels"]["severity"] in ("critical", "warning")
    assert alert["annotations"]["summary"] and alert["annotations"]["description"]
    series, increased, grouping = read_by(promql_parser.parse(alert["expr"]))
    assert series, "reads no metric"
    labels = set(SCRAPED)
    for name, matched in series.items():
        assert name in metrics, f"{name}: not a series the switch exports"
        known = metrics[name]
        labels |= set(known)
        if name in increased and name not in PROMETHEUS_OWN:
            # At 0 from the start (Metrics.from_zero), each value the alert matches: a series born
            # at its first count shows no increase().
            for label, values in increased[name].items():
                unseen = values - known.get(label, set())
                assert not unseen, f"{name}{{{label}}}: {unseen} not at 0"
        if known:  # a gauge's series come and go (no open differences, none at all)
            assert set(matched) <= set(known) | SCRAPED, f"{name}: no label {set(matched) - set(known)}"
    assert grouping <= labels | {"le"}, f"grouped by {grouping - labels}"
    named = set(re.findall(r"\$labels\.(\w+)", str(alert["annotations"])))
    assert named <= (grouping or labels), f"annotations name {named - (grouping or labels)}"


def test_promtool_checks_the_rules_and_their_unit_tests_pass():
    """alerts_test.yml says when each alert fires and when it must not: a hanging channel's circuit
    (open, half-open, open) fires; the journal's figures from three front ends are not summed; two
    96s on a quiet channel do not page; a burst of shedding does not, five minutes of it do."""
    promtool = debian_binary("promtool", "prometheus")
    for command in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        result = subprocess.run([promtool, *command], cwd=MONITORING, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
