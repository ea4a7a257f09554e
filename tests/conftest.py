"""Fixtures on real parts: a real PostgreSQL (embedded pgserver, or SWITCH_DATABASE_URL), the
channel simulators as real processes, and the switch as a real ``paysw run`` process with its
own local Ray cluster, all on free loopback ports."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import fcntl
import http.client
import os
import random
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from bench.demo_config import absolute_paths
from switch.admin_tls import scheme
from switch.journal.embedded import EmbeddedPostgres
from switch.journal.roles import runtime_url
from tests.support import clear_of_the_hour

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "bench" / "demo_config"
KEYS = DEMO / "keys"
# The wechat channel's timeout in the test configuration: a "slow" payment code (..98) makes the
# simulator answer after 3 s, past it, so the switch must treat the call as UNKNOWN.
WECHAT_TIMEOUT_MS = 1500
ALIPAY_REFUND_DAYS = 90
DEADLINE_MS = 5000  # the switch's request deadline in the test configuration (the demo's is 30 s)
PAYING_MS = 1500  # a "user paying" customer (..09) confirms after this
PAYMENT_WINDOW_MS = 4000
LATE_SLOW_MS = 6000
RESOLUTION_SCHEDULE = f"query_interval_ms = 500\npayment_window_ms = {PAYMENT_WINDOW_MS}\ncancel_after_ms = 1000"


def demo_actor_setup(channel: str, config=None):
    """What a demo channel's actor is given (``switch.keystore.actor_setup``), from ``config``
    (the demo configuration by default), with its key records made from the demo key files."""
    from bench.demo_config import DEMO_KEY_MANIFEST, DEMO_SWITCH_CONFIG, demo_material
    from hsm import open_hsm
    from switch.config import account_of, load_config
    from switch.keystore import actor_setup, read_manifest

    config = config or load_config(DEMO_SWITCH_CONFIG)
    hsm = open_hsm(config.security.hsm, config.base_dir, demo=config.switch.demo)
    manifest = read_manifest(DEMO_KEY_MANIFEST)
    labels = account_of(config.channels[channel]).keys.labels().values()
    keys = {label: hsm.import_key(label, manifest[label].kind, demo_material(label)) for label in labels}
    return actor_setup(config, channel, keys)


@pytest.fixture(scope="module")
def demo_ports() -> Iterator[None]:
    """The demo's fixed ports, for a test file that starts the demo stack on them: one such file
    at a time across the test processes (make test: xdist), once the last one's stack has let go."""
    from bench.demo import _ports_in_use
    from bench.demo_config import DEMO_SIMULATORS_CONFIG, DEMO_SWITCH_CONFIG
    from bench.simulators.server import load_simulator_config
    from switch.config import load_config

    with open(DEMO_PORTS_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        config, sims = load_config(DEMO_SWITCH_CONFIG), load_simulator_config(str(DEMO_SIMULATORS_CONFIG))
        deadline = time.monotonic() + 60
        while _ports_in_use(config, sims) and time.monotonic() < deadline:
            time.sleep(0.2)
        yield


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    """One SoftHSM2 token with an LMK for the session: (library, label, PIN). One, because the
    PKCS#11 library reads its configuration once per process."""
    from tests.debian import softhsm_token

    return softhsm_token(tmp_path_factory.mktemp("softhsm"))


async def fresh_database(url: str, name: str) -> str:
    """A new, empty database ``name`` beside the one at ``url`` (dropped first if it exists)."""
    from urllib.parse import urlsplit

    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name}")
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return urlsplit(url)._replace(path=f"/{name}").geturl()


# Ports the tests pick for their servers: below the kernel's ephemeral range (32768-60999 by
# default), which Ray's processes bind by port 0 at any time (a port freed here and bound by the
# switch a moment later could be taken in between), and above Ray's workers' 10002-19999.
PICKED_PORTS = range(20_000, 32_768)
_pick = random.Random()  # (each xdist process seeds its own)


