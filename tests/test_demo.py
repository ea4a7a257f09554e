"""``paysw demo``: the README's first command, run twice in the same folder; it prints the
summary for every channel and leaves nothing running."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.traffic import CODE_SHAPES

pytestmark = pytest.mark.usefixtures("demo_ports")  # the stack on the demo's fixed ports


def _processes(pattern: str) -> set[int]:
    found = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if pattern in cmdline:
                found.add(int(pid))
    return found


def test_demo_runs_twice_in_one_folder_and_stops_everything(tmp_path):
    data_dir = tmp_path / "paysw"
    for attempt in (1, 2):
        result = subprocess.run(
            [sys.executable, "-m", "switch.cli", "demo", "--count", "20", "--data-dir", str(data_dir)],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=tmp_path,
        )
        assert result.returncode == 0, f"attempt {attempt}: {result.stdout}\n{result.stderr}"
        for channel in CODE_SHAPES:
            line = re.search(rf"^{channel}\s+(\d+)\s+(\d+)", result.stdout, re.MULTILINE)
            assert line, f"no summary line for {channel}:\n{result.stdout}"
            count, approved = int(line[1]), int(line[2])
            assert count == 20 and approved >= 10
        assert "Traceback" not in result.stderr
        assert not (data_dir / "pg" / "postmaster.pid").exists(), "PostgreSQL left running"
        assert not _processes(str(data_dir)), "a process of the demo is still running"
    assert "terminal M0000001: signed on" in result.stdout
    assert "card 62" in result.stdout and "with PIN: 00" in result.stdout
    assert "PIN block bound to another card: 05 (as a wrong PIN, not sent; 3 such an hour, then 58)" in result.stdout
    assert "forged MAC: A0" in result.stdout
    hung_up = "hanging up while Alipay pays (3 s): recorded 05, CANCELLED at the channel; its 0400 when it is back: 00"
    assert hung_up in result.stdout, result.stdout
    assert "50,000.01 yuan: 61 (exceeds amount limit; never sent)" in result.stdout
    assert "25,000.00 yuan: 00, rules ['large-payment-watch (shadow)']" in result.stdout
    assert "black-listed: 00, then 62, rules ['blacklisted-code (enforce)']" in result.stdout
    assert "six times running: 00 00 00 00 00 65, rules ['code-burst (enforce)']" in result.stdout
    assert "suspended in the file: 00 before, 57 after (applied: True)" in result.stdout
    assert "an invalid file refused, the running configuration kept: True, the merchant still 57" in result.stdout
    assert "the file as it was: 00" in result.stdout
    assert "(named in the gray route): 00, handled by legacy" in result.stdout
    assert "shop 898310048990001: 00, handled by wechat" in result.stdout
    assert (
        "gray share moved to 100 % in the console, asked by demo and approved by demo-checker (four eyes): "
        "the shop's next purchase 00, by legacy"
    ) in result.stdout
    assert "terminal K0000001 suspended in the console: 57; active again: 00" in result.stdout
    assert (
        "terminal K0000001 black-listed in the console: 62; taken off, asked by demo and approved by demo-checker "
        "(four eyes): 00"
    ) in result.stdout
    assert re.search(r"the shop's purchase \d{12}: [4-9] events on its timeline", result.stdout), result.stdout
    for channel in CODE_SHAPES:  # a QR order on each, scanned, and the merchant's receipt of it
        assert re.search(
            rf"^  {channel}: code \S+, scanned: PAID; merchant notified: APPROVED purchase", result.stdout, re.M
        )
    told = re.search(
        r"terminal payments notified to the merchant \(signed, verified by its receiver\): (\d+)", result.stdout
    )
    assert told and int(told[1]) > 0
    journal = re.search(r"journal \(last 10 minutes\): (.*)", result.stdout)
    assert journal and "APPROVED=" in journal[1]
    # Retention as the journal's owner runs it each day: nothing of the demo's is old enough.
    retention = (
        r"retention: paysw journal archive --to journal-archive --drop: 0 days before \S+ in the journal \(exit 0;"
    )
    assert re.search(retention, result.stdout), result.stdout
