"""The ``paysw`` command line."""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

from hsm import HsmError
from switch.cli_support import at_least_one
from switch.config import ConfigError, load_config
from switch.refused import JournalRefused

# Commands other packages register (pyproject.toml, [project.entry-points."paysw.commands"]): each
# entry, named after its command, is a module with ``add_parser(commands)`` and ``main(args) -> int``.
# The simulators, the demo and the benchmarks come this way: test equipment the switch never imports.
COMMANDS_GROUP = "paysw.commands"


# The commands on the journal and its configuration: each module's ``add_parser(commands)`` and
# ``main(args, config)``, given the configuration its ``--config`` names.
ON_CONFIG: dict[str, str] = {  # name: module
    "keys": "switch.keys_cli",
    "recon": "switch.recon.cli",
    "settle": "switch.settlement_cli",
    "risk": "risk.cli",
    "notify": "switch.merchant.cli",
    "reload": "switch.reload_cli",
    "console": "switch.console.cli",
    "config": "switch.config_cli",
}
# The commands that need no configuration (run where the switch's secrets are not): each module's
# ``add_parser(commands)`` and ``main(args)``.
PLAIN: dict[str, str] = {"journal": "switch.journal_cli"}
BUILT_IN = ("run", "channel", *ON_CONFIG, *PLAIN)


class Commands(NamedTuple):
    on_config: dict[str, ModuleType]  # of ON_CONFIG
    registered: dict[str, ModuleType]  # of COMMANDS_GROUP
    plain: dict[str, ModuleType]  # of PLAIN


def _load_commands(argv: list[str]) -> Commands:
    """The command modules to import: only the one asked for, or all of them when none is, or when
    the top-level help is (``--help`` and usage errors list every command). Their imports are
    heavy (Ray, aiohttp, the console's pages): a command that loaded them all paid about 2 s of CPU
    before it began, and so did each simulator process (``multiprocessing`` imports the main module
    again in each child). So ``paysw run`` loads no other package's code. A registered name that is
    a built-in command's is ignored, with a word on stderr: it cannot take the switch's own commands over."""
    at = next((i for i, a in enumerate(argv) if not a.startswith("-")), len(argv))
    asked = None if {"-h", "--help"} & set(argv[:at]) or at == len(argv) else argv[at]
    if asked in ("run", "channel"):
        return Commands({}, {}, {})
    if asked in ON_CONFIG:
        return Commands({asked: importlib.import_module(ON_CONFIG[asked])}, {}, {})
    if asked in PLAIN:
        return Commands({}, {}, {asked: importlib.import_module(PLAIN[asked])})
    entries = {}
    for entry in entry_points(group=COMMANDS_GROUP):
        if entry.name in BUILT_IN:  # said, not silently dropped: its package's author expects it to run
            print(f"paysw: {entry.value} registers the command {entry.name!r}, which is built in: ignored",
                  file=sys.stderr)  # fmt: skip
        else:
            entries[entry.name] = entry
    if asked in entries:
        return Commands({}, {asked: entries[asked].load()}, {})
    return Commands(
        {name: importlib.import_module(module) for name, module in ON_CONFIG.items()},
        {name: entries[name].load() for name in sorted(entries)},
        {name: importlib.import_module(module) for name, module in PLAIN.items()},
    )


def _parser(loaded: Commands) -> argparse.ArgumentParser:
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
    run.add_argument(
        "--workers",
        type=at_least_one,
        default=1,
        help="front-end processes sharing the terminals' port, the channel actors and the journal "
        "(default 1); each limit of [switch] and a channel's frontend_in_flight hold in each, the "
        "rate quotas are divided among them. SIGHUP to the switch then restarts them one at a time",
    )
    run.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # set by the supervisor for its workers
    run.add_argument("--generation", type=int, default=0, help=argparse.SUPPRESS)  # its replacements' count

    channel = commands.add_parser(
        "channel",
        help="see and control the channels of a running switch",
        description="Through the switch's admin endpoint: list the channels (switched on, circuit, "
        "calls under way, limits, actors), switch one off or on, close its circuit, start fresh "
        "actors where Ray gave up restarting them, or crash an actor as an incident drill. Every "
        "action but list needs the switch's admin token: the configuration's admin_token_file, "
        "else the token the switch generated at its first start in its --data-dir; run from the "
        "switch's folder, no option is needed.",
    )
    channel.add_argument(
        "action", choices=["list", "enable", "disable", "close-circuit", "restart", "crash"], help="what to do"
    )
    channel.add_argument("channel", nargs="?", default="", help="the channel (all but list)")
    channel.add_argument(
        "--config", type=Path, help="the switch's configuration: its admin address and admin_token_file"
    )
    channel.add_argument(
        "--admin",
        help="the admin endpoint, HOST:PORT or https://HOST:PORT (default: the configuration's admin_listen, "
        "else 127.0.0.1:9583); a token goes over plain http to loopback only",
    )
    channel.add_argument("--ca", type=Path, help="with --admin https://...: the CA its certificate is checked by")
    channel.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".paysw"),
        help="the switch's --data-dir, where it generated its admin token when no admin_token_file is "
        "configured (default: ./.paysw)",
    )
    channel.add_argument("--token-file", type=Path, help="read the admin token from this file instead")
    channel.add_argument("--shard", type=int, default=0, help="crash: which shard's actor (default 0)")

    for module in (*loaded.on_config.values(), *loaded.plain.values(), *loaded.registered.values()):
        module.add_parser(commands)

    return parser


