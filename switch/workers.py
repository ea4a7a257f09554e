"""``paysw run --workers N``: N front-end processes on one host, one switch.

A supervisor process prepares what they share and starts them: the admin token, the journal
(the embedded PostgreSQL, started once), and a local Ray (unless ``--ray-address`` or
``[ray] address`` names a cluster) that each worker joins as a driver. Every worker is a whole
front end (``switch.app.SwitchApp``) with its own bulkheads, breakers and quotas (the rate quotas
divided: ``switch.config.worker_share``); they listen on the same terminals' port with
SO_REUSEPORT, so the kernel spreads connections among them, and share the channel actors (named
Ray actors) and the journal. The supervisor serves ``admin_listen`` for all of them
(``switch.workers_admin``), asking each over a unix socket in ``DATA_DIR/workers``.

SIGINT / SIGTERM to the supervisor stops every worker (each as a lone ``paysw run`` stops), then
Ray and the embedded PostgreSQL. SIGHUP restarts the workers one at a time (a new version of the
code, say): each gets a replacement on the same port, and once that one is ready the old one
drains (``switch.frontend``) and exits, so the port is never closed and no request read is left
unanswered. A worker that exits on its own stops the others, and the supervisor exits with an
error, for a service manager to restart the switch as a whole. A supervisor that dies, even by
``kill -9``, takes its workers with it: each gets SIGTERM from the kernel and drains.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import socket
import ssl
import sys
from pathlib import Path

import uvloop

from actors.runtime import init_ray
from switch.admin import start_admin
from switch.admin_tls import renew_admin_tls, server_tls
from switch.admin_token import configured_token, switch_token
from switch.app import DATABASE_URL_ENV, SwitchApp, WorkerSeat, database_url_for, serve_until_signalled, until_signalled
from switch.config import Config, ConfigError, host_port
from switch.journal.roles import EMBEDDED_OWNER_ENV, prepare, take_owner_urls, user_of
from switch.workers_admin import WorkerEndpoint, workers_admin_app

log = logging.getLogger("paysw")

STOP_TIMEOUT_S = 60.0  # for each worker to drain and stop before it is killed
SOCKET_PATH_MAX = 107  # bytes of a unix socket's path (Linux)
PR_SET_PDEATHSIG = 1  # prctl(2)


READY_TIMEOUT_S = 180.0  # for a replacement to start (it joins Ray, the journal and the actors)


def admin_socket(data_dir: Path, index: int, generation: int = 0) -> Path:
    return data_dir / "workers" / (f"{index}.sock" if generation == 0 else f"{index}-{generation}.sock")


def run_workers(
    config_file: Path, config: Config, data_dir: Path, ray_address: str, workers: int, log_level: str
) -> int:
    """Supervise ``workers`` front ends until SIGINT / SIGTERM; 0 when all stopped cleanly."""
    sockets = admin_socket(data_dir, workers - 1, 999)  # the longest name a replacement has
    if len(bytes(sockets)) > SOCKET_PATH_MAX:
        raise ConfigError(f"--data-dir {data_dir}: too long a path for the workers' admin sockets ({sockets})")
    listen_is_free(config_file, config.switch.listen)
    take_owner_urls()
    token = switch_token(config, data_dir)  # first: a bad token file stops the start before anything runs
    tls = server_tls(config)  # and a TLS file the admin endpoint cannot serve with
    url, embedded = database_url_for(config, data_dir)
    command = [sys.executable, "-m", "switch.cli", "run", "--config", str(config_file), "--data-dir", str(data_dir)]
    command += ["--log-level", log_level, "--workers", str(workers)]
    try:
        owner = embedded.url if embedded is not None else ""
        return uvloop.run(
            _supervise(config, command, url, token, ray_address or config.ray.address, data_dir, workers, owner, tls)
        )
    finally:
        if embedded is not None:
            embedded.stop()


def listen_is_free(config_file: Path, listen: str) -> None:
    """A ConfigError unless ``listen`` is free: with SO_REUSEPORT, the workers would otherwise
    share the port with whatever of this user listens there already (an old switch, say)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(host_port(listen))
        except OSError as exc:
            raise ConfigError(f"{config_file}: $.switch.listen: {listen} is not free: {exc.strerror}") from None


async def _supervise(
    config: Config,
    command: list[str],
    url: str,
    token: str,
    ray_address: str,
    data_dir: Path,
    count: int,
    embedded_owner: str,
    tls: ssl.SSLContext | None,
) -> int:
    started_ray = False
    if not ray_address:
        import ray

        started_ray = init_ray("", config.ray.namespace)
        ray_address = ray.get_runtime_context().gcs_address
    folder = admin_socket(data_dir, 0).parent
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for stale in folder.glob("*.sock"):
        stale.unlink()
    endpoints = [WorkerEndpoint(i, admin_socket(data_dir, i)) for i in range(count)]
    admin_app = workers_admin_app(endpoints, token)
    admin = await start_admin(*host_port(config.switch.admin_listen), admin_app, tls=tls)
    signalled = until_signalled()  # after ray.init, which installs a SIGTERM handler that exits at once
    roll = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, roll.set)
    # The embedded journal's superuser is the workers' to use (none other: take_owner_urls): a
    # worker of new code after a SIGHUP migrates what it needs.
    env = {**os.environ, DATABASE_URL_ENV: url}
    if embedded_owner:
        env[EMBEDDED_OWNER_ENV] = embedded_owner
    pool = _Workers([*command, "--ray-address", ray_address], env, data_dir, endpoints)
    for i in range(count):
        await pool.start(i, 0)
    log.info("workers started", extra={"workers": count, "pids": pool.pids()})
    try:
        while True:
            rolling = asyncio.ensure_future(roll.wait())
            await asyncio.wait([signalled, rolling, *pool.exits], return_when=asyncio.FIRST_COMPLETED)
            rolling.cancel()
            if signalled.done() or not roll.is_set():
                break
            roll.clear()
            renew_admin_tls(tls, config)
            await pool.roll()
        if not signalled.done():
            log.error("a worker exited on its own: stopping the others", extra={"workers_exited": pool.exited()})
        log.info("stopping the workers")
        codes = await _stop(pool.processes, pool.exits)
    finally:
        await admin.cleanup()
        if started_ray:
            import ray

            ray.shutdown()
    return 0 if signalled.done() and not any(codes) else 1


