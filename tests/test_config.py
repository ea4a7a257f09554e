"""Configuration: the demo file is valid; every bad key or value is a clear error."""

import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from bench.demo_config import DEMO_SWITCH_CONFIG, absolute_paths
from bench.stack import demo_config_in
from switch.config import ConfigError, load_config

DEMO_TEXT = DEMO_SWITCH_CONFIG.read_text()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "switch.toml"
    path.write_text(absolute_paths(text))
    return path


def test_the_benchmarks_run_the_demo_configuration_without_work_no_payment_asks_for(tmp_path):
    """No hourly reconciliation (it would catch up three hours beside the measurement) and no
    merchant notification URLs; the channels and the [switch] section as the demo's."""
    demo = load_config(DEMO_SWITCH_CONFIG)
    bench = load_config(demo_config_in(tmp_path))
    assert demo.recon.schedule_hourly and any(m.notify_url for m in demo.merchants)
    assert not bench.recon.schedule_hourly and not any(m.notify_url for m in bench.merchants)
    assert bench.channels.keys() == demo.channels.keys() and bench.switch == demo.switch


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
        (
            lambda t: t.replace('kind = "alipay"', 'kind = "paypal"'),
            r"\$\.channels\.alipay\.kind: no channel package 'paypal'; built in: alipay, ecny, inbank, legacy, unio",
        ),
        (
            lambda t: t.replace('kind = "alipay"', 'kind = "protocols.messages"').replace(
                "[switch]\n", '[switch]\nchannel_packages = ["protocols.messages"]\n'
            ),
            r"\$\.channels\.alipay\.kind: protocols\.messages is not a channel package",
        ),
        # A package outside the switch is code: loaded only when the configuration lists it.
        (
            lambda t: t.replace('kind = "alipay"', 'kind = "tests.lakepay"'),
            r"\$\.channels\.alipay\.kind: 'tests\.lakepay' is a package outside the switch: list it in",
        ),
        (
            lambda t: t.replace('kind = "alipay"', 'kind = ".wechat"').replace(
                "[switch]\n", '[switch]\nchannel_packages = [".wechat"]\n'
            ),
            r"\$\.channels\.alipay\.kind: '\.wechat' is not a package name",
        ),
        (
            lambda t: t.replace('"http://127.0.0.1:9102"', '"http://openapi.alipay.com"'),
            r"\$\.channels\.alipay\.actor\.endpoint: a channel off this host is reached over https",
        ),
        # The account is checked against the channel package's own schema, at its path in the file.
        (
            lambda t: t.replace('account = { app_id = "2014072300007148", ', "account = { "),
            r"missing required field `app_id` - at `\$\.channels\.alipay\.account`",
        ),
        (
            lambda t: t.replace('mch_id = "10000100", keys', "mch_id = 10000100, keys"),
            r"Expected `str`, got `int` - at `\$\.channels\.wechat\.account\.mch_id`",
        ),
        (
            lambda t: t.replace('cert_id = "69629715588", ', 'cert_id = "69629715588", merchant_key = "x", '),
            r"unknown field `merchant_key` - at `\$\.channels\.unionpay\.account`",
        ),
        (lambda t: t.replace('actor = { endpoint = "http://127.0.0.1:9105" }', "actor = { }"), r"`endpoint`"),
        (lambda t: t.replace('channel = "ecny"', 'channel = "dcep"'), r"unknown channel 'dcep'"),
        # msgspec calls an entry of a table of tables `[...]`: the error names the channel.
        (
            lambda t: t.replace('actor = { endpoint = "http://127.0.0.1:9105" }', 'actor = { endpoint = "x" }'),
            r"Expected `str` matching regex .* - at `\$\.channels\.inbank\.actor\.endpoint`",
        ),
        # A refund window past a year would outlive the journal's retention of its purchase.
        (
            lambda t: t.replace('kind = "inbank"\n', 'kind = "inbank"\nrefund_days = 366\n'),
            r"Expected `int` <= 365 - at `\$\.channels\.inbank\.refund_days`",
        ),
        (lambda t: t.replace('merchant = "898310048990002"', 'merchant = "898310048999999"'), r"unknown merchant"),
        (lambda t: t.replace('id = "T0000001"', 'id = "T1"'), r"\$\.terminals\[0\]\.id"),
        (
            lambda t: t.replace('backend = "software"', 'backend = "pkcs11", pin_file = "keys/nope"'),
            r"pin_file: no file .*keys/nope",
        ),
        (
            lambda t: t.replace('"sm2-sm3"', '"sm2"', 1),
            r"\$\.channels\.ecny\.account\.keys\.sign_algorithm: 'sm2' is not one of hmac-sha256, ",
        ),
        (lambda t: t.replace("[switch]", "[switch"), r"not valid TOML"),
        # A batch may not wait longer than 20 ms for company: that would be latency, not batching.
        (lambda t: t.replace("pool_size = 6\n", "pool_size = 6\nlinger_ms = 50\n"), r"\$\.database\.linger_ms"),
        (lambda t: t.replace("pool_size = 6\n", "pool_size = 6\nlinger_ms = -1\n"), r"\$\.database\.linger_ms"),
        # A password in a notification URL was logged with it, and its notifications tried forever.
        (
            lambda t: t.replace('"http://127.0.0.1:9590/notify"', '"https://shop:s3cret@merchant.example/cb"'),
            r"\$\.merchants\[0\]\.notify_url: no user or password in the URL",
        ),
        (
            lambda t: t.replace('"http://127.0.0.1:9590/notify"', '"https://merchant.example:abc/cb"'),
            r"\$\.merchants\[0\]\.notify_url: the port of .* is not a number",
        ),
        (
            lambda t: t.replace('kind = "inbank"\n', 'kind = "inbank"\nendpoint = "http://127.0.0.1:9105"\n'),
            r"unknown field `endpoint`.*now go in its `actor = \{ \.\.\. \}` table",
        ),
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


