"""The ``paysw`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hsm import HsmError
from switch import keys_cli, settlement_cli
from switch.config import ConfigError, load_config
from switch.recon import cli as recon_cli


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
    fault.add_argument("--clear", action="store_true", help="healthy again")

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
    channel.add_argument("--admin", default="127.0.0.1:9583", help="admin address without --config")
    channel.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".paysw"),
        help="the switch's --data-dir, where it generated its admin token when no admin_token_file is "
        "configured (default: ./.paysw)",
    )
    channel.add_argument("--token-file", type=Path, help="read the admin token from this file instead")
    channel.add_argument("--shard", type=int, default=0, help="crash: which shard's actor (default 0)")

    keys_cli.add_parser(commands)
    recon_cli.add_parser(commands)
    settlement_cli.add_parser(commands)

    bench = commands.add_parser("bench", help="benchmarks on the demo stack", description="Benchmarks.")
    benches = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCHMARK")
    isolation = benches.add_parser(
        "isolation",
        help="one channel sick, the others measured against a healthy phase of the same run",
        description="Start the demo stack, offer every channel a steady load, and make one channel "
        "hang, slow, error, refuse connections and lose its actor in turn; print the healthy channels' "
        "throughput and p99 as ratios to the healthy phase, and the sick channel's 91s and recovery.",
    )
    isolation.add_argument("--channel", default="wechat", help="the channel made sick (default: wechat)")
    isolation.add_argument(
        "--faults", default="", help="comma-separated subset of hang,slow,error,refuse,actor_killed (default: all)"
    )
    isolation.add_argument("--rate", type=float, default=40.0, help="purchases a second on each channel (default 40)")
    isolation.add_argument("--phase-seconds", type=float, default=20.0, help="length of each phase (default 20)")
    isolation.add_argument(
        "--recovery-seconds", type=float, default=15.0, help="after each fault clears, before the next (default 15)"
    )
    isolation.add_argument("--out", type=Path, help="write the results as JSON here")
    throughput = benches.add_parser(
        "throughput",
        help="approved TPS and latency at rising concurrency, switch against a bare baseline server",
        description="Closed-loop purchases at each concurrency step against the demo stack, and the "
        "same against a bare uvloop server with the same codec (the baseline, same run); prints a "
        "table, and with --out-dir writes throughput.json and throughput.png there.",
    )
    throughput.add_argument("--steps", default="4,16,64,256", help="concurrency steps (default 4,16,64,256)")
    throughput.add_argument("--step-seconds", type=float, default=15.0, help="length of each step (default 15)")
    throughput.add_argument("--warm-up-seconds", type=float, default=10.0, help="before the steps (default 10)")
    throughput.add_argument("--out-dir", type=Path, help="write throughput.json and throughput.png here")
    recon_bench = benches.add_parser(
        "recon",
        help="reconcile and settle a day of N transactions, against reading and parsing them (same run)",
        description="Write a day of N transactions over the five channels into a fresh embedded PostgreSQL "
        "(or SWITCH_DATABASE_URL) and the channels' statements with discrepancies of every class; reconcile "
        "the five batches at once and settle; report the times against the same-run baseline of reading the "
        "rows and parsing the files.",
    )
    recon_bench.add_argument("--rows", type=int, default=1_000_000, help="transactions in the day (default 1,000,000)")
    recon_bench.add_argument("--out", type=Path, help="write the results as JSON here")
    sm2_bench = benches.add_parser(
        "sm2",
        help="SM2 signatures a second on one core, against gmssl measured in the same run",
        description="Sign and verify the same e-CNY-sized body with hsm.sm2 and with the pure-Python "
        "gmssl package (the baseline), and sign it with RSA-2048 for scale; exits 1 below 1,000 SM2 "
        "signatures a second.",
    )
    sm2_bench.add_argument("--seconds", type=float, default=3.0, help="time per measurement (default 3)")
    sm2_bench.add_argument("--out", type=Path, help="write the results as JSON here")
    profile_bench = benches.add_parser(
        "profile",
        help="where a purchase's CPU goes: every process of the demo stack under load, PostgreSQL, py-spy",
        description="Load the demo stack at one concurrency and report the CPU time of every process per "
        "approved purchase (actors and simulators by channel) and PostgreSQL's work per purchase; with "
        "--py-spy DIR also profile the front end, actors and simulators with py-spy and print their "
        "hottest frames.",
    )
    profile_bench.add_argument("--concurrency", type=int, default=128, help="purchases under way (default 128)")
    profile_bench.add_argument("--seconds", type=float, default=20.0, help="length of the measurement (default 20)")
    profile_bench.add_argument("--py-spy", type=Path, dest="py_spy", help="write py-spy profiles here")
    profile_bench.add_argument("--out", type=Path, help="write the results as JSON here")
    profile_bench.add_argument(
        "--against",
        metavar="REV",
        help="A/B: profile commit REV and this checkout alternately and report each part's ratio, this / REV",
    )
    profile_bench.add_argument("--rounds", type=int, default=2, help="with --against: runs of each side (default 2)")
    held_bench = benches.add_parser(
        "held",
        help="the demo stack held under load for minutes: throughput and every part's memory, window by window",
        description="Hold the demo stack at one concurrency for --minutes and report, for each window, approved/s, "
        "p50 / p99 and the resident memory of every part; then each part's growth from the first window's end.",
    )
    held_bench.add_argument("--concurrency", type=int, default=128, help="purchases under way (default 128)")
    held_bench.add_argument("--minutes", type=float, default=10.0, help="length of the run (default 10)")
    held_bench.add_argument("--window-seconds", type=float, default=60.0, help="length of a window (default 60)")
    held_bench.add_argument("--out", type=Path, help="write the results as JSON here")
    overload_bench = benches.add_parser(
        "overload",
        help="far past capacity: accepted purchases' latency and 91s, admission by queueing delay off and on",
        description="Start the demo stack with admission by queueing delay off (shed_queue_delay_ms = 0), "
        "hold N purchases outstanding for S seconds, and again with it on (the demo's setting); report "
        "approved/s, the latency of the purchases taken on and of the 91s, and the ratios on/off.",
    )
    overload_bench.add_argument("--concurrency", type=int, default=2048, help="purchases outstanding (default 2048)")
    overload_bench.add_argument("--seconds", type=float, default=60.0, help="length of each run (default 60)")
    overload_bench.add_argument("--out", type=Path, help="write the results as JSON here")
    link_bench = benches.add_parser(
        "link",
        help="handing batches to a channel actor: Ray call, streaming Ray call and the actor's link",
        description="Send batches of payments to one echoing actor three ways in the same run (a Ray "
        "call, a streaming Ray call, the actor's TCP link) and report batches a second and CPU per batch.",
    )
    link_bench.add_argument("--seconds", type=float, default=5.0, help="time per measurement (default 5)")
    link_bench.add_argument("--out", type=Path, help="write the results as JSON here")

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


def _sim(args: argparse.Namespace) -> int:
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


def _channel(args: argparse.Namespace) -> int:
    from switch.admin_token import GENERATED_TOKEN_FILE, configured_token, read_token
    from switch.operator import main as operator_main

    if args.action != "list" and not args.channel:
        print(f"paysw channel {args.action}: which channel?", file=sys.stderr)
        return 2
    config = load_config(args.config) if args.config is not None else None
    admin = config.switch.admin_listen if config is not None else args.admin
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
    return operator_main(admin, args.action, args.channel, token, args.shard)


def _bench(args: argparse.Namespace) -> int:
    if args.bench_command == "recon":
        from bench.recon_bench import main as recon_bench_main

        return recon_bench_main(args.rows, args.out)
    if args.bench_command == "profile":
        from bench.profile import compare
        from bench.profile import main as profile_main

        if args.against:
            return compare(args.against, args.rounds, args.concurrency, args.seconds, args.out)
        return profile_main(args.concurrency, args.seconds, args.py_spy, args.out)
    if args.bench_command == "held":
        from bench.held import main as held_main

        return held_main(args.concurrency, args.minutes, args.window_seconds, args.out)
    if args.bench_command == "overload":
        from bench.overload import main as overload_main

        return overload_main(args.concurrency, args.seconds, args.out)
    if args.bench_command == "link":
        from bench.link_speed import main as link_main

        return link_main(args.seconds, args.out)
    if args.bench_command == "sm2":
        from bench.sm2_speed import main as sm2_main

        return sm2_main(args.seconds, args.out)
    if args.bench_command == "throughput":
        from bench.throughput import main as throughput_main

        try:
            steps = [int(n) for n in args.steps.split(",") if n]
        except ValueError:
            print(f"paysw bench throughput: --steps: not a list of numbers: {args.steps!r}", file=sys.stderr)
            return 2
        return throughput_main(steps, args.step_seconds, args.warm_up_seconds, args.out_dir)
    from bench.isolation import main as isolation_main

    faults = [f for f in args.faults.split(",") if f] or None
    return isolation_main(args.channel, faults, args.rate, args.phase_seconds, args.recovery_seconds, args.out)


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
            return _sim(args)
        if args.command == "channel":
            return _channel(args)
        if args.command == "keys":
            return keys_cli.main(args, load_config(args.config))
        if args.command == "recon":
            return recon_cli.main(args, load_config(args.config))
        if args.command == "settle":
            return settlement_cli.main(args, load_config(args.config))
        if args.command == "bench":
            return _bench(args)
        if args.command == "demo":
            from bench.demo import main as demo_main

            return demo_main(serve=args.serve, data_dir=args.data_dir, per_channel=max(1, args.count))
    except ConfigError as exc:
        print(f"paysw: configuration error: {exc}", file=sys.stderr)
        return 2
    except HsmError as exc:
        print(f"paysw: key error: {exc}", file=sys.stderr)
        return 2

    return 1


if __name__ == "__main__":
    sys.exit(main())
