"""What operators watch: the front end's own metrics, figures gathered from the channel actors
and the gateways, the resolver's queues; and a real Prometheus server scraping the switch."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from protocols.validation import TxnType
from switch.steps import STEPS
from tests.conftest import free_port, run, switch_with, wait_for_port
from tests.debian import debian_binary
from tests.support import connected, new_purchase


def value(text: str, series: str) -> float:
    match = re.search(rf"(?m)^{re.escape(series)} (\S+)$", text)
    assert match, f"no {series} in the metrics"
    return float(match.group(1))


def value_or_zero(text: str, series: str) -> float:
    return value(text, series) if re.search(rf"(?m)^{re.escape(series)} ", text) else 0.0


STALE = 'paysw_rejected_total{field="7",rule="within a day of today"}'
MISSING_25 = 'paysw_rejected_total{field="25",rule="mandatory"}'


def test_rejections_are_counted_by_field_and_rule(switch):
    _, text = switch.get("/metrics")
    before = value_or_zero(text, STALE), value_or_zero(text, MISSING_25)

    async def traffic():
        far = (dt.datetime.now(dt.UTC) - dt.timedelta(days=5)).strftime("%m%d%H%M%S")
        async with connected(switch) as terminal:
            stale = await terminal.request({**new_purchase("wechat"), "7": far})
            missing = await terminal.request({k: v for k, v in new_purchase("wechat").items() if k != "25"})
        assert (stale["39"], missing["39"]) == ("30", "30")

    run(traffic())
    _, text = switch.get("/metrics")
    assert (value(text, STALE), value(text, MISSING_25)) == (before[0] + 1, before[1] + 1)


@pytest.fixture(scope="module")
def timed_switch(config_dir, database_url, simulators, tmp_path_factory):
    edits = [(r"(?m)^request_deadline_ms = 5000$", "request_deadline_ms = 5000\nstep_timing = true")]
    yield from switch_with(config_dir, database_url, tmp_path_factory.mktemp("timed"), "timed", edits)


def test_step_timing_when_switched_on_times_every_step_of_a_purchase(timed_switch, switch):
    async def traffic():
        async with connected(timed_switch) as terminal:
            assert (await terminal.request(new_purchase("alipay")))["39"] == "00"

    run(traffic())
    _, text = timed_switch.get("/metrics")
    for step in STEPS[TxnType.PURCHASE]:
        assert value(text, f'paysw_step_seconds_count{{step="{step}",txn_type="purchase"}}') >= 1, step
    assert value(text, 'paysw_step_seconds_sum{step="send_and_poll",txn_type="purchase"}') > 0
    _, untimed = switch.get("/metrics")  # off by default: no series at all
    assert "# TYPE paysw_step_seconds histogram" in untimed
    assert not re.search(r"(?m)^paysw_step_seconds_count\{", untimed)


def test_actor_gateway_and_queue_figures_reach_the_scrape(switch):
    async def traffic():
        async with connected(switch) as terminal:
            for channel in ("wechat", "alipay"):
                assert (await terminal.request(new_purchase(channel)))["39"] == "00"

    run(traffic())
    time.sleep(6)  # the actor watcher (1 s) and the open-transaction reader (5 s) have run
    _, text = switch.get("/metrics")
    assert value(text, 'paysw_requests_total{mti="0200"}') >= 2
    assert value(text, 'paysw_actor_calls_total{channel="wechat",shard="0"}') >= 1  # from the actor itself
    assert value(text, 'paysw_actor_alive{channel="alipay",shard="0"}') == 1
    assert value(text, 'paysw_gateway_queue_depth{channel="wechat"}') == 0
    assert value(text, 'paysw_circuit_state{channel="ecny",shard="0"}') == 0
    assert "# TYPE paysw_open_transactions gauge" in text


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=5) as response:
            return response.status == 200
    except OSError:  # HTTPError (503) included
        return False


def query(port: int, promql: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as response:
        answer = json.load(response)
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def test_a_real_prometheus_scrapes_per_channel_rate_and_latency(switch, tmp_path):
    binary = debian_binary("prometheus", "prometheus")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: paysw\n    static_configs: [{{targets: ['127.0.0.1:{switch.admin}']}}]\n"
    )
    options = [f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"]
    server = subprocess.Popen(
        [binary, f"--config.file={config}", *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, 30, server)
        deadline = time.monotonic() + 60
        while not ready(port):  # the port opens before the storage is ready (503 until then)
            assert time.monotonic() < deadline and server.poll() is None, "prometheus did not become ready"
            time.sleep(0.5)
        while not [r for r in query(port, 'up{job="paysw"}') if r["value"][1] == "1"]:  # scraped once
            assert time.monotonic() < deadline, "prometheus never scraped the switch"
            time.sleep(0.5)

        async def traffic():
            async with connected(switch) as terminal:
                for _ in range(12):
                    for channel in ("wechat", "alipay", "unionpay"):
                        await terminal.request(new_purchase(channel))
                    await asyncio.sleep(0.5)

        run(traffic())
        deadline = time.monotonic() + 30
        while True:
            rates = query(port, 'sum by (channel) (rate(paysw_answers_total{mti="0200"}[30s]))')
            p99 = query(
                port, "histogram_quantile(0.99, sum by (channel, le) (rate(paysw_request_seconds_bucket[30s])))"
            )
            by_channel = {r["metric"].get("channel"): float(r["value"][1]) for r in rates}
            if all(by_channel.get(ch, 0) > 0 for ch in ("wechat", "alipay", "unionpay")) and p99:
                break
            assert time.monotonic() < deadline, f"prometheus has not seen the traffic: {rates}"
            time.sleep(1)
        latency = {r["metric"].get("channel"): float(r["value"][1]) for r in p99}
        assert 0 < latency["wechat"] < 5  # seconds: a real quantile, not NaN
    finally:
        server.terminate()
        server.wait(timeout=20)


def test_the_dashboard_only_uses_metrics_the_switch_exports(switch):
    """Every series a Grafana panel asks for is one a running switch exports (a renamed metric
    would otherwise leave an empty panel in front of an operator)."""
    from pathlib import Path

    dashboard = json.loads(
        (Path(__file__).parent.parent / "switch" / "monitoring" / "grafana-dashboard.json").read_text()
    )
    _, text = switch.get("/metrics")
    exported = set(re.findall(r"(?m)^# TYPE (\S+) (\w+)", text))
    names = {name for name, _ in exported}
    names |= {f"{name}_{suffix}" for name, kind in exported for suffix in ("total", "bucket", "sum", "count")}
    used = {
        m
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for m in re.findall(r"\b((?:paysw|process)_[a-z_]+)", target["expr"])
    }
    assert len(dashboard["panels"]) >= 12
    assert used and used <= names, f"not exported: {sorted(used - names)}"
