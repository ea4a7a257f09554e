"""What a channel simulator's process spends in CPU per request, old server against new, in one run.

For each channel, the same pre-built pay requests (signed with the switch's demo keys, each a new
order that the channel approves) go to two simulator processes of the demo configuration: one
running ``bench/simulators`` as of ``--baseline`` (the channel address on aiohttp), one running
this tree's. The load is closed-loop: ``--concurrency`` keep-alive connections, each sending its
next request when the answer to its last is in. The simulator's CPU (user + system, from
``/proc``) over a fixed number of requests, divided by them, is the figure; each pair is measured
``--rounds`` times, alternating which goes first. The weighted line applies the standard mix
(WeChat 40 %, Alipay 35 %, UnionPay 10 %, e-CNY 10 %, in-bank 5 %): a simulator's CPU per purchase.
Beside it, the bytes the process's unique memory (USS) grew by a request: each is an order its
ledger keeps.

    flock /tmp/paysw-bench.lock python -m bench.sim_speed --out bench/results/sim_speed.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httptools
import psutil
import uvloop

from bench.demo_config import DEMO_DIR, demo_account
from bench.provenance import commit, resolve
from bench.simulators.server import load_simulator_config
from protocols.channels import channel_of
from protocols.messages import PAY, ChannelRequest

ROOT = Path(__file__).resolve().parent.parent
AIOHTTP_COMMIT = "6cb5596"  # the last commit whose simulators served the channel address with aiohttp
MIX = {"wechat": 0.40, "alipay": 0.35, "unionpay": 0.10, "ecny": 0.10, "inbank": 0.05}
_LAUNCH = (
    "import sys\n"
    "from bench.simulators.runner import _serve_one\n"
    "from bench.simulators.server import load_simulator_config\n"
    "_serve_one(sys.argv[2], load_simulator_config(sys.argv[1]), '')\n"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(folder: Path, free_port: Callable[[], int] = _free_port) -> Path:
    """The demo simulators' configuration on ports ``free_port`` picks, with absolute key paths (the
    tests pass theirs: a port picked by port 0 lies in the ephemeral range, where another process's
    outgoing connection may take it before the simulator binds it)."""
    text = (DEMO_DIR / "simulators.toml").read_text().replace('"keys/', f'"{DEMO_DIR}/keys/')
    for port in range(9101, 9106):
        text = text.replace(
            f'"127.0.0.1:{port}"', f'"127.0.0.1:{free_port()}"\ncontrol_listen = "127.0.0.1:{free_port()}"'
        )
    path = folder / "simulators.toml"
    path.write_text(text)
    return path


def _requests(channel: str, host: str, count: int, tag: str) -> list[bytes]:
    """``count`` pay requests as the switch sends them: signed, an e-CNY code sealed."""
    from switch.config import load_config

    account, crypto = demo_account(channel)
    flow, now = channel_of(load_config(DEMO_DIR / "switch.toml").channels[channel].kind).flows[PAY], time.time()
    out = []
    for i in range(count):
        code = f"1345678901{i:06d}00"  # ends in 00: the channel approves
        req = ChannelRequest(i, PAY, f"{tag}{i:010d}", 1234, code, "SUB001", "T0000001", now + 600, created=now)
        call = flow.build(req, account, crypto, now)
        head = [f"POST {call.path} HTTP/1.1", f"Host: {host}", f"Content-Type: {call.content_type}"]
        head += [f"{name}: {value}" for name, value in call.headers.items()]
        head.append(f"Content-Length: {len(call.body)}")
        out.append(("\r\n".join(head) + "\r\n\r\n").encode() + call.body)
    return out


class _Client(asyncio.Protocol):
    """One keep-alive connection sending its requests one at a time."""

    def __init__(self, requests: Iterator[bytes], done: asyncio.Future[None]) -> None:
        self._requests, self._done = requests, done
        self._parser = httptools.HttpResponseParser(self)
        self.failures = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._next()

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_message_complete(self) -> None:
        if self._parser.get_status_code() != 200:
            self.failures += 1
        self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done.done():
            self._done.set_exception(ConnectionError(f"the simulator closed a connection: {exc}"))

    def _next(self) -> None:
        request = next(self._requests, None)
        if request is None:
            self._transport.close()
            self._done.set_result(None)
        else:
            self._transport.write(request)


async def _drive(port: int, requests: list[bytes], concurrency: int) -> tuple[float, int]:
    """Send ``requests`` over ``concurrency`` connections; seconds taken and non-200 answers."""
    loop, shared = asyncio.get_running_loop(), iter(requests)
    started = time.perf_counter()
    clients = []
    for _ in range(concurrency):
        done = loop.create_future()
        _, client = await loop.create_connection(lambda done=done: _Client(shared, done), "127.0.0.1", port)
        clients.append((client, done))
    await asyncio.gather(*(done for _, done in clients))
    return time.perf_counter() - started, sum(client.failures for client, _ in clients)


def _cpu(process: psutil.Process) -> tuple[float, float]:
    times = process.cpu_times()
    return times.user, times.system


@contextmanager
def _simulator(tree: Path, config: Path, channel: str) -> Iterator[psutil.Process]:
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{ROOT}"}
    proc = subprocess.Popen([sys.executable, "-c", _LAUNCH, str(config), channel], env=env, cwd=tree)
    try:
        yield psutil.Process(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _wait_listening(port: int, process: psutil.Process) -> None:
    for _ in range(200):
        if not process.is_running() or process.status() == psutil.STATUS_ZOMBIE:
            raise RuntimeError(f"the simulator for port {port} exited before it listened")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"no simulator came up on port {port}")


def _measure(process: psutil.Process, port: int, requests: list[bytes], concurrency: int) -> list[float]:
    """The simulator's user and system CPU seconds over ``requests``, the seconds taken, and the
    bytes its unique memory grew by (each request a new order its ledger keeps)."""
    user, system = _cpu(process)
    unique = process.memory_full_info().uss
    seconds, failures = uvloop.run(_drive(port, requests, concurrency))
    if failures:
        raise RuntimeError(f"{failures} of {len(requests)} requests were not answered 200")
    user_after, system_after = _cpu(process)
    return [user_after - user, system_after - system, seconds, process.memory_full_info().uss - unique]


def run(baseline: str, count: int, concurrency: int, rounds: int, only: list[str]) -> dict[str, object]:
    channels: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="sim-speed-") as tmp:
        old_tree = Path(tmp) / "old"
        old_tree.mkdir()
        archive = subprocess.run(
            ["git", "archive", baseline, "bench/__init__.py", "bench/simulators"],
            cwd=ROOT,
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(old_tree)], input=archive, check=True)
        trees = {"old": old_tree, "new": ROOT}
        configs = {}
        for name in trees:
            (Path(tmp) / name).mkdir(exist_ok=True)
            configs[name] = _config(Path(tmp) / name)
        for channel in only:
            spent = {name: [0.0, 0.0, 0.0, 0.0] for name in trees}  # user, system, wall, memory
            ports = {
                name: int(load_simulator_config(str(configs[name])).simulators[channel].listen.rpartition(":")[2])
                for name in trees
            }
            with (
                _simulator(trees["old"], configs["old"], channel) as old,
                _simulator(trees["new"], configs["new"], channel) as new,
            ):
                processes = {"old": old, "new": new}
                for name in trees:
                    _wait_listening(ports[name], processes[name])
                    _measure(processes[name], ports[name], _requests(channel, "sim", 200, f"W{name}"), concurrency)
                for r in range(rounds):
                    order = list(trees) if r % 2 == 0 else list(reversed(trees))
                    requests = _requests(channel, "sim", count, f"R{r}")  # the same for both
                    for name in order:
                        measured = _measure(processes[name], ports[name], requests, concurrency)
                        spent[name] = [a + b for a, b in zip(spent[name], measured, strict=True)]
            total = count * rounds
            channels[channel] = {
                name: {
                    "cpu_us_per_request": round((user + system) / total * 1e6, 1),
                    "of_which_system_us": round(system / total * 1e6, 1),
                    "requests_per_s": round(total / wall, 1),
                    "memory_bytes_per_request": round(grew / total),
                }
                for name, (user, system, wall, grew) in spent.items()
            }
            channels[channel]["new_over_old"] = round(sum(spent["new"][:2]) / sum(spent["old"][:2]), 3)
            print(f"{channel:9s} old {channels[channel]['old']}  new {channels[channel]['new']}", flush=True)
    per_purchase = {
        name: round(sum(MIX[c] * channels[c][name]["cpu_us_per_request"] for c in channels) / 1000, 4)
        for name in ("old", "new")
    }
    return {
        "commit": commit(),
        "baseline": resolve(baseline),
        "requests_per_round": count,
        "rounds": rounds,
        "concurrency": concurrency,
        "cpu_count": os.cpu_count(),
        "channels": channels,
        "mix": MIX,
        "cpu_ms_per_purchase_weighted": per_purchase,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sim_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--baseline", default=AIOHTTP_COMMIT, help="the commit of the old simulators (default: the last on aiohttp)"
    )
    parser.add_argument(
        "--requests", type=int, default=2000, help="pay requests per channel, server and round (default 2000)"
    )
    parser.add_argument("--concurrency", type=int, default=32, help="connections of the closed loop (default 32)")
    parser.add_argument("--rounds", type=int, default=2, help="measurements per server and channel (default 2)")
    parser.add_argument("--channels", nargs="+", choices=list(MIX), default=list(MIX), help="(default: all five)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    result = run(args.baseline, args.requests, args.concurrency, args.rounds, args.channels)
    print(json.dumps(result["cpu_ms_per_purchase_weighted"]))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