def own_ports() -> range:
    """This test process's share of ``PICKED_PORTS``. A port is free when picked, and bound by its
    server only a moment later: in between, another xdist process could pick it too, and one of
    the two servers would not bind (a whole process's tests errored so, its session's simulators
    refused their port)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    size = len(PICKED_PORTS) // count
    start = PICKED_PORTS.start + int(worker.removeprefix("gw")) % count * size
    return range(start, start + size)


# The ports this process picked lately, never picked again while their server may still be on its
# way to binding them (ten picks for one set of simulators drew the same port twice in 0.35 % of
# them).
_picked: deque[int] = deque(maxlen=len(PICKED_PORTS) // 8)


def _bound_picked() -> socket.socket:
    """A socket bound to a free port of this process's ``own_ports`` on loopback, none it picked
    lately."""
    sock, ports = socket.socket(), own_ports()
    for _ in range(1000):
        port = _pick.choice(ports)
        if port in _picked:
            continue
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        _picked.append(port)
        return sock
    sock.close()
    raise RuntimeError(f"no free port in {ports}")


def free_port() -> int:
    with _bound_picked() as sock:
        return sock.getsockname()[1]


def refusing_port() -> int:
    """A port that refuses connections for as long as this test process lives: bound and never
    listened on, so no test's server (``free_port``, in either test process) can take it. For an
    address in a configuration that no one is meant to answer at; a port merely picked free was
    taken by another test's recording server, which then received this one's notifications."""
    held = _bound_picked()
    atexit.register(held.close)
    return held.getsockname()[1]


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"port {port} not open after {timeout}s")


def run(coro):
    """Run one scenario on a fresh event loop (tests are plain functions)."""
    return asyncio.run(coro)


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("SWITCH_DATABASE_URL", "")
    if url:
        yield url
        return
    embedded = EmbeddedPostgres(tmp_path_factory.mktemp("pg"))
    yield embedded.start()
    embedded.stop()


CHANNELS = ("wechat", "alipay", "unionpay", "ecny", "inbank")
DEMO_PORTS_LOCK = "/tmp/paysw-tests-demo-ports.lock"
# The files that start the demo stack on its fixed ports (``demo_ports``): under xdist they go to
# one test process as one unit, one after the other, rather than one process waiting on the lock
# while the other holds it. Then the files of a minute or more, so that neither process is left
# with one of them at the end while the other has finished.
DEMO_PORT_FILES = ("tests/test_demo.py", "tests/test_bench_isolation.py", "tests/test_load_tools.py")
LONG_FILES = ("tests/test_isolation.py", "tests/test_multinode.py", "tests/test_crash_recovery.py",
              "tests/test_risk.py", "tests/test_workers.py", "tests/test_resolution.py", "tests/test_console.py",
              "tests/test_merchant_api.py", "tests/test_sites.py", "tests/test_bench_tools.py")  # fmt: skip


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    first = (*DEMO_PORT_FILES, *LONG_FILES)
    rank = {path: n for n, path in enumerate(first)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(first)))  # (stable)


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class DemoPortsTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = super()._split_scope(nodeid)
            return "demo ports" if path in DEMO_PORT_FILES else path

    return DemoPortsTogether(config, log)


@dataclass(frozen=True)
class Ports:
    channels: dict[str, int]
    controls: dict[str, int]  # the simulators' control addresses (faults)


def new_ports() -> Ports:
    return Ports({n: free_port() for n in CHANNELS}, {n: free_port() for n in CHANNELS})


@pytest.fixture(scope="session")
def ports() -> Ports:
    return new_ports()


def tolerant_admission(text: str) -> str:
    """The tests run two at a time on a small machine (make test: xdist), so a test's switch sees
    its neighbour's load as queueing delay: admission by queueing delay would shed the test's own
    requests at random. Tolerant in tests; test_shedding runs a switch with it at 1 ms."""
    text, n = re.subn(r"(?m)^shed_queue_delay_ms = \d+$", "shed_queue_delay_ms = 2000", text)
    assert n == 1, "could not set the admission target in the test configuration"
    return text


def localise(text: str, ports: Ports) -> str:
    """The demo configuration with free ports and absolute key paths."""
    for i, name in enumerate(CHANNELS):
        text = text.replace(
            f'listen = "127.0.0.1:{9101 + i}"',
            f'listen = "127.0.0.1:{ports.channels[name]}"\ncontrol_listen = "127.0.0.1:{ports.controls[name]}"',
        )
        text = text.replace(f"127.0.0.1:{9101 + i}", f"127.0.0.1:{ports.channels[name]}")
    text = absolute_paths(text)
    return text


@pytest.fixture(scope="session")
def config_dir(tmp_path_factory: pytest.TempPathFactory, ports: Ports) -> Path:
    folder = tmp_path_factory.mktemp("config")
    switch = localise((DEMO / "switch.toml").read_text(), ports)
    switch = switch.replace("stalled_frame_timeout_s = 30", "stalled_frame_timeout_s = 1")
    # The tests run the batches they need; an hour closing mid-run must not reconcile under them.
    switch = switch.replace("schedule_hourly = true", "schedule_hourly = false")
    switch, n = re.subn(r"(?m)^request_deadline_ms = 30000", f"request_deadline_ms = {DEADLINE_MS}", switch)
    assert n == 1, "could not set the request deadline in the test configuration"
    switch = tolerant_admission(switch)
    # The demo merchant's receiver is the demo's; a test that wants notifications runs its own.
    nowhere = f'notify_url = "http://127.0.0.1:{refusing_port()}/notify"'
    switch, n = re.subn(r'notify_url = "http://127.0.0.1:9590/notify"', nowhere, switch)
    assert n == 1, "could not move the demo merchant's notification URL in the test configuration"
    # Test after test signs the same terminals on; tests of the limit run a switch of their own.
    switch, n = re.subn(r"(?m)^sign_on_interval_s = \d+$", "sign_on_interval_s = 0", switch)
    assert n == 1, "could not lift the sign-on limit in the test configuration"
    switch, n = re.subn(
        r"(\[channels\.wechat\]\n(?:.*\n)*?actor = \{[^}\n]*)timeout_ms = 10000",
        rf"\g<1>timeout_ms = {WECHAT_TIMEOUT_MS}",
        switch,
    )
    assert n == 1, "could not set the wechat channel timeout in the test configuration"
    # Alipay's refund window is the contract's term: the tests' is 90 days (WeChat Pay's a year).
    switch, n = re.subn(r'(?m)^(kind = "alipay")$', rf"\1\nrefund_days = {ALIPAY_REFUND_DAYS}", switch)
    assert n == 1, "could not set alipay's refund window in the test configuration"
    # Fast resolution schedules for every channel: query every 0.5 s, payment window 4 s.
    switch = re.sub(r"(?m)^(query_interval_ms|payment_window_ms|cancel_after_ms|close_after_ms) = \d+.*\n", "", switch)
    switch, n = re.subn(r'(?m)^(kind = "\w+")$', r"\1\n" + RESOLUTION_SCHEDULE, switch)
    assert n == len(CHANNELS), "could not set the channels' resolution schedules in the test configuration"
    (folder / "switch.toml").write_text(switch)
    simulators = localise((DEMO / "simulators.toml").read_text(), ports)
    simulators = simulators.replace(
        "latency_ms = 2\n", f"latency_ms = 2\npaying_ms = {PAYING_MS}\nnotice_scale = 0.01\n"
    )
    # UnionPay's slow answers (..98) come after the switch's deadline (5 s) but within the channel
    # timeout: late answers.
    simulators, n = re.subn(
        r"(\[simulators\.unionpay\][^\[]*?latency_ms = 2\n)", rf"\1slow_ms = {LATE_SLOW_MS}\n", simulators
    )
    assert n == 1, "could not slow the unionpay simulator down in the test configuration"
    (folder / "simulators.toml").write_text(simulators)
    return folder


def with_own_simulators(config_dir: Path, ports: Ports, folder: Path) -> Ports:
    """The test configuration of ``config_dir`` copied into ``folder`` with simulator ports of its
    own: simulators started on it hold in their ledgers only the orders of switches started on it."""
    own = new_ports()
    moves = [(ports.channels[n], own.channels[n]) for n in CHANNELS]
    moves += [(ports.controls[n], own.controls[n]) for n in CHANNELS]
    for name in ("switch.toml", "simulators.toml"):
        text = (config_dir / name).read_text()
        for old, new in moves:
            text = text.replace(f'127.0.0.1:{old}"', f'127.0.0.1:{new}"')
        (folder / name).write_text(text)
    return own


@pytest.fixture
def one_hour() -> None:
    """The test's clock readings fall in one hour (``clear_of_the_hour``)."""
    clear_of_the_hour()


