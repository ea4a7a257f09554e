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
Ray and the embedded PostgreSQL. A worker that exits on its own stops the others, and the
supervisor exits with an error: the channel actors belong to the worker that created them, so
the others would be left without them; a service manager restarts the switch as a whole.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from pathlib import Path

import uvloop

from actors.runtime import init_ray
from switch.admin import start_admin
from switch.admin_token import configured_token, switch_token
from switch.app import DATABASE_URL_ENV, SwitchApp, WorkerSeat, database_url_for, serve_until_signalled, until_signalled
from switch.config import Config, ConfigError, host_port, worker_share
from switch.workers_admin import WorkerEndpoint, workers_admin_app

log = logging.getLogger("paysw")

STOP_TIMEOUT_S = 60.0  # for each worker to drain and stop before it is killed
SOCKET_PATH_MAX = 107  # bytes of a unix socket's path (Linux)


def admin_socket(data_dir: Path, index: int) -> Path:
    return data_dir / "workers" / f"{index}.sock"


def run_workers(
    config_file: Path, config: Config, data_dir: Path, ray_address: str, workers: int, log_level: str
) -> int:
    """Supervise ``workers`` front ends until SIGINT / SIGTERM; 0 when all stopped cleanly."""
    sockets = admin_socket(data_dir, workers - 1)
    if len(bytes(sockets)) > SOCKET_PATH_MAX:
        raise ConfigError(f"--data-dir {data_dir}: too long a path for the workers' admin sockets ({sockets})")
    listen_is_free(config_file, config.switch.listen)
    token = switch_token(config, data_dir)  # first: a bad token file stops the start before anything runs
    url, embedded = database_url_for(config, data_dir)
    command = [sys.executable, "-m", "switch.cli", "run", "--config", str(config_file), "--data-dir", str(data_dir)]
    command += ["--log-level", log_level, "--workers", str(workers)]
    try:
        return uvloop.run(_supervise(config, command, url, token, ray_address or config.ray.address, data_dir, workers))
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
    config: Config, command: list[str], url: str, token: str, ray_address: str, data_dir: Path, count: int
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
    admin = await start_admin(*host_port(config.switch.admin_listen), workers_admin_app(endpoints, token))
    signalled = until_signalled()  # after ray.init, which installs a SIGTERM handler that exits at once
    env = {**os.environ, DATABASE_URL_ENV: url}
    processes = [
        await asyncio.create_subprocess_exec(*command, "--ray-address", ray_address, "--worker", str(i), env=env)
        for i in range(count)
    ]
    log.info("workers started", extra={"workers": count, "pids": [p.pid for p in processes]})
    exits = [asyncio.ensure_future(p.wait()) for p in processes]
    try:
        await asyncio.wait([signalled, *exits], return_when=asyncio.FIRST_COMPLETED)
        if not signalled.done():
            gone = [(i, p.returncode) for i, p in enumerate(processes) if p.returncode is not None]
            log.error("a worker exited on its own: stopping the others", extra={"workers_exited": gone})
        log.info("stopping the workers")
        codes = await _stop(processes, exits)
    finally:
        await admin.cleanup()
        if started_ray:
            import ray

            ray.shutdown()
    return 0 if signalled.done() and not any(codes) else 1


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


def run_worker(config: Config, data_dir: Path, ray_address: str, index: int, workers: int) -> None:
    """One worker: a front end on the supervisor's journal (its URL in ``SWITCH_DATABASE_URL``) and
    Ray, with its share of the quotas, until SIGINT / SIGTERM."""
    _tag_logs(index)
    app = SwitchApp(
        worker_share(config, workers),
        os.environ[DATABASE_URL_ENV],
        configured_token(config, data_dir),  # the supervisor has made sure it exists
        ray_address,
        WorkerSeat(index, admin_socket(data_dir, index)),
    )
    uvloop.run(serve_until_signalled(app))


def _tag_logs(index: int) -> None:
    """Every log line of this process names its worker."""

    def tag(record: logging.LogRecord) -> bool:
        record.worker = index
        return True

    for handler in logging.getLogger().handlers:
        handler.addFilter(tag)
