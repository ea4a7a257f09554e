"""What the running switch exposes, on a real switch with its own local Ray: nothing listens
beyond 127.0.0.1, and the terminals' port holds against floods (caps on connections in total
and per peer, an idle timeout, warnings for bad input rate-limited per peer)."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import re
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from bench.client import IsoClient
from bench.traffic import network
from protocols.iso8583 import LENGTH_HEADER, encode
from tests.conftest import SwitchProcess, run, switch_with
from tests.support import STANS

PER_PEER = 4
IDLE_S = 3.0


@pytest.fixture(scope="module")
def guarded(
    config_dir: Path, database_url: str, simulators: dict[str, int], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SwitchProcess]:
    """The test switch with tight caps: PER_PEER connections from one address, IDLE_S of silence."""
    edits = [
        (r"(?m)^max_connections_per_peer = \d+$", f"max_connections_per_peer = {PER_PEER}"),
        (r"(?m)^idle_timeout_s = \d+$", f"idle_timeout_s = {IDLE_S}"),
    ]
    yield from switch_with(config_dir, database_url, tmp_path_factory.mktemp("guarded"), "guarded", edits)


def _on_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 (an IPv6 socket, IPv4 only)
    return (mapped or address).is_loopback


def test_nothing_of_the_switch_or_its_ray_listens_beyond_loopback(guarded):
    switch = psutil.Process(guarded.process.pid)
    processes = {p.pid: p.name() for p in [switch, *switch.children(recursive=True)]}
    listening = [
        (processes[c.pid], c.laddr.ip, c.laddr.port)
        for c in psutil.net_connections("tcp")
        if c.status == psutil.CONN_LISTEN and c.pid in processes
    ]
    names = {name for name, _, _ in listening}
    assert any(port == guarded.port for _, _, port in listening), listening
    assert {"gcs_server", "raylet"} <= names, listening  # Ray's own servers were looked at too
    assert [s for s in listening if not _on_loopback(s[1])] == []
    bound_udp = [c for c in psutil.net_connections("udp") if c.pid in processes and c.laddr]
    assert [c for c in bound_udp if not _on_loopback(c.laddr.ip)] == []


async def _echo(client: IsoClient) -> str:
    return (await client.request(network("T0000001", STANS.next("T0000001")), timeout=10))["39"]


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), seconds) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


def test_a_connection_over_the_per_peer_cap_is_closed_at_once_and_counted(guarded):
    async def scenario():
        held = [await IsoClient.connect(guarded.host, guarded.port) for _ in range(PER_PEER)]
        reader, writer = await asyncio.open_connection(guarded.host, guarded.port)
        try:
            assert await _closed_within(reader, 1.0), "the connection over the cap was kept"
            assert [await _echo(client) for client in held] == ["00"] * PER_PEER  # those within it work
        finally:
            writer.close()
            for client in held:
                await client.close()
        await asyncio.sleep(0.2)
        again = await IsoClient.connect(guarded.host, guarded.port)  # the places are free again
        try:
            assert await _echo(again) == "00"
        finally:
            await again.close()

    run(scenario())
    status, body = guarded.get("/metrics")
    counted = re.search(r'paysw_connections_closed_total\{reason="max_connections_per_peer"\} (\S+)', body)
    assert status == 200 and counted is not None and float(counted.group(1)) >= 1


def test_a_silent_connection_is_closed_after_the_idle_timeout_and_a_talking_one_is_not(guarded):
    async def scenario() -> float:
        talking = await IsoClient.connect(guarded.host, guarded.port)
        reader, writer = await asyncio.open_connection(guarded.host, guarded.port)
        started = time.monotonic()
        try:
            for _ in range(4):  # a frame every IDLE_S / 2, past the timeout twice over
                await asyncio.sleep(IDLE_S / 2)
                assert await _echo(talking) == "00"
            assert await _closed_within(reader, IDLE_S), "the silent connection was kept"
            return time.monotonic() - started
        finally:
            writer.close()
            await talking.close()

    assert IDLE_S - 0.5 <= run(scenario()) <= 2 * IDLE_S + 2


def _warnings_in(log: Path, offset: int) -> list[str]:
    with open(log, "rb") as f:
        f.seek(offset)
        return [line.decode() for line in f if b'"level": "WARNING"' in line]


def test_a_thousand_junk_frames_make_a_handful_of_warning_lines(guarded):
    """Frames that are not ISO 8583 (each closes its connection), zero-length frames, and
    answers sent as if they were requests (ignored): a flood of them, a few lines of log."""
    junk = 340

    async def scenario():
        for i in range(junk):
            frame = b"\x00\x07garbage" if i % 2 else b"\x00\x00"
            reader, writer = await asyncio.open_connection(guarded.host, guarded.port)
            writer.write(frame)
            assert await _closed_within(reader, 5.0)
            writer.close()
        when = dt.datetime.now(dt.UTC)
        answer = encode({"t": "0810", "7": when.strftime("%m%d%H%M%S"), "11": "000001", "39": "00", "41": "T0000001"})
        assert int.from_bytes(answer[:LENGTH_HEADER], "big") == len(answer) - LENGTH_HEADER
        client = await IsoClient.connect(guarded.host, guarded.port)
        try:
            for _ in range(1000 - junk):
                await client.send_raw(answer)
            assert await _echo(client) == "00"  # all of them were read before this
        finally:
            await client.close()

    offset = guarded.log_path.stat().st_size
    run(scenario())
    time.sleep(0.5)
    warnings = _warnings_in(guarded.log_path, offset)
    assert len(warnings) <= 5, warnings[:10]
    assert any('"suppressed"' in line for line in warnings), warnings
