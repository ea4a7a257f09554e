"""``paysw keys``: a new LMK (never over an old one), keys imported from files and generated,
rotated to new versions, listed by check value only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hsm import algorithms
from tests.conftest import DEMO


def paysw_keys(config: Path, database_url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "switch.cli", "keys", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "SWITCH_DATABASE_URL": database_url},
    )


def test_lmk_import_generate_rotate_list(tmp_path, database_url, switch):
    text = (DEMO / "switch.toml").read_text().replace('"keys/', f'"{DEMO}/keys/')
    config = tmp_path / "switch.toml"
    config.write_text(text.replace(f'lmk_file = "{DEMO}/keys/lmk"', 'lmk_file = "lmk"'))
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
