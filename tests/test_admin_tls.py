"""TLS on the admin endpoint (``switch.admin_tls``): a switch whose operator actions carry the
admin token over a network serves them over https only, and its clients (``paysw channel``, the
console) check its certificate; the configuration refuses a non-loopback admin address without it."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import msgspec
import pytest

from bench.demo_config import DEMO_DIR
from switch.admin_tls import client_tls, renew_admin_tls, server_tls, trusting
from switch.cli import main as cli
from switch.config import ConfigError, cross_check, load_config
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


def test_the_admin_endpoint_speaks_only_https_and_its_clients_check_its_certificate(tls_switch, tmp_path, capsys):
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

    # Given by address: https with the CA; a certificate the CA did not sign, or plain http off
    # loopback with the token, refused (the latter before anything is sent).
    given = ["--admin", f"https://127.0.0.1:{tls_switch.admin}", "--data-dir", str(tls_switch.data_dir)]
    cert = Path(load_config(tls_switch.config).switch.admin_tls_ca)
    (tmp_path / "other").mkdir()
    other, _ = self_signed(tmp_path / "other", "another admin")
    assert cli(["channel", "disable", "inbank", *given, "--ca", str(cert)]) == 0
    assert channels(tls_switch)["inbank"]["enabled"] is False
    capsys.readouterr()
    assert cli(["channel", "enable", "inbank", *given, "--ca", str(other)]) == 1
    assert "CERTIFICATE_VERIFY_FAILED" in capsys.readouterr().out
    assert channels(tls_switch)["inbank"]["enabled"] is False
    away = ["--admin", "192.0.2.1:9583", "--data-dir", str(tls_switch.data_dir)]
    assert cli(["channel", "enable", "inbank", *away]) == 2
    assert "refused: the admin token would go to 192.0.2.1:9583 in clear" in capsys.readouterr().out
    assert cli(["channel", "enable", "inbank", *given, "--ca", str(cert)]) == 0
    # Given by address with the configuration: its CA (a wildcard admin_listen is no address for a certificate).
    assert cli(["channel", "list", *operator, "--admin", f"https://127.0.0.1:{tls_switch.admin}"]) == 0
    assert cli(["channel", "list", "--admin", f"127.0.0.1:{tls_switch.admin}", "--ca", str(cert)]) == 2  # not https

    async def console_view(tls: ssl.SSLContext) -> list:
        seen = Channels([f"127.0.0.1:{tls_switch.admin}"], tls_switch.token, tls)
        try:
            return await seen.status()
        finally:
            await seen.close()

    [(_, status)] = asyncio.run(console_view(client_tls(load_config(tls_switch.config))))
    assert isinstance(status, dict) and status["inbank"]["enabled"] is True, status
    [(_, refused)] = asyncio.run(console_view(trusting(other, "test")))
    assert isinstance(refused, str) and "certificate verify failed" in refused.lower(), refused


@pytest.mark.parametrize("given", ["notaport", "10.0.0.1:x", "https://10.0.0.1:9583/path", "https://"])
def test_paysw_channel_says_what_an_admin_address_is_when_given_another(tmp_path, capsys, given):
    token = tmp_path / "token"
    token.write_text("a-token-of-the-operators-own-0123456789\n")
    token.chmod(0o600)
    assert cli(["channel", "disable", "wechat", "--admin", given, "--token-file", str(token)]) == 2
    assert f"--admin expects HOST:PORT or https://HOST:PORT, not {given!r}" in capsys.readouterr().err


def test_a_wildcard_admin_address_with_tls_is_no_address_for_its_clients(tmp_path, capsys):
    """No certificate names 0.0.0.0: paysw channel and the console say to give them the address one
    names, rather than fail the certificate's check."""
    cert, key = self_signed(tmp_path, "paysw admin (test)")
    (tmp_path / "token").write_text("a-token-of-the-operators-own-0123456789\n")
    (tmp_path / "token").chmod(0o600)
    settings = (f'[switch]\nadmin_tls_cert = "{cert}"\nadmin_tls_key = "{key}"\nadmin_tls_ca = "{cert}"\n'
                'admin_token_file = "token"\n')  # fmt: skip
    text = (DEMO_DIR / "switch.toml").read_text()
    wildcard = 'admin_listen = "0.0.0.0:9583"'
    for was, now in (
        ("[switch]\n", settings),
        ("demo = true", "demo = false"),
        ('admin_listen = "127.0.0.1:9583"', wildcard),
    ):
        text = text.replace(was, now, 1)
    config = tmp_path / "switch.toml"
    config.write_text(text)
    for name in ("keys", "risk", "simulators.toml"):
        (tmp_path / name).symlink_to(DEMO_DIR / name)
    assert cli(["channel", "list", "--config", str(config)]) == 2
    said = capsys.readouterr().err
    assert "give --admin https://HOST:PORT the address the admin endpoint's certificate names" in said
    serve = ["console", "serve", "--config", str(config), "--data-dir", str(tmp_path / "data")]
    served = subprocess.run([sys.executable, "-m", "switch.cli", *serve], capture_output=True, text=True, timeout=60)
    assert served.returncode == 2 and "give [console] admin_endpoints the address" in served.stderr, served.stderr
    assert not (tmp_path / "data").exists()  # said before any database started


