"""``paysw sim`` as processes: its simulators (forked from a fork server) never outlive it, however
it ends, so that none is left holding a port."""

from __future__ import annotations

import psutil

from tests.conftest import _start_simulators, with_own_simulators


def _started(config_dir, ports, folder):
    own = with_own_simulators(config_dir, ports, folder)
    command = _start_simulators(folder / "simulators.toml", own, "")
    try:
        tree = psutil.Process(command.pid).children(recursive=True)
        fork_server = next(p for p in tree if "multiprocessing.forkserver" in " ".join(p.cmdline()))
        simulators = fork_server.children()
        assert len(simulators) == len(own.channels)
    except BaseException:
        command.terminate()  # its SIGTERM handler stops the simulators
        command.wait(timeout=20)
        raise
    return command, fork_server, simulators


def _end(simulators: list[psutil.Process]) -> None:
    _, alive = psutil.wait_procs(simulators, timeout=15)
    for process in alive:  # not left holding ports past a failed test
        process.kill()
    assert not alive, f"simulators outlived their command: {[p.pid for p in alive]}"


def test_the_simulators_end_when_their_command_is_killed_outright(config_dir, ports, tmp_path):
    command, _, simulators = _started(config_dir, ports, tmp_path)
    try:
        command.kill()  # no handler runs: nothing of its own can stop them
        command.wait(timeout=10)
    finally:
        _end(simulators)


def test_a_dead_fork_server_ends_the_command_and_every_simulator(config_dir, ports, tmp_path):
    command, fork_server, simulators = _started(config_dir, ports, tmp_path)
    try:
        fork_server.kill()  # the command then reads every simulator as ended, and can signal none
        assert command.wait(timeout=15) == 1
    finally:
        command.kill()  # (gone already, unless the assertion failed)
        _end(simulators)
