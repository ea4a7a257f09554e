"""What the commands that work on the journal database share: their --config / --data-dir
arguments, and running their work against the configured (or embedded) database."""

from __future__ import annotations

import argparse
import asyncio
import getpass
from collections.abc import Awaitable, Callable
from pathlib import Path

from switch.config import Config


def at_least_one(text: str) -> int:
    """An argparse type: a whole number of at least 1 (a count of workers, rounds...)."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {text!r}")
    return int(text)


def add_database_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="the switch's TOML configuration file")
    parser.add_argument(
        "--data-dir", type=Path, default=Path(".paysw"), help="folder of the embedded PostgreSQL (default: ./.paysw)"
    )


def with_database(config: Config, data_dir: Path, work: Callable[[str], Awaitable[int]]) -> int:
    """Run ``work(database_url)``; an embedded PostgreSQL started for it is stopped afterwards."""
    from switch.app import database_url_for

    url, embedded = database_url_for(config, data_dir)
    try:
        return asyncio.run(work(url))
    finally:
        if embedded is not None:
            embedded.stop()


def who() -> str:
    """The operating-system user running the command, for the logs and audit rows it writes."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container's user with no name
        return "?"
