"""Configuration: the demo file is valid; every bad key or value is a clear error."""

import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from bench.demo_config import DEMO_DIR, DEMO_SWITCH_CONFIG
from switch.config import ConfigError, load_config

DEMO_TEXT = DEMO_SWITCH_CONFIG.read_text()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "switch.toml"
    path.write_text(text.replace('"keys/', f'"{DEMO_DIR}/keys/'))
    return path


def test_demo_configuration_is_valid():
    config = load_config(DEMO_SWITCH_CONFIG)
    assert set(config.channels) == {"wechat", "alipay", "unionpay", "ecny", "inbank"}
    assert config.switch.listen == "127.0.0.1:8583"
    assert config.database.url == ""
    assert len(config.routing.codes) == 5


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.replace("[switch]\n", "[switch]\nlisten_port = 1\n"), r"unknown field `listen_port`"),
        (lambda t: t.replace("pool_size = 6", 'pool_size = "six"'), r"\$\.database\.pool_size"),
        (lambda t: t.replace("pool_size = 6", "pool_size = 500"), r"<= 90 - at `\$\.database\.pool_size`"),
        (lambda t: t.replace('listen = "127.0.0.1:8583"', 'listen = "8583"'), r"\$\.switch\.listen"),
        (lambda t: t.replace('kind = "alipay"', 'kind = "paypal"'), r"\$\.channels\.alipay\.kind: 'paypal'"),
        (lambda t: t.replace('channel = "ecny"', 'channel = "dcep"'), r"unknown channel 'dcep'"),
        (lambda t: t.replace('merchant = "898310048990002"', 'merchant = "898310048999999"'), r"unknown merchant"),
        (lambda t: t.replace('id = "T0000001"', 'id = "T1"'), r"\$\.terminals\[0\]\.id"),
        (
            lambda t: t.replace('backend = "software"', 'backend = "pkcs11", pin_file = "keys/nope"'),
            r"pin_file: no file .*keys/nope",
        ),
        (lambda t: t.replace('"sm2-sm3"', '"sm2"', 1), r"sign_algorithm: expected one of"),
        (lambda t: t.replace("[switch]", "[switch"), r"not valid TOML"),
    ],
)
def test_bad_configuration_is_a_clear_error(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, change(DEMO_TEXT)))


def test_cli_reports_a_bad_configuration_without_a_traceback(tmp_path):
    path = write(tmp_path, DEMO_TEXT.replace("pool_size = 6", "pool_size = 0"))
    result = subprocess.run(
        [sys.executable, "-m", "switch.cli", "run", "--config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "configuration error" in result.stderr and "$.database.pool_size" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [[], ["run"], ["sim"], ["demo"]])
def test_every_command_has_help(command):
    result = subprocess.run(
        [sys.executable, "-m", "switch.cli", *command, "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert "usage: paysw" in result.stdout


def test_a_channel_bulkhead_that_could_fill_the_switch_is_warned_about():
    from switch.config import sizing_warnings

    config = load_config(DEMO_SWITCH_CONFIG)
    assert sizing_warnings(config) == []  # the demo's sizes: 2048 per channel under 10,000
    small = msgspec.structs.replace(config, switch=msgspec.structs.replace(config.switch, max_in_flight=3000))
    warned = sizing_warnings(small)
    assert len(warned) == len(config.channels) and "a hung wechat could make the whole switch shed" in warned[0]
