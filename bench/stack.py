"""The demo stack for benchmarks: embedded PostgreSQL (started by the switch), the five channel
simulators as processes of this one (forked by its fork server, which imported them once, when
this process started its first simulators: their CPU here is their own, after the fork), and the
switch as ``paysw run``, a process of its own."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psutil

from bench.demo import _ports_in_use, _wait_for_ports
from bench.demo_config import DEMO_SIMULATORS_CONFIG, DEMO_SWITCH_CONFIG, absolute_paths
from bench.simulators.runner import start_simulators, stop_simulators
from bench.simulators.server import load_simulator_config
from switch.admin_token import configured_token
from switch.config import host_port, load_config
from switch.operator import request as admin_request


def demo_config_in(folder: Path, edit: Callable[[str], str] = lambda text: text, notify: bool = False) -> Path:
    """The demo configuration as ``folder/switch.toml``, its keys by absolute path, with ``edit``
    made to its text, for a benchmark of payments: no work that no payment asks for.
    - Without ``notify`` the merchants have no notification URL: a benchmark runs no merchant
      receiver, and notifications to one not listening would be tried on the outbox's schedule
      (``paysw bench notify`` measures them).
    - The hourly reconciliation is off: on a fresh journal it would catch up its last hours at
      once, 15 batches (statements from every channel, each parsed in a new Ray worker) beside the
      warm-up and the measurement, and again at each hour (``paysw bench recon`` measures it)."""
    text = absolute_paths(DEMO_SWITCH_CONFIG.read_text())
    if not notify:
        text = re.sub(r'(?m)^notify_url = "[^"]*".*\n', "", text)
    text, hourly = re.subn(r"(?m)^schedule_hourly = true\b", "schedule_hourly = false", text)
    if hourly != 1:
        raise RuntimeError("the demo configuration no longer says schedule_hourly = true, for benchmarks to turn off")
    path = folder / "switch.toml"
    path.write_text(edit(text))
    return path


def with_step_timing(text: str) -> str:
    """A configuration's text with ``[switch] step_timing`` on: each step of a purchase timed."""
    return text.replace("[switch]\n", "[switch]\nstep_timing = true\n", 1)