@pytest.mark.parametrize("command", [[], ["run"], ["sim"], ["demo"], ["channel"]])
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


def admin_at(listen: str, text: str = DEMO_TEXT) -> str:
    return text.replace('admin_listen = "127.0.0.1:9583"', f'admin_listen = "{listen}"')


def with_token_file(tmp_path: Path, content: str, mode: int, demo: bool, listen: str = "127.0.0.1:9583") -> Path:
    """The demo configuration naming an admin token file holding ``content`` with ``mode``."""
    token = tmp_path / "admin_token"
    token.write_text(content)
    token.chmod(mode)
    text = admin_at(listen).replace("demo = true", f"demo = {str(demo).lower()}")
    return write(tmp_path, text.replace("[switch]\n", '[switch]\nadmin_token_file = "admin_token"\n'))


@pytest.mark.parametrize(
    ("content", "mode", "demo", "message"),
    [
        (" \n\t\n", 0o600, False, r"\$\.switch\.admin_token_file: the admin token file .*admin_token is empty"),
        ("", 0o600, True, r"\$\.switch\.admin_token_file: the admin token file .*admin_token is empty"),
        ("s3cret", 0o640, False, r"\$\.switch\.admin_token_file: .*is open to other users \(mode 640\)"),
        ("s3cret", 0o604, False, r"\$\.switch\.admin_token_file: .*is open to other users \(mode 604\)"),
    ],
)
def test_a_bad_admin_token_file_is_a_configuration_error(tmp_path, content, mode, demo, message):
    with pytest.raises(ConfigError, match=message):
        load_config(with_token_file(tmp_path, content, mode, demo))


def test_a_demo_configuration_may_have_a_token_file_open_to_others(tmp_path):
    from switch.admin_token import configured_token

    config = load_config(with_token_file(tmp_path, "s3cret\n", 0o644, demo=True))
    assert configured_token(config, tmp_path / "unused") == "s3cret"