class _Workers:
    """The running workers, by index, and their replacement one at a time (SIGHUP)."""

    def __init__(
        self, command: list[str], env: dict[str, str], data_dir: Path, endpoints: list[WorkerEndpoint]
    ) -> None:
        self._command, self._env, self._data_dir, self._endpoints = command, env, data_dir, endpoints
        self.processes: list[asyncio.subprocess.Process] = []
        self.exits: list[asyncio.Future[int]] = []
        self._generation = 0

    async def start(self, index: int, generation: int) -> tuple[asyncio.subprocess.Process, asyncio.Future[int]]:
        process = await asyncio.create_subprocess_exec(
            *self._command, "--worker", str(index), "--generation", str(generation), env=self._env
        )
        done = asyncio.ensure_future(process.wait())
        if index == len(self.processes):
            self.processes.append(process)
            self.exits.append(done)
        return process, done

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def exited(self) -> list[tuple[int, int | None]]:
        return [(i, p.returncode) for i, p in enumerate(self.processes) if p.returncode is not None]

    async def roll(self) -> None:
        """Replace every worker in turn: its replacement first, ready on the same port, then the
        old one drains and stops. A replacement that does not come up stops the roll, the old
        worker still serving."""
        self._generation += 1
        log.info("rolling restart", extra={"workers": len(self.processes), "generation": self._generation})
        for index, old in enumerate(self.processes):
            socket = admin_socket(self._data_dir, index, self._generation)
            new, done = await self.start(index, self._generation)
            if not await _ready(WorkerEndpoint(index, socket), new):
                log.error("a replacement worker did not get ready: rolling restart stopped", extra={"worker": index})
                if new.returncode is None:
                    new.kill()
                await done
                return
            await self._endpoints[index].move(socket)
            self.processes[index], self.exits[index] = new, done
            await _stop([old], [asyncio.ensure_future(old.wait())])
            log.info("worker replaced", extra={"worker": index, "old_pid": old.pid, "pid": new.pid})
        log.info("rolling restart done", extra={"pids": self.pids()})


async def _ready(endpoint: WorkerEndpoint, process: asyncio.subprocess.Process) -> bool:
    """Whether the worker behind ``endpoint`` says it is ready before it exits or times out."""
    deadline = asyncio.get_running_loop().time() + READY_TIMEOUT_S
    try:
        while process.returncode is None and asyncio.get_running_loop().time() < deadline:
            status, _ = await endpoint.call("/readyz")
            if status == 200:
                return True
            await asyncio.sleep(0.2)
        return False
    finally:
        await endpoint.close()


async def _stop(processes: list[asyncio.subprocess.Process], exits: list[asyncio.Future[int]]) -> list[int]:
    """SIGTERM to every worker still running; their exit statuses (killed after ``STOP_TIMEOUT_S``)."""
    for process in processes:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
    _, late = await asyncio.wait(exits, timeout=STOP_TIMEOUT_S)
    for i, process in enumerate(processes):
        if process.returncode is None:
            log.error("worker did not stop in time: killed", extra={"worker": i})
            process.kill()
    await asyncio.gather(*late)
    return [exit.result() for exit in exits]


def run_worker(config: Config, data_dir: Path, ray_address: str, index: int, workers: int, generation: int = 0) -> None:
    """One worker: a front end on the supervisor's journal (its URL in ``SWITCH_DATABASE_URL``) and
    Ray, with its share of the quotas, until SIGINT / SIGTERM."""
    _stop_with_supervisor()
    _tag_logs(index)
    url = os.environ[DATABASE_URL_ENV]
    owner = take_owner_urls()  # the embedded one's, used once, here, and not handed on
    if owner and generation > 0:  # a rolling restart's new code; the first ones', the supervisor prepared
        asyncio.run(prepare(owner, user_of(url)))
    app = SwitchApp(
        config,
        url,
        configured_token(config, data_dir),  # the supervisor has made sure it exists
        ray_address,
        WorkerSeat(index, admin_socket(data_dir, index, generation)),
        share=workers,
    )
    uvloop.run(serve_until_signalled(app))


def _stop_with_supervisor() -> None:
    """SIGTERM to this worker when its supervisor dies, ``kill -9`` included (Linux's parent-death
    signal): a worker left behind would go on serving the port with nobody to restart it or answer
    for it. It then drains and stops as on any SIGTERM."""
    supervisor = os.getppid()
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:  # it died before the signal was asked for
        os.kill(os.getpid(), signal.SIGTERM)


def _tag_logs(index: int) -> None:
    """Every log line of this process names its worker."""

    def tag(record: logging.LogRecord) -> bool:
        record.worker = index
        return True

    for handler in logging.getLogger().handlers:
        handler.addFilter(tag)