class Stack:
    """The demo stack: simulators in this process's children, the switch as ``paysw run`` (with
    ``workers`` front-end processes, on the Ray cluster at ``ray_address`` or a local one), on
    ``config`` (by default ``demo_config_in(data_dir)``)."""

    def __init__(
        self,
        data_dir: Path,
        config: Path | None = None,
        workers: int = 1,
        ray_address: str = "",
        env: dict[str, str] | None = None,
    ) -> None:
        self._config_path = config or demo_config_in(data_dir)
        self.config = load_config(self._config_path)
        self.simulators = load_simulator_config(str(DEMO_SIMULATORS_CONFIG))
        self._data_dir = data_dir
        self._run_options = ["--workers", str(workers), *(["--ray-address", ray_address] if ray_address else [])]
        self._env = env
        self._sims: list = []
        self.switch: subprocess.Popen | None = None
        self.ready_s = 0.0
        self.simulators_ready_s = 0.0

    def start(self) -> None:
        busy = _ports_in_use(self.config, self.simulators)
        if busy:
            raise RuntimeError(f"ports already in use: {', '.join(busy)} (is a demo running?)")
        began = time.monotonic()
        self._sims = start_simulators(self.simulators)
        _wait_for_ports([s.listen for s in self.simulators.simulators.values()])
        self.simulators_ready_s = time.monotonic() - began  # from their start to every channel port open
        run = ["run", "--config", str(self._config_path), "--log-level", "WARNING", "--data-dir", str(self._data_dir)]
        began = time.monotonic()
        self.switch = subprocess.Popen(
            [sys.executable, "-m", "switch.cli", *run, *self._run_options],
            env=self._env,
            stdout=subprocess.DEVNULL,
            stderr=open(self._data_dir / "switch.log", "ab"),  # noqa: SIM115  (closed with the process)
        )
        deadline = time.monotonic() + 180
        while not self._ready():
            if self.switch.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the switch did not start; see {self._data_dir / 'switch.log'}")
            time.sleep(0.1)
        self.ready_s = time.monotonic() - began  # from the switch's spawn to its /readyz saying ready

    @property
    def port(self) -> int:
        """The switch's ISO 8583 port."""
        return host_port(self.config.switch.listen)[1]

    def admin_token(self) -> str:
        """The token operator actions need (the switch generated it in the data folder)."""
        return configured_token(self.config, self._data_dir)

    def simulator_processes(self) -> list:
        """The simulators' processes (``multiprocessing``), named ``sim-<channel>``."""
        return [p for p in self._sims if p.is_alive()]

    def _ready(self) -> bool:
        try:
            return admin_request(self.config.switch.admin_listen, "/readyz").get("ready") is True
        except OSError:
            return False

    def metrics(self) -> str:
        """The switch's ``/metrics`` (the demo's admin endpoint: plain http on loopback)."""
        with urllib.request.urlopen(f"http://{self.config.switch.admin_listen}/metrics", timeout=10) as answer:
            return answer.read().decode()

    def rss_mb(self) -> float:
        """The switch process's resident memory."""
        assert self.switch is not None
        return round(psutil.Process(self.switch.pid).memory_info().rss / 2**20, 1)

    def processes_by_part(self) -> dict[str, list[psutil.Process]]:
        """Every process of the stack, by part: the switch's front ends (the first one the
        ``paysw run`` process: the only front end, or the workers' supervisor), its Ray processes
        when it started Ray (actors, raylet, GCS, idle workers), PostgreSQL, the simulators."""
        assert self.switch is not None
        front = psutil.Process(self.switch.pid)
        workers = [p for p in front.children() if "--worker" in _safe_cmdline(p)]
        # pg_ctl detaches PostgreSQL from the switch: its postmaster is found by its data folder.
        postmasters = [
            p
            for p in psutil.process_iter(["name", "cmdline"])
            if p.info["name"] == "postgres" and str(self._data_dir) in " ".join(p.info["cmdline"] or [])
        ]
        return {
            "front end": [front, *workers],
            "ray": [p for p in front.children(recursive=True) if p not in workers],
            "postgresql": [*postmasters, *(c for p in postmasters for c in p.children())],
            "simulators": [psutil.Process(p.pid) for p in self._sims if p.pid and p.is_alive()],
        }

    def rss_by_part_mb(self) -> dict[str, float]:
        return self._memory_by_part_mb(lambda p: p.memory_info().rss)

    def unique_by_part_mb(self) -> dict[str, float]:
        """Memory each part's processes hold alone (USS): what a leak grows. Resident memory also
        counts the shared pages a process has touched, so PostgreSQL's backends each count the
        shared buffers they have read, and their sum grows as they touch more of them."""
        return self._memory_by_part_mb(lambda p: p.memory_full_info().uss)

    def _memory_by_part_mb(self, read: Callable[[psutil.Process], int]) -> dict[str, float]:
        return {
            part: round(sum(_safe(lambda p=p: read(p)) for p in procs) / 2**20, 1)
            for part, procs in self.processes_by_part().items()
        }

    def cpu_by_part_s(self) -> dict[str, float]:
        """CPU seconds (user + system) used so far by each part's processes alive now."""
        return {
            part: sum(_safe(lambda p=p: sum(p.cpu_times()[:2])) for p in procs)
            for part, procs in self.processes_by_part().items()
        }

    def stop(self) -> None:
        if self.switch is not None and self.switch.poll() is None:
            self.switch.terminate()
            self.switch.wait(timeout=60)
        stop_simulators(self._sims)


def _safe_cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def _safe(read) -> float:
    """A process figure, or 0 for a process that has just gone."""
    try:
        return read()
    except psutil.Error:
        return 0.0