def test_a_missing_admin_token_file_is_a_configuration_error(tmp_path):
    path = write(tmp_path, DEMO_TEXT.replace("[switch]\n", '[switch]\nadmin_token_file = "nope"\n'))
    with pytest.raises(ConfigError, match=r"\$\.switch\.admin_token_file: cannot read the admin token file .*nope"):
        load_config(path)


@pytest.mark.parametrize("listen", ["0.0.0.0:9583", "10.1.2.3:9583", "admin.example:9583"])
def test_an_admin_address_off_loopback_needs_a_token_file_and_tls(tmp_path, listen):
    with pytest.raises(ConfigError, match=rf"\$\.switch\.admin_listen: {listen} is not a loopback address: set adm"):
        load_config(write(tmp_path, admin_at(listen)))
    tokened = with_token_file(tmp_path, "s3cret", 0o600, demo=False, listen=listen)
    with pytest.raises(ConfigError, match=rf"\$\.switch\.admin_listen: {listen} .* set admin_tls_cert and"):
        load_config(tokened)
    tls = '[switch]\nadmin_tls_cert = "admin.pem"\nadmin_tls_key = "admin.key"\n'
    assert load_config(write(tmp_path, tokened.read_text().replace("[switch]\n", tls)))


@pytest.mark.parametrize("listen", ["127.0.0.1:9583", "127.0.0.2:9583", "localhost:9583"])
def test_a_loopback_admin_address_needs_no_token_file(tmp_path, listen):
    assert load_config(write(tmp_path, admin_at(listen))).switch.admin_listen == listen


def test_the_switch_refuses_to_start_with_its_admin_address_open_and_no_token(tmp_path):
    path = write(tmp_path, admin_at("0.0.0.0:9583"))
    result = subprocess.run(
        [sys.executable, "-m", "switch.cli", "run", "--config", str(path), "--data-dir", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "configuration error" in result.stderr and "$.switch.admin_listen: 0.0.0.0:9583" in result.stderr
    assert not (tmp_path / "data").exists()  # refused before anything ran


def test_a_demo_configuration_stays_on_loopback(tmp_path):
    """The published demo keys and relaxations are for a demo on this machine, never a network."""
    open_listen = DEMO_TEXT.replace('listen = "127.0.0.1:8583"', 'listen = "0.0.0.0:8583"')
    with pytest.raises(ConfigError, match=r"\$\.switch\.listen: 0\.0\.0\.0:8583 is not a loopback address, and demo"):
        load_config(write(tmp_path, open_listen))
    assert load_config(write(tmp_path, open_listen.replace("demo = true", "demo = false"))).switch.demo is False
    open_api = DEMO_TEXT.replace('listen = "127.0.0.1:9584"', 'listen = "0.0.0.0:9584"')
    with pytest.raises(ConfigError, match=r"\$\.merchant_api\.listen: 0\.0\.0\.0:9584 is not a loopback address"):
        load_config(write(tmp_path, open_api))


def test_the_merchant_api_tells_the_channels_an_address_they_can_post_to(tmp_path):
    """Its notify_url is public_url's, else its listen address, which a wildcard is not; and the
    channels refuse one with a query."""
    wildcard = DEMO_TEXT.replace('listen = "127.0.0.1:9584"', 'listen = "0.0.0.0:9584"').replace(
        "demo = true", "demo = false"
    )
    with pytest.raises(ConfigError, match=r"\$\.merchant_api\.public_url: needed with listen 0\.0\.0\.0:9584"):
        load_config(write(tmp_path, wildcard))
    public = wildcard.replace("[merchant_api]\n", '[merchant_api]\npublic_url = "https://pay.example-bank.cn"\n')
    assert load_config(write(tmp_path, public)).merchant_api.notify_base() == "https://pay.example-bank.cn"
    with pytest.raises(ConfigError, match=r"public_url"):
        load_config(write(tmp_path, public.replace("example-bank.cn", "example-bank.cn/?from=switch")))
