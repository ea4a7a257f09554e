"""``paysw console``: serve the operators' console, and manage its accounts."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import signal
import sys

import asyncpg
from aiohttp import web

from switch.admin_tls import admin_address, client_tls
from switch.admin_token import configured_token
from switch.cli_support import add_database_arguments, who, with_database
from switch.config import Config, ConfigError, host_port, is_loopback
from switch.console import accounts
from switch.console.audit import Entry, record
from switch.console.channels import Channels
from switch.console.edits import Edits
from switch.console.web import Console
from switch.journal.schema import migrate

log = logging.getLogger("paysw.console")
MIN_PASSWORD = 12


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "console",
        help="the operators' web console: serve it, add an account",
        description="serve: the console on [console] listen (default 127.0.0.1:9585), over the journal; its "
        "channel actions go to the switch's admin endpoints with the switch's admin token. add-user: an "
        "account (roles: viewer reads; operator also acts on channels, differences, notifications; admin also "
        "edits merchants); the password is asked for, or read from the first line of standard input with "
        "--password-stdin. set-password: a new password, which ends the account's sessions and lifts its lock. "
        "unlock: forget the account's failed sign-ins (it is refused after [console] sign_in_failures within "
        "sign_in_window_minutes from one address).",
    )
    parser.add_argument("action", choices=["serve", "add-user", "set-password", "unlock"])
    parser.add_argument("name", nargs="?", default="", help="add-user, set-password: the account's name")
    parser.add_argument("--role", choices=accounts.ROLES, default="viewer", help="add-user: its role (viewer)")
    parser.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    add_database_arguments(parser)


def main(args: argparse.Namespace, config: Config) -> int:
    if args.action == "serve":  # where its channel actions go, known before any database starts
        endpoints = config.console.admin_endpoints or [admin_address(config, "[console] admin_endpoints")]
        return with_database(config, args.data_dir, lambda url: _serve(url, config, args, endpoints))
    if not args.name or len(args.name) > 64 or not args.name.isprintable():
        print(f"paysw console {args.action}: give the account's name (at most 64 characters)", file=sys.stderr)
        return 2
    if args.action == "add-user" and not accounts.NAME.fullmatch(args.name):
        print("paysw console add-user: a name is letters, digits, '.', '-' and '_', starting with a letter or "
              "digit (as an approval's provenance names two: console:ada+alan)", file=sys.stderr)  # fmt: skip
        return 2
    if args.action == "unlock":
        return with_database(config, args.data_dir, lambda url: _account(url, args, ""))
    password = _password(args.password_stdin)
    if len(password) < MIN_PASSWORD:
        print(f"paysw console {args.action}: the password needs at least {MIN_PASSWORD} characters", file=sys.stderr)
        return 2
    return with_database(config, args.data_dir, lambda url: _account(url, args, password))


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("password: ")
    return first if getpass.getpass("again: ") == first else ""


async def _account(url: str, args: argparse.Namespace, password: str) -> int:
    by = f"cli:{who()}"
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
        async with conn.transaction():
            if args.action == "add-user":
                try:
                    await accounts.add_user(conn, args.name, password, args.role)
                except asyncpg.UniqueViolationError:
                    print(f"paysw console add-user: {args.name} exists already", file=sys.stderr)
                    return 2
                await record(conn, Entry(by, "user.add", args.name, after={"role": args.role}))
            elif args.action == "unlock":
                count = await accounts.unlock(conn, args.name)
                await record(conn, Entry(by, "user.unlock", args.name, after=count))
            elif not await accounts.set_password(conn, args.name, password):
                print(f"paysw console set-password: no account {args.name}", file=sys.stderr)
                return 2
            else:
                await record(conn, Entry(by, "user.password", args.name))
    finally:
        await conn.close()
    print(f"paysw console: {args.action} {args.name} done")
    return 0


async def _serve(url: str, config: Config, args: argparse.Namespace, endpoints: list[str]) -> int:
    section = config.console
    if not section.four_eyes:
        log.warning(
            "four_eyes is off: one operator alone hands a dead letter back to the resolver, resolves a "
            "reconciliation difference or takes an entry off the black list, and one admin alone changes "
            "the live configuration"
        )
    try:
        token = configured_token(config, args.data_dir)
    except ConfigError as exc:
        token = ""
        log.warning("channel actions are off: the console has no admin token", extra={"why": str(exc)})
    pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
    async with pool.acquire() as conn:
        await migrate(conn)
    channels = Channels(endpoints, token, client_tls(config))
    host, port = host_port(section.listen)
    secure = section.secure_cookie if section.secure_cookie is not None else not is_loopback(host)
    console = Console(pool, section, channels, Edits(pool, config.source, section), secure)
    runner = web.AppRunner(console.app(), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        print(f"paysw console: cannot listen on {section.listen} ([console] listen): {exc.strerror}", file=sys.stderr)
        await runner.cleanup()
        await channels.close()
        await pool.close()
        return 2
    print(f"paysw console: serving on http://{section.listen}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await channels.close()
        await pool.close()
    return 0