def _with(config, **switch) -> list[str]:
    return cross_check(msgspec.structs.replace(config, switch=msgspec.structs.replace(config.switch, **switch)))


def test_a_non_loopback_admin_address_needs_tls(tmp_path):
    config = load_config(DEMO_DIR / "switch.toml")
    token = tmp_path / "admin_token"
    token.write_text("a-token-of-the-operators-own-0123456789\n")
    token.chmod(0o600)
    away = {"admin_listen": "10.0.0.5:9583", "admin_token_file": str(token), "demo": False}
    clear = [p for p in _with(config, **away) if p.startswith("$.switch.admin")]
    assert len(clear) == 1 and clear[0].startswith("$.switch.admin_listen: 10.0.0.5:9583 is not a loopback address: "
                                                   "set admin_tls_cert and admin_tls_key"), clear  # fmt: skip
    secured = _with(config, **away, admin_tls_cert="admin.pem", admin_tls_key="admin.key")
    assert not [p for p in secured if p.startswith("$.switch.admin")], secured  # the files are the switch's to read
    half = _with(config, admin_tls_cert="admin.pem")
    assert "$.switch.admin_tls_key: expected with the other (both or neither)" in half
    console = msgspec.structs.replace(config.console, admin_endpoints=["10.0.0.6:9583"])
    with_console = msgspec.structs.replace(config, console=console)
    assert any(p.startswith("$.console.admin_endpoints[0]") for p in cross_check(with_console))
    tls = msgspec.structs.replace(with_console.switch, admin_tls_cert="admin.pem", admin_tls_key="admin.key")
    assert not any(p.startswith("$.console") for p in cross_check(msgspec.structs.replace(with_console, switch=tls)))


