"""The links to channel actors across nodes: TLS both ways with certificates from the links' own
CA, the token check kept; whoever cannot show such a certificate reaches no channel."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from aiohttp import web

from actors.link import ActorLink, LinkAddress, WrongActor, client_tls
from actors.link_pki import make_pki
from actors.settings import LinkTls
from switch.app import check_links_across_nodes
from switch.config import ConfigError, RaySection
from tests.conftest import run
from tests.test_channel_worker import actor_link_to, request


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, LinkTls]:
    base = tmp_path_factory.mktemp("link-pki")
    links = make_pki(base / "links", "paysw links CA", ("actor", "frontend"))
    rogue = make_pki(base / "rogue", "another CA", ("frontend",))
    return {**links, "rogue": rogue["frontend"]}


def recording_channel() -> tuple[list[bytes], object]:
    calls: list[bytes] = []

    async def record(http_request):
        calls.append(await http_request.read())
        return web.Response(text="<xml><return_code>FAIL</return_code></xml>")

    return calls, record


async def _results_or_refusal(address: LinkAddress, tls: ssl.SSLContext | None, keys: list[int]) -> list[int] | None:
    """The keys of the results that come back for a batch of ``keys``; None when the actor
    refuses the link (at the handshake, or by hanging up)."""
    got: list[int] = []
    done, lost = asyncio.Event(), asyncio.Event()

    def on_results(results) -> None:
        got.extend(r.key for r in results)
        if len(got) == len(keys):
            done.set()

    try:
        link = await ActorLink.connect(address, on_results, lost.set, tls)
    except (ssl.SSLError, ConnectionError):
        return None
    link.send([request(key) for key in keys])
    waiters = [asyncio.ensure_future(event.wait()) for event in (done, lost)]
    await asyncio.wait(waiters, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    for waiter in waiters:
        waiter.cancel()
    link.close()
    return sorted(got) if done.is_set() else None


def test_a_tls_link_carries_a_batch_end_to_end(pki):
    calls, channel = recording_channel()

    async def scenario():
        async with actor_link_to(channel, pki["actor"]) as address:
            return await _results_or_refusal(address, client_tls(pki["frontend"]), [1, 2, 3])

    assert run(scenario()) == [1, 2, 3]
    assert len(calls) == 3


def test_a_front_end_without_a_certificate_of_the_links_ca_is_refused_and_nothing_is_processed(pki):
    calls, channel = recording_channel()
    no_certificate = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    no_certificate.check_hostname = False
    no_certificate.load_verify_locations(pki["actor"].ca)  # it trusts the actor, but shows nothing

    async def scenario():
        async with actor_link_to(channel, pki["actor"]) as address:
            rogue = await _results_or_refusal(address, client_tls(pki["rogue"]), [1])
            bare = await _results_or_refusal(address, no_certificate, [2])
            await asyncio.sleep(0.2)
            return rogue, bare

    assert run(scenario()) == (None, None)
    assert calls == []


def test_a_plaintext_front_end_is_refused_by_a_tls_link(pki):
    calls, channel = recording_channel()

    async def scenario():
        async with actor_link_to(channel, pki["actor"]) as address:
            refused = await _results_or_refusal(address, None, [1])  # the right token, in clear
            await asyncio.sleep(0.2)
            return refused

    assert run(scenario()) is None
    assert calls == []


def test_a_front_end_refuses_an_actor_whose_certificate_is_not_of_the_links_ca(pki):
    calls, channel = recording_channel()

    async def scenario():
        async with actor_link_to(channel, pki["rogue"]) as address:
            return await _results_or_refusal(address, client_tls(pki["frontend"]), [1])

    assert run(scenario()) is None
    assert calls == []


def test_links_across_nodes_need_tls_or_plaintext_said_outright(pki, caplog):
    check_links_across_nodes(RaySection(), None, on_loopback=True)  # a local Ray: nothing leaves the host
    check_links_across_nodes(RaySection(address="10.0.0.5:6379"), pki["frontend"], on_loopback=False)
    with pytest.raises(ConfigError, match=r"\$\.ray: .*link_tls_cert"):
        check_links_across_nodes(RaySection(address="auto"), None, on_loopback=False)
    check_links_across_nodes(RaySection(address="auto", plaintext_links=True), None, on_loopback=False)
    assert "plaintext" in caplog.text


def test_link_tls_files_go_together_and_must_exist(tmp_path: Path):
    from bench.demo_config import DEMO_SWITCH_CONFIG, absolute_paths
    from switch.config import link_tls, load_config

    def config_with(ray_lines: str):
        text = DEMO_SWITCH_CONFIG.read_text().replace('namespace = "paysw"\n', f'namespace = "paysw"\n{ray_lines}')
        path = tmp_path / "switch.toml"
        path.write_text(absolute_paths(text))
        return load_config(path)

    (tmp_path / "ca.pem").write_text("x")
    (tmp_path / "cert.pem").write_text("x")
    with pytest.raises(ConfigError, match=r"\$\.ray\.link_tls_key: expected a file name"):
        config_with('link_tls_cert = "cert.pem"\nlink_tls_ca = "ca.pem"\n')
    with pytest.raises(ConfigError, match=r"\$\.ray\.link_tls_key: no file .*/key\.pem"):
        config_with('link_tls_cert = "cert.pem"\nlink_tls_key = "key.pem"\nlink_tls_ca = "ca.pem"\n')
    (tmp_path / "key.pem").write_text("x")
    config = config_with('link_tls_cert = "cert.pem"\nlink_tls_key = "key.pem"\nlink_tls_ca = "ca.pem"\n')
    assert link_tls(config) == LinkTls(
        cert=str(tmp_path / "cert.pem"), key=str(tmp_path / "key.pem"), ca=str(tmp_path / "ca.pem")
    )
    assert link_tls(load_config(DEMO_SWITCH_CONFIG)) is None


def test_a_front_end_talks_only_to_the_actor_whose_certificate_ray_announced(pki):
    """Another party with a certificate of the links' own CA (a front end's, say) at the actor's
    address is refused before the token or any payment reaches it."""
    calls, channel = recording_channel()

    async def scenario():
        async with actor_link_to(channel, pki["actor"]) as genuine, actor_link_to(channel, pki["frontend"]) as posing:
            impostor = genuine._replace(port=posing.port)  # what Ray said, answered by someone else
            with pytest.raises(WrongActor):
                await ActorLink.connect(impostor, lambda _: None, lambda: None, client_tls(pki["frontend"]))
            return await _results_or_refusal(genuine, client_tls(pki["frontend"]), [1])

    assert run(scenario()) == [1]
    assert len(calls) == 1


def test_paysw_keys_link_certs_makes_what_a_cluster_links_with(tmp_path: Path):
    """The operator's command: one certificate (with its CA) that every node shows; an actor and a
    front end holding it link over TLS; its key is the owner's alone."""
    import os
    import stat
    import subprocess
    import sys

    from bench.demo_config import DEMO_SWITCH_CONFIG

    out = tmp_path / "links"
    command = [sys.executable, "-m", "switch.cli", "keys", "link-certs", "--out", str(out), "--days", "30"]
    made = subprocess.run([*command, "--config", str(DEMO_SWITCH_CONFIG)], capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    assert f'link_tls_key = "{out}/link.key"' in made.stdout
    assert stat.S_IMODE(os.stat(out / "link.key").st_mode) == 0o600
    assert sorted(p.name for p in out.iterdir()) == ["ca.pem", "link.key", "link.pem"]  # no CA key kept
    tls = LinkTls(cert=str(out / "link.pem"), key=str(out / "link.key"), ca=str(out / "ca.pem"))
    calls, channel = recording_channel()

    async def scenario():
        async with actor_link_to(channel, tls) as address:
            return await _results_or_refusal(address, client_tls(tls), [1, 2])

    assert run(scenario()) == [1, 2]
    assert len(calls) == 2
    again = subprocess.run([*command, "--config", str(DEMO_SWITCH_CONFIG)], capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "exists" in again.stderr  # never over certificates in use
