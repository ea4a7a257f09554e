"""The A/B benches run outside ``paysw bench`` (``python -m bench.sim_speed``, ``python -m
bench.risk_memory``): each side's measurement, small, on real processes, so that a bench that no
longer starts is found here and not on the day it is wanted."""

from __future__ import annotations

import pytest

from bench import risk_memory, sim_speed
from bench.simulators.server import load_simulator_config
from tests.conftest import free_port, refusing_port


def test_a_simulator_started_on_its_own_answers_and_its_cost_is_read(tmp_path):
    """``bench.sim_speed`` starts a simulator with ``python -c``, with no multiprocessing parent
    to watch (it failed at start for as long as the simulators required one)."""
    config = sim_speed._config(tmp_path, free_port)
    port = int(load_simulator_config(str(config)).simulators["inbank"].listen.rpartition(":")[2])
    with sim_speed._simulator(sim_speed.ROOT, config, "inbank") as process:
        sim_speed._wait_listening(port, process)
        user, system, seconds, grew = sim_speed._measure(
            process, port, sim_speed._requests("inbank", "sim", 200, "T"), concurrency=4
        )  # raises unless every request was answered 200
    assert user + system > 0 and seconds > 0 and isinstance(grew, int)


def test_a_simulator_that_cannot_bind_is_reported_at_once(tmp_path):
    """A simulator that exits at start (its port taken) is named as such, not waited on for ten
    seconds and reported as never listening."""
    held = refusing_port()
    config = sim_speed._config(tmp_path, lambda: held)
    with (
        sim_speed._simulator(sim_speed.ROOT, config, "inbank") as process,
        pytest.raises(RuntimeError, match="exited before it listened"),
    ):
        sim_speed._wait_listening(held, process)


def test_the_risk_memory_drive_reads_cpu_and_bytes_a_payment():
    untraced, traced = risk_memory.drive(3_000, traced=False), risk_memory.drive(3_000, traced=True)
    assert untraced["cpu_us_per_payment"] > 0
    assert 200 < traced["bytes_per_payment"] < 2_000, traced
