"""A sixth channel from one package: Lake Pay (``tests/lakepay``), a package outside
``protocols/channels`` with its own request and answer shapes, its own signature and statement
format and its simulated side, is added to the real switch by configuration alone, and carries a
purchase, a customer still confirming (queried), a reversal (cancelled), a refund and the day's
statement (reconciled with no difference)."""

from __future__ import annotations

import datetime as dt
import os
import secrets
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from bench.traffic import Stans, purchase, refund, reversal
from protocols.channels import builtin_kinds, channel_of
from tests.conftest import KEYS, Ports, SwitchProcess, free_port, run, simulators_running
from tests.support import MERCHANT, TERMINAL, connected, journal_row, out_trade_no, sim_ledger, wait_for_state

ROOT = Path(__file__).resolve().parent.parent
PREFIX, LENGTH = "77", 18  # Lake Pay's payment codes
STANS = Stans(start=500_000)
RECON = [sys.executable, "-m", "switch.cli", "recon"]


def lake_code(suffix: str) -> str:
    return PREFIX + secrets.choice("123456789") * (LENGTH - len(PREFIX) - 2) + suffix


def hmac_keys(key: str) -> str:
    """Lake Pay's keys table: one shared secret (a key store label, or a file for the simulator)."""
    scheme = "hmac-sha256"
    return f'{{ sign_algorithm = "{scheme}", sign_key = "{key}", verify_algorithm = "{scheme}", verify_key = "{key}" }}'


def with_lake_pay(config_dir: Path, folder: Path, port: int, secret_file: Path) -> Path:
    """The test configuration plus Lake Pay: configuration only (its channel, account and key,
    a route, the merchant's permission)."""
    manifest = (KEYS / "manifest.toml").read_text().replace('file = "', f'file = "{KEYS}/')
    manifest += f'\n[keys."lake:secret"]\nkind = "secret"\nfile = "{secret_file}"\n'
    (folder / "manifest.toml").write_text(manifest)
    text = (config_dir / "switch.toml").read_text()
    text = text.replace(f'key_manifest = "{KEYS}/manifest.toml"', f'key_manifest = "{folder}/manifest.toml"')
    text = text.replace("[switch]\n", '[switch]\nchannel_packages = ["tests.lakepay"]\n', 1)
    text = text.replace(
        'channels = ["wechat", "alipay", "unionpay", "ecny", "inbank"]',
        'channels = ["wechat", "alipay", "unionpay", "ecny", "inbank", "lake"]',
        1,
    )
    text = text.replace(
        "[[routing.codes]]",
        f'[[routing.codes]]\nchannel = "lake"\nprefixes = ["{PREFIX}"]\nlengths = [{LENGTH}]\n\n[[routing.codes]]',
        1,
    )
    keys = hmac_keys("lake:secret")
    text += (
        '\n[channels.lake]\nkind = "tests.lakepay"\nquery_interval_ms = 500\npayment_window_ms = 4000\n'
        f'actor = {{ endpoint = "http://127.0.0.1:{port}" }}\n'
        f'account = {{ merchant_no = "LAKE-0001", keys = {keys} }}\n'
    )
    path = folder / "switch.toml"
    path.write_text(text)
    return path


def simulator_config(folder: Path, port: int, control: int, secret_file: Path) -> Path:
    path = folder / "simulators.toml"
    path.write_text(
        f'[simulators.lake]\nkind = "tests.lakepay"\nlisten = "127.0.0.1:{port}"\n'
        f'control_listen = "127.0.0.1:{control}"\nlatency_ms = 2\npaying_ms = 1500\n'
        f"keys = {hmac_keys(str(secret_file))}\n"
    )
    return path


def test_the_package_is_no_built_in_channel():
    assert "lakepay" not in builtin_kinds() and "tests.lakepay" not in builtin_kinds()
    assert channel_of("tests.lakepay").kind == "tests.lakepay"


