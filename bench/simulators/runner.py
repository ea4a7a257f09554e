"""``paysw sim``: one process per channel simulator, stopped together on Ctrl-C / SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import signal
import sys
from collections.abc import Coroutine

import uvloop

from bench.simulators.server import Simulator, SimulatorConfig, control_address, load_simulator_config


def _serve_one(name: str, config: SimulatorConfig, audit_dsn: str) -> None:
    section = config.simulators[name]
    simulator = Simulator(name, section, config.base_dir, audit_dsn)
    uvloop.run(_while_parent_lives(simulator.serve(section.listen, control_address(section))))


async def _while_parent_lives(serving: Coroutine[None, None, None]) -> None:
    """Run ``serving`` until the process that started this simulator is gone, even killed
    outright: its end of a pipe closes (``parent_process().sentinel``). Without it a simulator
    would outlive it holding its ports, as it would one whose fork server died: the parent then
    sees every simulator's sentinel end, and can no longer signal them. Started on its own (``python
    -m bench.sim_speed`` starts one with ``python -c``), it has no such parent, and runs until stopped."""
    loop = asyncio.get_running_loop()
    parent = multiprocessing.parent_process()
    if parent is None:
        await serving
        return
    sentinel = parent.sentinel
    gone = loop.create_future()

    def _gone() -> None:
        loop.remove_reader(sentinel)
        gone.set_result(None)

    loop.add_reader(sentinel, _gone)
    task = asyncio.ensure_future(serving)
    await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def start_simulators(config: SimulatorConfig, audit_dsn: str = "") -> list[multiprocessing.Process]:
    # A fork server that imports the simulators once and forks each of them from that: a clean
    # process to fork (none of this one's threads or loops), without five processes each paying
    # the imports again, as under "spawn" (about 1 s of CPU each).
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    processes = []
    for name in config.simulators:
        process = context.Process(target=_serve_one, args=(name, config, audit_dsn), name=f"sim-{name}", daemon=True)
        process.start()
        processes.append(process)
    return processes


def stop_simulators(processes: list[multiprocessing.Process]) -> None:
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=10)
        if process.is_alive():
            process.kill()


def main(config_path: str, audit_dsn: str = "") -> int:
    config = load_simulator_config(config_path)
    processes = start_simulators(config, audit_dsn)
    for name, section in config.simulators.items():
        print(
            f"simulator {name:9s} ({section.kind}) on http://{section.listen}"
            f" (control: http://{control_address(section)}/_sim/fault)",
            flush=True,
        )

    def _stop(*_: object) -> None:
        stop_simulators(processes)
        sys.exit(0)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    # One that ends (it could not take its port, say) ends them all: no half a set of simulators.
    ready = multiprocessing.connection.wait([p.sentinel for p in processes])
    ended = [p.name for p in processes if p.sentinel in ready]
    stop_simulators(processes)
    print(f"paysw sim: {', '.join(ended)} ended; the others were stopped", file=sys.stderr, flush=True)
    return 1
