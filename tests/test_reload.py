"""Live configuration (``switch.live``) against a real switch: the configuration file read again by
``paysw reload`` (every front end on the journal) and by SIGHUP, applied only when the whole of it
is valid, under load with no failed answer; what only a restart applies is named and left."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import run, switch_with
from tests.support import connected, new_purchase

SHOP, KIOSK, NEW_TERMINAL = "898310048990001", "898310048990002", "T0000099"


@pytest.fixture(scope="module")
def live(config_dir, database_url, simulators, tmp_path_factory):
    folder = tmp_path_factory.mktemp("reload")
    yield from switch_with(config_dir, database_url, folder, "reload", [])


def pay(switch, request: dict) -> dict:
    async def one() -> dict:
        async with connected(switch) as client:
            return await client.request(request)

    return run(one())


def reload_cli(switch, config: Path | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "switch.cli", "reload", "--config", str(config or switch.config)]
    return subprocess.run(command, env=switch.env, capture_output=True, text=True, timeout=60)


def reloads(switch) -> dict[str, float]:
    _, text = switch.get("/metrics")
    return {
        s.labels["result"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "paysw_config_reloads_total"
    }


def wait_for_reloads(switch, result: str, count: float, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while reloads(switch).get(result, 0) < count:
        assert time.monotonic() < deadline, f"no {result} reload after {timeout} s: {reloads(switch)}"
        time.sleep(0.1)


class Paying(threading.Thread):
    """Purchases one after the other at the shop's terminal until stopped; every answer kept."""

    def __init__(self, switch) -> None:
        super().__init__(daemon=True)
        self.switch, self.answers, self.stopping = switch, [], threading.Event()

    def run(self) -> None:
        async def loop() -> None:
            async with connected(self.switch) as client:
                while not self.stopping.is_set():
                    self.answers.append((await client.request(new_purchase("wechat")))["39"])

        asyncio.run(loop())


def test_an_invalid_file_is_refused_with_its_path_and_reason_and_nothing_changes(live):
    original = live.config.read_text()
    try:
        live.config.write_text(original.replace('id = "898310048990002"', 'id = "not-a-merchant-id"', 1))
        refused = reload_cli(live)
        assert refused.returncode == 2
        assert str(live.config) in refused.stderr and "$.merchants" in refused.stderr, refused.stderr
        before = reloads(live).get("invalid", 0)
        live.process.send_signal(signal.SIGHUP)  # the front end reads the same file, and refuses it too
        wait_for_reloads(live, "invalid", before + 1)
        # Asked with a valid copy elsewhere: the front end's own file is the invalid one, and says so.
        copy = live.config.parent / "elsewhere.toml"
        copy.write_text(original)
        told = reload_cli(live, copy)
        assert told.returncode == 1, told.stdout + told.stderr
        assert re.search(rf"/\d+ 127\.0\.0\.1:{live.port}: invalid: .*\$\.merchants", told.stdout), told.stdout
        assert "1 front end(s) kept their running configuration" in told.stderr
    finally:
        live.config.write_text(original)
    assert pay(live, new_purchase("wechat", terminal="K0000001", merchant=KIOSK))["39"] == "00"


def test_a_valid_file_applies_under_load_with_no_failed_answer_and_names_what_needs_a_restart(live):
    original = live.config.read_text()
    assert pay(live, new_purchase("wechat", terminal=NEW_TERMINAL, merchant=SHOP))["39"] == "03"  # not yet configured
    paying = Paying(live)
    paying.start()
    try:
        time.sleep(0.5)
        changed = original.replace('id = "898310048990002"\n', 'id = "898310048990002"\nsuspended = true\n', 1)
        changed += f'\n[[terminals]]\nid = "{NEW_TERMINAL}"\nmerchant = "{SHOP}"\n'
        changed, n = re.subn(r"(?m)^request_deadline_ms = \d+$", "request_deadline_ms = 4000", changed)
        assert n == 1
        live.config.write_text(changed)
        told = reload_cli(live)  # waits for every front end's outcome
        assert told.returncode == 0, told.stderr
        assert re.search(rf":{live.port}: ok: applied; these need a restart: \$\.switch", told.stdout), told.stdout
        time.sleep(0.5)
    finally:
        paying.stopping.set()
        paying.join(10)
        live.config.write_text(original)
    assert len(paying.answers) > 10 and set(paying.answers) == {"00"}, paying.answers
    assert pay(live, new_purchase("wechat", terminal="K0000001", merchant=KIOSK))["39"] == "57"  # suspended
    assert pay(live, new_purchase("wechat", terminal=NEW_TERMINAL, merchant=SHOP))["39"] == "00"
    log = live.log_path.read_text()
    assert "configuration changes that apply only after a restart" in log and "$.switch" in log
    # The file as it was, by SIGHUP: the merchant takes payments again, the terminal is gone.
    before = reloads(live).get("ok", 0)
    live.process.send_signal(signal.SIGHUP)
    wait_for_reloads(live, "ok", before + 1)
    assert pay(live, new_purchase("wechat", terminal="K0000001", merchant=KIOSK))["39"] == "00"
    assert pay(live, new_purchase("wechat", terminal=NEW_TERMINAL, merchant=SHOP))["39"] == "03"


def test_a_merchants_rate_quota_changes_live(live):
    """The kiosk's own quota at Alipay, 5 a second, cut to one a hundred seconds: its second payment
    is refused before the channel (91); back to 5 a second, it pays again."""
    original = live.config.read_text()
    slow, n = re.subn(r"rate_per_s = \{ alipay = 5 \}", "rate_per_s = { alipay = 0.01 }", original)
    assert n == 1
    try:
        live.config.write_text(slow)
        before = reloads(live).get("ok", 0)
        live.process.send_signal(signal.SIGHUP)
        wait_for_reloads(live, "ok", before + 1)
        answers = [pay(live, new_purchase("alipay", terminal="K0000001", merchant=KIOSK))["39"] for _ in range(2)]
        assert answers == ["00", "91"]
    finally:
        live.config.write_text(original)
    before = reloads(live).get("ok", 0)
    live.process.send_signal(signal.SIGHUP)
    wait_for_reloads(live, "ok", before + 1)
    assert pay(live, new_purchase("alipay", terminal="K0000001", merchant=KIOSK))["39"] == "00"
