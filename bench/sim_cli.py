"""``paysw sim``: run the channel simulators, or switch a running one's faults; registered with
``paysw`` through the ``paysw.commands`` entry points (pyproject.toml)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(commands: argparse._SubParsersAction) -> None:
    sim = commands.add_parser(
        "sim",
        help="run the channel simulators",
        description="Run one simulator process per channel (its channel address on a lean HTTP server, its "
        "control address on aiohttp), until Ctrl-C.",
    )
    sim.add_argument("--config", type=Path, help="the simulators' TOML configuration file (required)")
    sim.add_argument(
        "--audit-dsn",
        default="",
        help="PostgreSQL URL of the switch's journal: record, for each pay request, whether its "
        "journal row already existed when it arrived (served at /_sim/audit)",
    )

    sim_commands = sim.add_subparsers(dest="sim_command", metavar="SUBCOMMAND")
    fault = sim_commands.add_parser(
        "fault",
        help="switch a running simulator's faults on or off",
        description="Make a running channel simulator misbehave, to rehearse an incident: the fault "
        "given replaces the one in force (options combine, e.g. --latency 2s --error-rate 0.2); "
        "with no option, show the fault in force.",
    )
    fault.add_argument("channel", help="the simulator's name (wechat, alipay, unionpay, ecny, inbank)")
    fault.add_argument("--config", type=Path, default=None, help="the simulators' configuration (default: the demo's)")
    fault.add_argument("--hang", action="store_true", help="take requests and never answer")
    fault.add_argument("--latency", metavar="DURATION", help="answer this much later (e.g. 2s, 250ms)")
    fault.add_argument("--error-rate", type=float, metavar="SHARE", help="answer this share with HTTP 500 (0 to 1)")
    fault.add_argument("--refuse", action="store_true", help="refuse connections")
    fault.add_argument("--reset", action="store_true", help="close connections without answering")
    fault.add_argument("--partial", action="store_true", help="act, then cut the answer off mid-body")
    fault.add_argument("--unread", action="store_true", help="refuse every request unread (the channel's own error)")
    fault.add_argument("--clear", action="store_true", help="healthy again")


def main(args: argparse.Namespace) -> int:
    from bench.simulators.server import load_simulator_config

    if args.sim_command != "fault":
        if args.config is None:
            print("paysw sim: --config is required", file=sys.stderr)
            return 2
        from bench.simulators.runner import main as sim_main

        return sim_main(str(args.config), args.audit_dsn)
    from bench.demo_config import DEMO_SIMULATORS_CONFIG
    from bench.simulators.control import main as fault_main
    from bench.simulators.faults import NO_FAULT, Fault, duration_ms

    config = load_simulator_config(str(args.config or DEMO_SIMULATORS_CONFIG))
    try:
        latency_ms = duration_ms(args.latency) if args.latency else 0.0
    except ValueError as exc:
        print(f"paysw sim fault: --latency: {exc}", file=sys.stderr)
        return 2
    chosen = {
        "hang": args.hang,
        "refuse": args.refuse,
        "reset": args.reset,
        "partial": args.partial,
        "unread": args.unread,
        "latency_ms": latency_ms,
        "error_rate": args.error_rate or 0.0,
    }
    if args.clear and any(chosen.values()):
        print("paysw sim fault: --clear goes alone", file=sys.stderr)
        return 2
    if not 0 <= chosen["error_rate"] <= 1:
        print("paysw sim fault: --error-rate is a share between 0 and 1", file=sys.stderr)
        return 2
    fault = NO_FAULT if args.clear else Fault(**chosen) if any(chosen.values()) else None
    return fault_main(config, args.channel, fault)