@pytest.fixture
def seed() -> int:
    """The seed of a test's random draws: ``PAYSW_TEST_SEED`` when set (to replay a failure), else a
    fresh one. Printed, so that a failed run's captured output names it."""
    value = int(os.environ.get("PAYSW_TEST_SEED") or random.SystemRandom().randrange(2**32))
    print(f"PAYSW_TEST_SEED={value}")
    return value


@contextlib.contextmanager
def simulators_running(config: Path, ports: Ports, audit_dsn: str) -> Iterator[dict[str, int]]:
    """The simulators of ``config`` as a real process, checking pay requests against the journal
    at ``audit_dsn``; yields their channel ports."""
    proc = _start_simulators(config, ports, audit_dsn)
    try:
        yield ports.channels
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


class SimulatorsDidNotStart(RuntimeError):
    pass


def _start_simulators(config: Path, ports: Ports, audit_dsn: str) -> subprocess.Popen:
    log_path = config.with_suffix(".log")  # a file, not a pipe no one reads: a full one would stop them
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "switch.cli", "sim", "--config", str(config), "--audit-dsn", audit_dsn],
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    try:
        for port in [*ports.channels.values(), *ports.controls.values()]:
            wait_for_port(port, 90, proc)  # two test processes may be starting stacks at once
    except (TimeoutError, RuntimeError) as exc:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        raise SimulatorsDidNotStart(f"{exc}; the simulators said: {log_path.read_text()[-3000:]}") from None
    return proc


