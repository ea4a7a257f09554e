"""``paysw demo``: the whole stack on 127.0.0.1 and a burst of traffic; registered with ``paysw``
through the ``paysw.commands`` entry points (pyproject.toml)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(commands: argparse._SubParsersAction) -> None:
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


def main(args: argparse.Namespace) -> int:
    from bench.demo import main as demo_main

    return demo_main(serve=args.serve, data_dir=args.data_dir, per_channel=max(1, args.count))
