"""The ``paysw`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from switch.config import ConfigError, load_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="paysw",
        description="Aggregated-payment transaction switch: ISO 8583 over TCP to WeChat Pay, Alipay, "
        "UnionPay, e-CNY and the in-bank code through Ray actors, journaled in PostgreSQL.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run the switch",
        description="Run the switch until Ctrl-C / SIGTERM. "
        "With no database URL in the configuration or SWITCH_DATABASE_URL, an embedded "
        "PostgreSQL is started under --data-dir and stopped on exit.",
    )
    run.add_argument("--config", required=True, type=Path, help="the switch's TOML configuration file")
    run.add_argument(
        "--data-dir", type=Path, default=Path(".paysw"), help="folder of the embedded PostgreSQL (default: ./.paysw)"
    )
    run.add_argument(
        "--ray-address", default="", help="join this Ray cluster (e.g. auto, host:6379) instead of starting a local one"
    )
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])

    sim = commands.add_parser(
        "sim",
        help="run the channel simulators",
        description="Run one simulator process per channel (aiohttp), until Ctrl-C.",
    )
    sim.add_argument("--config", required=True, type=Path, help="the simulators' TOML configuration file")
    sim.add_argument(
        "--audit-dsn",
        default="",
        help="PostgreSQL URL of the switch's journal: record, for each pay request, whether its "
        "journal row already existed when it arrived (served at /_sim/audit)",
    )

    demo = commands.add_parser(
        "demo",
        help="start everything and send a burst of traffic",
        description="Start embedded PostgreSQL, the five channel simulators and the "
        "switch on 127.0.0.1, send purchases over TCP on every channel and "
        "print a summary; with --serve keep everything running instead.",
    )
    demo.add_argument(
        "--serve", action="store_true", help="leave everything running (switch on 127.0.0.1:8583) until Ctrl-C"
    )
    demo.add_argument(
        "--data-dir", type=Path, default=Path(".paysw"), help="folder of the embedded PostgreSQL (default: ./.paysw)"
    )
    demo.add_argument("--count", type=int, default=200, help="purchases per channel (default: 200)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            from switch.app import run
            from switch.logs import setup_logging

            setup_logging(args.log_level)
            run(load_config(args.config), args.data_dir, args.ray_address)
            return 0
        # The simulators and the demo are test equipment (bench/); the switch itself never imports them.
        if args.command == "sim":
            from bench.simulators.runner import main as sim_main

            return sim_main(str(args.config), args.audit_dsn)
        if args.command == "demo":
            from bench.demo import main as demo_main

            return demo_main(serve=args.serve, data_dir=args.data_dir, per_channel=max(1, args.count))
    except ConfigError as exc:
        print(f"paysw: configuration error: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
