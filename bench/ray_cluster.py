"""A Ray cluster of several nodes on this machine, as a real one is run: each node a ``ray start
--block`` process (its GCS, raylet and workers among its descendants), token authentication on,
each node offering the custom resources asked for it (``node_resource`` placement). For
``paysw bench scale`` and the tests of actors on several nodes."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

START_TIMEOUT_S = 120.0
NODE_ATTEMPTS = 3  # a node's start again, with new ports, when it failed for a passing reason
# Ray's words for those: another process took one of its ports between our probe and Ray's bind,
# or its raylet did not register within Ray's fixed 30 s (a busy CI host).
PASSING = ("used by other components", "Address already in use", "current node timed out during startup")
STOP_GRACE_S = 5.0
OBJECT_STORE_BYTES = 256 * 1024 * 1024  # as the local Ray (actors.runtime): payments never use it
_WAIT_FOR_NODES = """
import sys, time, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
while sum(node["Alive"] for node in ray.nodes()) != int(sys.argv[2]):
    time.sleep(0.2)
"""


class RayCluster:
    """One node per entry of ``resources`` (the custom resources it offers), the first the head;
    ``system_config`` goes to the head (Ray's internal settings, e.g. how fast a lost node is
    noticed)."""

    def __init__(self, folder: Path, resources: list[dict[str, float]], system_config: dict | None = None) -> None:
        folder.mkdir()
        token = folder / "auth-token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",  # every process of the cluster, the front ends too, shows the token
            "RAY_AUTH_TOKEN_PATH": str(token),
            "RAY_worker_niceness": "0",  # as the local Ray: actors are on the payment path
        }
        self._folder = folder
        self._resources = resources
        self._system_config = system_config
        self._nodes: list[subprocess.Popen] = []
        self._temp = ""
        self.address = ""

    def start(self) -> None:
        for i, offered in enumerate(self._resources):
            for attempt in range(NODE_ATTEMPTS):
                ports = _own_ports()
                if i == 0:
                    self.address = f"127.0.0.1:{ports['--port']}"
                else:
                    del ports["--port"]  # the head's alone
                before = self._sizes(i)  # the logs are appended to: this attempt's words start there
                self._start_node(self._options(i, offered, ports))
                try:
                    self.wait_for_nodes(i + 1)  # one at a time: nodes starting together on a busy host time out
                    break
                except RuntimeError:
                    if attempt + 1 == NODE_ATTEMPTS or not self._passing(i, before):
                        raise
                    self.kill(i)
                    self._nodes.pop().wait()

    def _options(self, i: int, offered: dict[str, float], ports: dict[str, int]) -> list[str]:
        options = ["--block", "--disable-usage-stats", "--object-store-memory", str(OBJECT_STORE_BYTES)]
        options += ["--num-cpus", str(os.cpu_count() or 2)]
        if i == 0:
            # Ray's sockets live under its temporary folder, and a unix socket's path has 107 bytes at most.
            self._temp = self._temp or tempfile.mkdtemp(prefix="ray-")
            options += ["--head", "--include-dashboard=false", "--temp-dir", self._temp]
            if self._system_config:
                options += ["--system-config", json.dumps(self._system_config)]
        else:
            options += ["--address", self.address]
        if offered:
            options += ["--resources", json.dumps(offered)]
        return options + [part for option, port in ports.items() for part in (option, str(port))]

    def wait_for_nodes(self, alive: int, timeout: float = START_TIMEOUT_S) -> None:
        """Until the cluster counts exactly ``alive`` live nodes; a RuntimeError naming the node's
        log when a node's ``ray start`` exits meanwhile, or at the timeout."""
        waiting = subprocess.Popen(
            [sys.executable, "-c", _WAIT_FOR_NODES, self.address, str(alive)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        try:
            while waiting.poll() is None:
                failed = [i for i, node in enumerate(self._nodes) if node.poll() is not None and i < alive]
                if failed or time.monotonic() > deadline:
                    why = "exited" if failed else f"not up after {timeout:.0f} s"
                    logs = [self._folder / f"node{i}.log" for i in failed or range(len(self._nodes))]
                    tails = "".join(f"\n--- {log} (its end):\n{_tail(log)}" for log in logs)
                    tails += "".join(f"\n--- {log} (its errors):\n{_fatal(log)}" for log in self._errors())
                    raise RuntimeError(f"the Ray cluster did not come up with {alive} nodes ({why}){tails}")
                time.sleep(0.2)
        finally:
            if waiting.poll() is None:
                waiting.kill()
                waiting.wait()

    def _errors(self) -> list[Path]:
        """The Ray components' error logs that have something in them (the raylet's says why it
        stopped, and ``ray start`` only that the node timed out)."""
        logs = (Path(self._temp) / "session_latest" / "logs").glob("*.err") if self._temp else []
        return [log for log in logs if _size(log)]

    def _sizes(self, node: int) -> dict[Path, int]:
        return {log: _size(log) for log in [self._folder / f"node{node}.log", *self._errors()]}

    def _passing(self, node: int, before: dict[Path, int]) -> bool:
        """Whether a node's start failed for a reason that another attempt may not meet, as its
        logs say after ``before`` (their sizes when the attempt began)."""
        logs = [self._folder / f"node{node}.log", *self._errors()]
        return any(marker in _read(log, before.get(log, 0)) for log in logs for marker in PASSING)

    def _start_node(self, options: list[str]) -> None:
        log = open(self._folder / f"node{len(self._nodes)}.log", "ab")  # noqa: SIM115  (closed with the process)
        ray = str(Path(sys.executable).with_name("ray"))
        self._nodes.append(
            subprocess.Popen([ray, "start", *options], env=self.env, stdout=log, stderr=subprocess.STDOUT)
        )

    def processes_by_node(self) -> dict[int, list[psutil.Process]]:
        """Each live node's processes, by its index."""
        nodes = {}
        for i, node in enumerate(self._nodes):
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(node.pid)
                nodes[i] = [root, *root.children(recursive=True)]
        return nodes

    def kill(self, node: int) -> None:
        """The node lost at once, as a machine that fails: SIGKILL to all of its processes."""
        processes = self.processes_by_node().get(node, [])
        for process in processes:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(processes, timeout=30)

    def stop(self) -> None:
        """Every node: SIGTERM to all of their processes, SIGKILL to what is left after a grace."""
        processes = [p for procs in self.processes_by_node().values() for p in procs]
        for process in processes:
            with contextlib.suppress(psutil.Error):
                process.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(processes, timeout=STOP_GRACE_S)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(alive, timeout=30)
        for node in self._nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.wait(timeout=30)
        if self._temp:
            shutil.rmtree(self._temp, ignore_errors=True)


def _own_ports() -> dict[str, int]:
    """A node's own ports, by ``ray start`` option: several nodes on one host would otherwise meet
    on Ray's fixed defaults (the dashboard agent's 52365, say), and the later one would not start.
    Taken with every probe held open, the head's port among them, so that no two are the same port
    (Ray refuses a node whose components share one: seen in CI when the kernel handed a freed port
    out again)."""
    options = ("--port", "--node-manager-port", "--object-manager-port", "--metrics-export-port")
    options += ("--runtime-env-agent-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port")
    with contextlib.ExitStack() as held:
        probes = [held.enter_context(socket.socket()) for _ in options]
        for probe in probes:
            probe.bind(("", 0))
        return {option: probe.getsockname()[1] for option, probe in zip(options, probes, strict=True)}


def _fatal(log: Path, most: int = 5) -> str:
    """The last ``most`` lines of a Ray component's error log that say why it stopped, not its stack."""
    said = [line[:600] for line in _tail(log, 100_000).splitlines() if "Check failed" in line or "rror" in line[:200]]
    return "\n".join(said[-most:])


def _tail(log: Path, size: int = 3000) -> str:
    with contextlib.suppress(OSError):
        return log.read_text(errors="replace")[-size:]
    return "(no log)"


def _read(log: Path, offset: int) -> str:
    """What ``log`` says from byte ``offset`` on ("" when it is gone)."""
    with contextlib.suppress(OSError), open(log, "rb") as file:
        file.seek(offset)
        return file.read().decode(errors="replace")
    return ""


def _size(log: Path) -> int:
    with contextlib.suppress(OSError):
        return log.stat().st_size
    return 0
