"""``paysw keys``: a new LMK (never over an old one), keys imported from files and generated,
rotated to new versions, listed by check value only."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from bench.demo_config import absolute_paths
from hsm import algorithms
from switch.journal.roles import runtime_url
from tests.conftest import DEMO, run


def paysw_keys(config: Path, database_url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "switch.cli", "keys", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "SWITCH_DATABASE_URL": database_url},
    )


def not_a_demo(folder: Path) -> Path:
    """The demo configuration in ``folder`` without its demo flag, its LMK file ``folder/lmk``."""
    text = re.sub(r"(?m)^demo = true.*\n", "", (DEMO / "switch.toml").read_text(), count=1)
    assert "demo = true" not in text
    config = folder / "switch.toml"
    config.write_text(absolute_paths(text.replace('lmk_file = "keys/lmk"', 'lmk_file = "lmk"')))
    return config


def test_the_demo_lmk_is_refused_outside_a_demo_configuration(tmp_path):
    config = not_a_demo(tmp_path)
    (tmp_path / "lmk").write_text((DEMO / "keys" / "lmk").read_text())
    (tmp_path / "lmk").chmod(0o600)  # a copy kept as a real LMK would be
    refused = paysw_keys(config, "postgresql://127.0.0.1:1/never-reached", "list")
    assert refused.returncode == 2
    assert "is the published demo LMK (check value F8A2BDF8): refused outside a demo" in refused.stderr


def test_lmk_import_generate_rotate_list(tmp_path, database_url, switch):
    database_url = run(runtime_url(database_url))  # the custodians' commands as the switch's role
    config = not_a_demo(tmp_path)  # with a new LMK of its own
    created = paysw_keys(config, database_url, "new-lmk")
    assert created.returncode == 0 and (tmp_path / "lmk").stat().st_mode & 0o777 == 0o600
    again = paysw_keys(config, database_url, "new-lmk")
    assert again.returncode == 2 and "unreadable" in again.stderr

    tmk = algorithms.random_des_key()
    (tmp_path / "tmk.hex").write_text(tmk.hex())
    imported = paysw_keys(
        config, database_url, "import", "--label", "cli:tmk", "--kind", "tmk", "--file", str(tmp_path / "tmk.hex")
    )
    assert imported.returncode == 0, imported.stderr
    assert algorithms.check_value(tmk) in imported.stdout
    generated = paysw_keys(config, database_url, "generate", "--label", "cli:ecny", "--kind", "private")
    assert generated.returncode == 0 and "SM2 public key for the channel: 04" in generated.stdout
    rotated = paysw_keys(config, database_url, "rotate", "--label", "cli:ecny")
    assert rotated.returncode == 0 and "cli:ecny v2 (private) generated" in rotated.stdout
    refused = paysw_keys(config, database_url, "generate", "--label", "cli:tmk2", "--kind", "tmk")
    assert refused.returncode == 2 and "import it" in refused.stderr

    listing = paysw_keys(config, database_url, "list")
    assert listing.returncode == 0
    rows = [line.split() for line in listing.stdout.splitlines() if line.startswith("cli:")]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("cli:ecny", "1", "private"),
        ("cli:ecny", "2", "private"),
        ("cli:tmk", "1", "tmk"),
    ]
    assert tmk.hex() not in listing.stdout.lower() and tmk.hex().upper() not in listing.stdout