@contextlib.contextmanager
def own_simulators(config_dir: Path, ports: Ports, folder: Path, audit_dsn: str) -> Iterator[Ports]:
    """``with_own_simulators``, running: started again on fresh ports should a port picked free
    have been taken meanwhile (by another test process's server: it would not bind)."""
    for attempt in range(3):
        own = with_own_simulators(config_dir, ports, folder)
        try:
            proc = _start_simulators(folder / "simulators.toml", own, audit_dsn)
        except SimulatorsDidNotStart:
            if attempt == 2:
                raise
            continue
        try:
            yield own
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
        return


@pytest.fixture(scope="session")
def simulators(config_dir: Path, ports: Ports, database_url: str) -> Iterator[dict[str, int]]:
    with simulators_running(config_dir / "simulators.toml", ports, database_url) as channels:
        yield channels


def switch_with(
    config_dir: Path,
    database_url: str,
    folder: Path,
    name: str,
    edits: list[tuple[str, str]],
    workers: int = 1,
    admin_tls: ssl.SSLContext | None = None,
) -> Iterator[SwitchProcess]:
    """A test switch on the test configuration with ``edits`` made (each pattern must match once),
    of ``workers`` front-end processes, running until the generator is closed; for module fixtures
    of tests that need other limits."""
    text = (config_dir / "switch.toml").read_text()
    for pattern, replacement in edits:
        text, n = re.subn(pattern, replacement, text)
        assert n == 1, f"{pattern!r} matched {n} times in the test configuration"
    config = folder / f"switch-{name}.toml"
    config.write_text(text)
    running = SwitchProcess(config, database_url, folder / f"{name}.log", workers=workers, admin_tls=admin_tls)
    running.start()
    try:
        yield running
    finally:
        assert running.stop() == 0, f"the switch did not stop cleanly; see {running.log_path}"