def _channel(args: argparse.Namespace) -> int:
    from switch.addresses import HOST_PORT
    from switch.admin_tls import admin_address, client_tls, trusting
    from switch.admin_token import GENERATED_TOKEN_FILE, configured_token, read_token
    from switch.operator import main as operator_main

    if args.action != "list" and not args.channel:
        print(f"paysw channel {args.action}: which channel?", file=sys.stderr)
        return 2
    config = load_config(args.config) if args.config is not None else None
    configured = client_tls(config) if config is not None else None
    given = args.admin or (admin_address(config, "--admin https://HOST:PORT") if config else "127.0.0.1:9583")
    scheme, _, admin = given.rpartition("://")
    if scheme not in ("", "http", "https") or not re.fullmatch(HOST_PORT, admin):
        print(f"paysw channel: --admin expects HOST:PORT or https://HOST:PORT, not {given!r}", file=sys.stderr)
        return 2
    if args.ca is not None and scheme != "https":
        print("paysw channel: --ca goes with --admin https://HOST:PORT", file=sys.stderr)
        return 2
    if scheme == "https":  # the CA given, else the configuration's, else the system's
        tls = trusting(args.ca, "--ca") if args.ca is not None else configured or trusting(None, "--ca")
    else:
        tls = None if scheme == "http" else configured
    token = ""
    if args.action != "list":  # reading needs no token
        try:
            if args.token_file is not None:
                token = read_token(args.token_file)
            elif config is not None:
                token = configured_token(config, args.data_dir)
            else:
                token = read_token(args.data_dir / GENERATED_TOKEN_FILE)
        except ConfigError as exc:
            print(
                f"paysw channel: {exc} (run this from the folder the switch was started in, "
                "or give --data-dir, --token-file or --config)",
                file=sys.stderr,
            )
            return 2
    return operator_main(admin, args.action, args.channel, token, args.shard, tls)


def main(argv: list[str] | None = None) -> int:
    loaded = _load_commands(sys.argv[1:] if argv is None else argv)
    args = _parser(loaded).parse_args(argv)
    try:
        if args.command == "run":
            from switch.app import run
            from switch.logs import setup_logging

            setup_logging(args.log_level)
            config = load_config(args.config)
            if args.worker is not None:
                from switch.workers import run_worker

                run_worker(config, args.data_dir, args.ray_address, args.worker, args.workers, args.generation)
            elif args.workers > 1:
                from switch.workers import run_workers

                return run_workers(args.config, config, args.data_dir, args.ray_address, args.workers, args.log_level)
            else:
                run(config, args.data_dir, args.ray_address)
            return 0
        if args.command in loaded.registered:
            return loaded.registered[args.command].main(args)
        if args.command in loaded.plain:
            return loaded.plain[args.command].main(args)
        if args.command == "channel":
            return _channel(args)
        if args.command in loaded.on_config:
            return loaded.on_config[args.command].main(args, load_config(args.config))
    except ConfigError as exc:
        print(f"paysw: configuration error: {exc}", file=sys.stderr)
        return 2
    except HsmError as exc:
        print(f"paysw: key error: {exc}", file=sys.stderr)
        return 2
    except JournalRefused as exc:
        print(f"paysw: journal error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # asyncpg's, if it was ever imported: a role an earlier release granted
        asyncpg = sys.modules.get("asyncpg")
        if asyncpg is None or not isinstance(exc, asyncpg.InsufficientPrivilegeError):
            raise
        print(f"paysw: journal error: {exc}: run this release's `paysw journal migrate` as the journal's owner",
              file=sys.stderr)  # fmt: skip
        return 2

    return 1


if __name__ == "__main__":
    sys.exit(main())
