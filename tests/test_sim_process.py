"""``paysw sim`` as processes: its simulators (forked from a fork server) never outlive it, however
it ends, so that none is left holding a port."""

from __future__ import annotations

import psutil

from tests.conftest import _start_simulators, free_port, new_ports, own_ports, with_own_simulators


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


def test_ports_picked_for_servers_are_this_test_process_own_and_never_twice():
    """Five hundred ports picked in a row (fifty sets of simulators' worth): all different, all of
    this xdist process's share, so no server's port is picked again before it binds it."""
    picked = [free_port() for _ in range(400)]
    for _ in range(10):
        ports = new_ports()
        picked += [*ports.channels.values(), *ports.controls.values()]
    assert len(set(picked)) == len(picked)
    assert all(p in own_ports() for p in picked)
