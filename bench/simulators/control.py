"""``paysw sim fault``: switch a running simulator's faults on and off over its control address."""

from __future__ import annotations

import urllib.error

import msgspec

from bench.simulators.faults import NO_FAULT, Fault
from bench.simulators.server import SimulatorConfig, control_address
from switch.operator import error_of, request


def fault_address(config: SimulatorConfig, channel: str) -> str:
    if channel not in config.simulators:
        raise KeyError(f"no simulator {channel!r}; simulators: {', '.join(config.simulators)}")
    return control_address(config.simulators[channel])


def set_fault(address: str, fault: Fault | None) -> Fault:
    """Replace the fault of the simulator whose control address is ``address`` (``None``: only
    read it); returns the fault now in force."""
    answer = request(address, "/_sim/fault", post=fault is not None, body=msgspec.json.encode(fault))
    return msgspec.convert(answer, Fault)


def main(config: SimulatorConfig, channel: str, fault: Fault | None) -> int:
    """Set (or, with ``fault`` None, show) one simulator's fault and print what is in force."""
    try:
        address = fault_address(config, channel)
        now = set_fault(address, fault)
    except KeyError as exc:
        print(f"paysw sim fault: {exc.args[0]}")
        return 2
    except urllib.error.HTTPError as exc:
        print(f"paysw sim fault: the simulator refused: {error_of(exc)}")
        return 1
    except OSError as exc:
        print(f"paysw sim fault: cannot reach {channel}'s simulator at {address}: {exc}")
        return 1
    print(f"{channel}: fault {now.describe()}" + ("" if now != NO_FAULT else " (healthy)"))
    return 0