def test_the_switch_refuses_to_start_on_tls_files_it_cannot_serve_with(tmp_path):
    """Before anything starts (``paysw run`` exits 2 with the setting named): a key open to other
    users, a key that is not the certificate's, a certificate out of its dates."""
    config = load_config(DEMO_DIR / "switch.toml")
    (tmp_path / "good").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "old").mkdir()
    cert, key = self_signed(tmp_path / "good", "admin")
    _, other_key = self_signed(tmp_path / "other", "another")
    old_cert, old_key = self_signed(tmp_path / "old", "admin", ended_days_ago=2)

    def served(cert: Path, key: Path, demo: bool = False) -> ssl.SSLContext | None:
        section = msgspec.structs.replace(config.switch, admin_tls_cert=str(cert), admin_tls_key=str(key), demo=demo)
        return server_tls(msgspec.structs.replace(config, switch=section))

    assert isinstance(served(cert, key), ssl.SSLContext)
    with pytest.raises(ConfigError, match=r"\$\.switch\.admin_tls_cert and admin_tls_key: cannot serve TLS"):
        served(cert, other_key)
    with pytest.raises(ConfigError, match=r"\$\.switch\.admin_tls_cert: .* UTC, not now"):
        served(old_cert, old_key)
    key.chmod(0o644)
    with pytest.raises(ConfigError, match=r"\$\.switch\.admin_tls_key: .* open to other users"):
        served(cert, key)
    assert isinstance(served(cert, key, demo=True), ssl.SSLContext)  # the demo's relaxation, with a warning

    settings = f'[switch]\nadmin_tls_cert = "{cert}"\nadmin_tls_key = "{other_key}"\n'
    text = (DEMO_DIR / "switch.toml").read_text().replace("[switch]\n", settings, 1)
    (tmp_path / "switch.toml").write_text(text)
    (tmp_path / "keys").symlink_to(DEMO_DIR / "keys")
    for name in ("risk", "simulators.toml"):
        (tmp_path / name).symlink_to(DEMO_DIR / name)
    run = subprocess.run(
        [sys.executable, "-m", "switch.cli", "run", "--config", str(tmp_path / "switch.toml"), "--data-dir",
         str(tmp_path / "data")], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr[-2000:]
    assert "configuration error: $.switch.admin_tls_cert and admin_tls_key: cannot serve TLS" in run.stderr
    assert "Traceback" not in run.stderr


def test_a_renewed_certificate_is_served_after_a_reload_with_no_restart(tls_switch, tmp_path):
    """SIGHUP (or ``paysw reload``) reads the certificate and key at their paths again: a renewed
    one is served to new connections; a pair it cannot serve with is refused, the running one kept."""
    settings = load_config(tls_switch.config).switch
    cert, key = Path(settings.admin_tls_cert), Path(settings.admin_tls_key)
    running = cert.read_bytes(), key.read_bytes()
    (tmp_path / "renewed").mkdir()
    renewed_cert, renewed_key = self_signed(tmp_path / "renewed", "paysw admin (renewed)")

    def served() -> bytes:  # what a new connection is shown (not verified: the old CA is the test's)
        return ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate(("127.0.0.1", tls_switch.admin), timeout=5))

    def shown(pem: bytes, seconds: float = 15) -> bool:
        deadline = time.monotonic() + seconds
        while served() != ssl.PEM_cert_to_DER_cert(pem.decode()):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    try:
        cert.write_bytes(renewed_cert.read_bytes())
        key.write_bytes(renewed_key.read_bytes())
        tls_switch.process.send_signal(signal.SIGHUP)
        assert shown(renewed_cert.read_bytes()), "the renewed certificate was not served"
        cert.write_bytes(running[0])  # the old certificate with the renewed key: refused, the renewed pair kept
        tls_switch.process.send_signal(signal.SIGHUP)
        time.sleep(2)
        assert served() == ssl.PEM_cert_to_DER_cert(renewed_cert.read_text())
        assert "the admin endpoint's certificate not read again" in tls_switch.log_path.read_text()
    finally:  # the module's other tests trust the first certificate
        cert.write_bytes(running[0])
        key.write_bytes(running[1])
        tls_switch.process.send_signal(signal.SIGHUP)
    assert shown(running[0])


def served_by(context: ssl.SSLContext) -> bytes:
    """The certificate ``context`` shows a client, from a handshake in memory (DER)."""
    client = ssl.create_default_context()
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    ours = client.wrap_bio(to_client, to_server)
    theirs = context.wrap_bio(server_in, server_out, server_side=True)
    for _ in range(10):
        for side in (ours, theirs):
            with contextlib.suppress(ssl.SSLWantReadError):  # its turn comes when the other side has written
                side.do_handshake()
        server_in.write(to_server.read())
        to_client.write(server_out.read())
    return ours.getpeercert(binary_form=True)


def test_renewal_outside_the_demo_reads_an_owner_only_key(tmp_path):
    """Outside the demo a key open to other users is refused, so the private copy a renewal
    checks must be owner-only too (written with the umask's mode, every renewal was refused)."""
    (tmp_path / "first").mkdir()
    (tmp_path / "renewed").mkdir()
    cert, key = self_signed(tmp_path / "first", "paysw admin (test)")
    config = load_config(DEMO_DIR / "switch.toml")
    switch = msgspec.structs.replace(config.switch, admin_tls_cert=str(cert), admin_tls_key=str(key), demo=False)
    config = msgspec.structs.replace(config, switch=switch)
    running = server_tls(config)
    renewed_cert, renewed_key = self_signed(tmp_path / "renewed", "paysw admin (renewed)")
    cert.write_bytes(renewed_cert.read_bytes())
    key.write_bytes(renewed_key.read_bytes())
    renew_admin_tls(running, config)
    assert served_by(running) == ssl.PEM_cert_to_DER_cert(renewed_cert.read_text())