class SwitchProcess:
    """``paysw run`` as a real process, on loopback ports of its own.

    Ports are picked free, but another process (a Ray worker, say) may take one before the switch
    binds it; so the switch counts as started only once its own ``/readyz`` says ready, and a
    start whose process exits is tried again on fresh ports."""

    host = "127.0.0.1"

    def __init__(
        self,
        config: Path,
        database_url: str | None,
        log_path: Path,
        log_level: str = "INFO",
        workers: int = 1,
        env: dict[str, str] | None = None,
        data_dir: Path | None = None,
        admin_tls: ssl.SSLContext | None = None,
    ) -> None:
        self._template = config.read_text()
        self.admin_tls = admin_tls  # what its admin endpoint is reached with, when it serves https
        self.config = config.with_name(f"{config.stem}-{free_port()}.toml")
        self.data_dir = data_dir or self.config.with_name(f"{self.config.stem}-data")  # its admin token
        # Migrated as the test's superuser, run as the switch's runtime role (switch.journal.roles);
        # with no URL, on its own embedded journal under its data folder, as ``make demo`` runs.
        self.env = {**(env or os.environ)}
        self.env.pop("SWITCH_DATABASE_URL", None)
        if database_url is not None:
            self.env["SWITCH_DATABASE_URL"] = run(runtime_url(database_url))
        self.log_path = log_path
        self.log_level = log_level
        self.workers = workers
        self.process: subprocess.Popen | None = None
        self.killed = False  # by the test (kill()), since its last start
        self.port = self.admin = self.merchant = 0  # the terminals', admin and merchant API ports

    def start(self, attempts: int = 3) -> None:
        self.killed = False
        for _ in range(attempts):
            self.port, self.admin, self.merchant = free_port(), free_port(), free_port()
            text = re.sub(
                r'(\[merchant_api\]\n(?:#.*\n)*)listen = "127.0.0.1:\d+"',
                rf'\g<1>listen = "127.0.0.1:{self.merchant}"',
                self._template,
            )
            text = re.sub(r'(?m)^listen = "127.0.0.1:\d+"', f'listen = "127.0.0.1:{self.port}"', text, count=1)
            text = re.sub(r'(?m)^admin_listen = "127.0.0.1:\d+"', f'admin_listen = "127.0.0.1:{self.admin}"', text)
            self.config.write_text(text)
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "switch.cli",
                        "run",
                        "--config",
                        str(self.config),
                        "--log-level",
                        self.log_level,
                        "--data-dir",
                        str(self.data_dir),
                        "--workers",
                        str(self.workers),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                )
            if self._wait_ready(180):
                return
        raise RuntimeError(f"the switch did not start in {attempts} attempts; see {self.log_path}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            status, body = self.get("/readyz")
            if status == 200 and '"ready": true' in body:
                wait_for_port(self.port, 10, self.process)
                return True
            time.sleep(0.2)
        raise TimeoutError(f"the switch was not ready after {timeout}s; see {self.log_path}")

    @property
    def token(self) -> str:
        """The admin token the switch generated at its first start."""
        from switch.admin_token import GENERATED_TOKEN_FILE

        return (self.data_dir / GENERATED_TOKEN_FILE).read_text().strip()

    def operator_options(self) -> list[str]:
        """``paysw channel`` options for this switch: its admin address and its data folder's token."""
        return ["--admin", f"127.0.0.1:{self.admin}", "--data-dir", str(self.data_dir)]

    def get(self, path: str) -> tuple[int, str]:
        url = f"{scheme(self.admin_tls)}://127.0.0.1:{self.admin}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5, context=self.admin_tls) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except (OSError, http.client.HTTPException):  # not up yet, or another server took the port
            return 0, ""

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self.killed = True

    def stop(self) -> int:
        """SIGTERM; the exit status (0 for a clean stop: Ray, actors, pools and journal closed; and
        for a process the test killed on purpose, its last act)."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            # Fail the test, but leave nothing of the switch running past the session: its
            # workers (--workers) and its Ray's processes are killed with it.
            for process in psutil.Process(self.process.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    process.kill()
            self.process.kill()
            self.process.wait(timeout=30)
            raise
        return 0 if self.killed and code == -signal.SIGKILL else code


@pytest.fixture(scope="session")
def switch(
    config_dir: Path, database_url: str, simulators: dict[str, int], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SwitchProcess]:
    running = SwitchProcess(
        config_dir / "switch.toml", database_url, tmp_path_factory.mktemp("logs") / "switch.log", log_level="DEBUG"
    )
    running.start()
    try:
        yield running
    finally:
        assert running.stop() == 0, f"the switch did not stop cleanly; see {running.log_path}"


@pytest.fixture
def own_stack(config_dir, ports, database_url, tmp_path, request) -> Iterator[tuple[Path, str, dict[str, int]]]:
    """(switch configuration, journal, simulator ports), all of the test's own."""
    url = run(fresh_database(database_url, f"paysw_{request.node.name}"))
    with own_simulators(config_dir, ports, tmp_path, url) as own:
        yield tmp_path / "switch.toml", url, own.channels
