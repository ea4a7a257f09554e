"""The alerting rules shipped for operators (switch/monitoring/alerts.yml) read what the switch exports: every
expression parses as PromQL, and every metric, label matcher, grouping label and label an
annotation names is one a running switch (and a --workers supervisor) puts in /metrics."""

from __future__ import annotations

import re
from pathlib import Path

import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from switch.metrics import Metrics, merged_exposition
from tests.conftest import run
from tests.support import connected, new_purchase

RULES = yaml.safe_load((Path(__file__).parent.parent / "switch" / "monitoring" / "alerts.yml").read_text())
ALERTS = [rule for group in RULES["groups"] for rule in group["rules"]]
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def read_by(node) -> tuple[dict[str, set[str]], set[str]]:
    """The series an expression reads (name: its label matchers) and the labels it groups by."""
    series: dict[str, set[str]] = {}
    grouping: set[str] = set()

    def visit(node) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            series.setdefault(node.name, set()).update(m.name for m in node.matchers.matchers)
        elif isinstance(node, promql_parser.MatrixSelector):
            visit(node.vector_selector)
        elif isinstance(node, promql_parser.AggregateExpr):
            grouping.update(node.modifier.labels if node.modifier is not None else ())
            visit(node.expr)
        elif isinstance(node, promql_parser.Call):
            for arg in node.args:
                visit(arg)
        elif isinstance(node, promql_parser.BinaryExpr):
            visit(node.lhs)
            visit(node.rhs)
        elif isinstance(node, promql_parser.ParenExpr | promql_parser.UnaryExpr):
            visit(node.expr)

    visit(node)
    return series, grouping


def exported(text: str) -> dict[str, set[str]]:
    """Each series name /metrics can hold (a counter's with _total, a histogram's buckets...) and
    the labels it was seen with (le for buckets)."""
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        seen = {label for sample in family.samples for label in sample.labels}
        for suffix in SUFFIXES.get(family.type, ("",)):
            out[family.name + suffix] = seen - {"le"} | ({"le"} if suffix == "_bucket" else set())
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
        return gauges.exposition()

    for name, labels in exported(run(with_gauges()).decode()).items():
        out[name] = out.get(name, set()) | labels
    return out


@pytest.mark.parametrize("alert", ALERTS, ids=[alert["alert"] for alert in ALERTS])
def test_an_alert_reads_the_switchs_own_metrics_and_labels(alert, metrics):
    assert set(alert) <= {"alert", "expr", "for", "labels", "annotations"}, alert
    assert alert["labels"]["severity"] in ("critical", "warning")
    assert alert["annotations"]["summary"] and alert["annotations"]["description"]
    series, grouping = read_by(promql_parser.parse(alert["expr"]))
    assert series, "reads no metric"
    labels: set[str] = set()
    for name, matchers in series.items():
        assert name in metrics, f"{name}: not a series the switch exports"
        known = metrics[name] | {"worker"}
        labels |= known
        if "increase(" in alert["expr"] and name.endswith("_total"):
            # At 0 from the start (Metrics.from_zero): a series born at 1 shows no increase.
            assert metrics[name], f"{name}: no series until its first count, whose increase no alert sees"
        if metrics[name]:  # a gauge's series come and go (no open differences, none at all)
            assert matchers <= known, f"{name}: no label {matchers - known}"
    assert grouping <= labels | {"le"}, f"grouped by {grouping - labels}"
    named = set(re.findall(r"\$labels\.(\w+)", str(alert["annotations"])))
    assert named <= (grouping or labels), f"annotations name {named - (grouping or labels)}"
