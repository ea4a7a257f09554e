"""The admin endpoint: operator actions always need the admin token (the configured one, else the
one the switch generated in its data folder); reads never do."""

from __future__ import annotations

import asyncio
import json
import shutil
import stat
import subprocess
import sys
import urllib.error
import urllib.request

from aiohttp import ClientSession, web

from bench.demo_config import DEMO_SWITCH_CONFIG
from switch.admin import admin_app
from switch.admin_token import GENERATED_TOKEN_FILE, switch_token
from switch.config import load_config
from switch.metrics import Metrics


def post(switch, path: str, authorization: str | None = None) -> tuple[int, dict]:
    headers = {"Authorization": authorization} if authorization is not None else {}
    request = urllib.request.Request(f"http://127.0.0.1:{switch.admin}{path}", method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def inbank_enabled(switch) -> bool:
    status, body = switch.get("/channels")
    assert status == 200, body  # reading needs no token
    return json.loads(body)["inbank"]["enabled"]


def test_a_running_switch_acts_only_with_its_admin_token(switch):
    assert inbank_enabled(switch)
    for authorization in (
        None,
        "",
        "Bearer",
        "Bearer nope",
        "Bearer \u00e9",
        f"Basic {switch.token}",
        f"Bearer {switch.token}x",
    ):
        status, answer = post(switch, "/channels/inbank/disable", authorization)
        assert status == 401, authorization
        assert "admin token" in answer["error"]
        assert inbank_enabled(switch), f"disabled with Authorization {authorization!r}"
    assert switch.get("/metrics")[0] == switch.get("/healthz")[0] == switch.get("/readyz")[0] == 200
    try:
        status, answer = post(switch, "/channels/inbank/disable", f"Bearer {switch.token}")
        assert (status, answer["action"], answer["enabled"]) == (200, "disable", False)
        assert not inbank_enabled(switch)
    finally:
        assert post(switch, "/channels/inbank/enable", f"Bearer {switch.token}")[0] == 200
    assert inbank_enabled(switch)


def test_the_generated_token_file_is_owner_only_and_never_logged(switch):
    path = switch.data_dir / GENERATED_TOKEN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(switch.token) >= 40  # secrets.token_urlsafe(32)
    assert switch.token not in switch.log_path.read_text()


def test_the_generated_token_is_made_once_and_reused(tmp_path):
    config = load_config(DEMO_SWITCH_CONFIG)
    data_dir = tmp_path / "not-yet"
    first = switch_token(config, data_dir)
    path = data_dir / GENERATED_TOKEN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert switch_token(config, data_dir) == first  # the next start: same token
    assert switch_token(config, tmp_path / "other") != first


def test_paysw_channel_finds_the_generated_token_from_the_switchs_folder(switch, tmp_path):
    """As in the README's rehearsal: from the folder the switch runs in, no token option."""
    (tmp_path / ".paysw").mkdir()
    shutil.copy2(switch.data_dir / GENERATED_TOKEN_FILE, tmp_path / ".paysw" / GENERATED_TOKEN_FILE)
    admin = f"127.0.0.1:{switch.admin}"

    def paysw_channel(action: str, cwd) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "switch.cli", "channel", action, "inbank", "--admin", admin]
        return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)

    try:
        disabled = paysw_channel("disable", tmp_path)
        assert disabled.returncode == 0, disabled.stdout + disabled.stderr
        assert "inbank: disable done" in disabled.stdout
        assert not inbank_enabled(switch)
        elsewhere = paysw_channel("enable", tmp_path / ".paysw")  # no token there: a clear error
        assert elsewhere.returncode == 2
        assert "admin token file" in elsewhere.stderr and "--token-file" in elsewhere.stderr
        assert not inbank_enabled(switch)
    finally:
        enabled = paysw_channel("enable", tmp_path)
    assert enabled.returncode == 0, enabled.stdout + enabled.stderr
    assert inbank_enabled(switch)


def test_without_a_token_operator_actions_are_refused_not_open():
    async def scenario():
        runner = web.AppRunner(admin_app(Metrics(), lambda: True, {}, token=""))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            async with ClientSession() as http:
                bare = await http.post(f"http://127.0.0.1:{port}/channels/wechat/disable")
                empty = await http.post(
                    f"http://127.0.0.1:{port}/channels/wechat/disable", headers={"Authorization": "Bearer "}
                )
                assert (bare.status, empty.status) == (403, 403)
                assert "no admin token" in (await bare.json())["error"]
        finally:
            await runner.cleanup()

    asyncio.run(scenario())
