"""TLS on the admin endpoint (``switch.admin_tls``): a switch whose operator actions carry the
admin token over a network serves them over https only, and its clients (``paysw channel``, the
console) check its certificate; the configuration refuses a non-loopback admin address without it."""

from __future__ import annotations

import asyncio
import http.client
import json
import ssl
import urllib.error
import urllib.request

import msgspec
import pytest

from bench.demo_config import DEMO_DIR
from switch.admin_tls import client_tls
from switch.cli import main as cli
from switch.config import cross_check, load_config
from switch.console.channels import Channels
from tests.certs import self_signed
from tests.conftest import switch_with


@pytest.fixture(scope="module")
def tls_switch(config_dir, database_url, simulators, tmp_path_factory):
    folder = tmp_path_factory.mktemp("admin-tls")
    cert, key = self_signed(folder, "paysw admin (test)")
    settings = f'admin_tls_cert = "{cert}"\nadmin_tls_key = "{key}"\nadmin_tls_ca = "{cert}"\n'
    trust = ssl.create_default_context(cafile=cert)
    yield from switch_with(config_dir, database_url, folder, "admin-tls", [(r"(\[switch\]\n)", rf"\1{settings}")],
                           admin_tls=trust)  # fmt: skip


def channels(switch) -> dict:
    status, body = switch.get("/channels")
    assert status == 200, (status, body)
    return json.loads(body)


def test_the_admin_endpoint_speaks_only_https_and_its_clients_check_its_certificate(tls_switch):
    assert tls_switch.get("/readyz") == (200, '{"ready": true}')  # over https, the certificate checked
    with pytest.raises((http.client.HTTPException, OSError)):  # plain http: no answer at all
        urllib.request.urlopen(f"http://127.0.0.1:{tls_switch.admin}/readyz", timeout=5).read()
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):  # the system's CAs do not know it
        urllib.request.urlopen(f"https://127.0.0.1:{tls_switch.admin}/readyz", timeout=5)

    operator = ["--config", str(tls_switch.config), "--data-dir", str(tls_switch.data_dir)]
    assert cli(["channel", "disable", "inbank", *operator]) == 0  # paysw channel, over https with the token
    assert channels(tls_switch)["inbank"]["enabled"] is False
    assert cli(["channel", "enable", "inbank", *operator]) == 0
    assert channels(tls_switch)["inbank"]["enabled"] is True

    async def console_view() -> list:
        config = load_config(tls_switch.config)
        seen = Channels([f"127.0.0.1:{tls_switch.admin}"], tls_switch.token, client_tls(config))
        try:
            return await seen.status()
        finally:
            await seen.close()

    [(_, status)] = asyncio.run(console_view())
    assert isinstance(status, dict) and status["inbank"]["enabled"] is True, status


def _with(config, **switch) -> list[str]:
    return cross_check(msgspec.structs.replace(config, switch=msgspec.structs.replace(config.switch, **switch)))


def test_a_non_loopback_admin_address_needs_tls_and_its_files(tmp_path):
    config = load_config(DEMO_DIR / "switch.toml")
    cert, key = self_signed(tmp_path, "paysw admin (test)")
    token = tmp_path / "admin_token"
    token.write_text("a-token-of-the-operators-own-0123456789\n")
    token.chmod(0o600)
    away = {"admin_listen": "10.0.0.5:9583", "admin_token_file": str(token), "demo": False}
    clear = [p for p in _with(config, **away) if p.startswith("$.switch.admin")]
    assert len(clear) == 1 and clear[0].startswith("$.switch.admin_listen: 10.0.0.5:9583 is not a loopback address: "
                                                   "set admin_tls_cert and admin_tls_key"), clear  # fmt: skip
    secured = _with(config, **away, admin_tls_cert=str(cert), admin_tls_key=str(key))
    assert not [p for p in secured if p.startswith("$.switch.admin")], secured
    half = _with(config, admin_tls_cert=str(cert))
    assert "$.switch.admin_tls_key: expected with the other (both or neither)" in half
    missing = _with(config, admin_tls_cert=str(cert), admin_tls_key=str(tmp_path / "nope.key"))
    assert f"$.switch.admin_tls_key: no file {tmp_path / 'nope.key'}" in missing
    console = msgspec.structs.replace(config.console, admin_endpoints=["10.0.0.6:9583"])
    with_console = msgspec.structs.replace(config, console=console)
    assert any(p.startswith("$.console.admin_endpoints[0]") for p in cross_check(with_console))
    tls = msgspec.structs.replace(with_console.switch, admin_tls_cert=str(cert), admin_tls_key=str(key))
    assert not any(p.startswith("$.console") for p in cross_check(msgspec.structs.replace(with_console, switch=tls)))