def test_a_sixth_channel_from_one_package_carries_every_flow(config_dir, database_url, tmp_path):
    port, control = free_port(), free_port()
    secret_file = tmp_path / "lake_secret"
    secret_file.write_text(secrets.token_hex(32))
    switch_config = with_lake_pay(config_dir, tmp_path, port, secret_file)
    ports = Ports({"lake": port}, {"lake": control})
    switch = SwitchProcess(switch_config, database_url, tmp_path / "switch.log")
    # The switch, its Ray workers and the simulators find the package as any installed one.
    switch.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

    with simulators_running(simulator_config(tmp_path, port, control, secret_file), ports, database_url) as sims:
        switch.start()
        try:
            run(_every_flow(switch, database_url, sims))
            _statement_reconciles(switch_config, database_url, switch.env)
        finally:
            assert switch.stop() == 0, f"the switch did not stop cleanly; see {switch.log_path}"


async def _every_flow(switch: SwitchProcess, database_url: str, sims: dict[str, int]) -> None:
    def pay(suffix: str, amount: int) -> dict[str, str]:
        return purchase(TERMINAL, MERCHANT, lake_code(suffix), amount, STANS.next(TERMINAL))

    paid_request, paying_request, reversed_request = pay("00", 4200), pay("09", 1500), pay("00", 700)
    async with connected(switch) as client:
        paid = await client.request(paid_request)
        paying = await client.request(paying_request)  # the customer confirms after 1.5 s: queried
        to_reverse = await client.request(reversed_request)
        reversed_ = await client.request(reversal(reversed_request, STANS.next(TERMINAL)))
        refunded = await client.request(refund(paid_request, paid["37"], 1200, STANS.next(TERMINAL)))

    assert (paid["39"], paying["39"], to_reverse["39"], reversed_["39"], refunded["39"]) == ("00",) * 5
    row = await journal_row(database_url, paid["37"])
    assert (row["channel"], row["state"], row["refunded_fen"]) == ("lake", "APPROVED", 1200)
    assert (await journal_row(database_url, paying["37"]))["state"] == "APPROVED"
    await wait_for_state(database_url, to_reverse["37"], {"REVERSED"})

    ledger = sim_ledger(sims, "lake")
    assert ledger[out_trade_no(paid["37"])]["status"] == "PAID"
    assert ledger[out_trade_no(paid["37"])]["refunded_fen"] == 1200
    assert ledger[out_trade_no(paying["37"])]["status"] == "PAID"
    assert ledger[out_trade_no(to_reverse["37"])]["status"] == "REVERSED"


def _statement_reconciles(switch_config: Path, database_url: str, env: dict[str, str]) -> None:
    """``paysw recon`` downloads today's Lake Pay statement through the package's download and
    format, and finds no difference for the orders above."""
    today = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=8)).date()
    done = subprocess.run(
        [*RECON, "--config", str(switch_config), "--channel", "lake", "--date", today.isoformat()],
        env={**env, "SWITCH_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr

    async def items() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(database_url)
        try:
            batch = await conn.fetchval(
                "SELECT id FROM recon_batch WHERE channel = 'lake' AND day = $1 ORDER BY id DESC LIMIT 1", today
            )
            assert batch is not None, "no reconciliation batch for lake"
            return await conn.fetch("SELECT class, status, out_trade_no FROM recon_item WHERE batch_id = $1", batch)
        finally:
            await conn.close()

    found = run(items())
    assert [dict(i) for i in found if i["status"] != "MATCHED"] == []
    assert len(found) >= 4  # the paid, the confirmed, the reversed purchase and the refund, each matched


@pytest.fixture(autouse=True)
def _lake_needs_the_test_configuration(config_dir):
    """The test configuration's routing and merchant lines this test extends (a change there
    should fail here loudly, not quietly test something else)."""
    text = (config_dir / "switch.toml").read_text()
    assert 'channels = ["wechat", "alipay", "unionpay", "ecny", "inbank"]' in text and "[[routing.codes]]" in text
