"""``paysw bench``: the benchmarks, registered with ``paysw`` through the ``paysw.commands`` entry
points (pyproject.toml), so that the switch never imports bench. Each benchmark's module is
imported only when it runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from switch.cli_support import at_least_one


def add_parser(commands: argparse._SubParsersAction) -> None:
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
    archive_bench = benches.add_parser(
        "archive",
        help="archive, drop and restore a day of N purchases beside a switch's writes, against the writes alone",
        description="Write a day of N purchases older than the journal keeps (approved, settled) into a fresh "
        "embedded PostgreSQL (or SWITCH_DATABASE_URL); write today's purchases ahead and record them (200 a "
        "second, 8 at once), alone and then while the day is archived, dropped and restored; report each step's "
        "time and the write-ahead's latency in each window as ratios to the writes alone (same run).",
    )
    archive_bench.add_argument("--rows", type=int, default=200_000, help="purchases in the day (default 200,000)")
    archive_bench.add_argument("--out", type=Path, help="write the results as JSON here")
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
        "--steps",
        action="store_true",
        help="time each step of a purchase (step_timing) and report their means: where a purchase's time goes "
        "(not with --against)",
    )
    profile_bench.add_argument(
        "--against",
        metavar="REV",
        help="A/B: profile commit REV and this checkout alternately and report each part's ratio, this / REV",
    )
    profile_bench.add_argument(
        "--rounds", type=at_least_one, default=2, help="with --against: runs of each side (default 2)"
    )
    profile_bench.add_argument(
        "--rate",
        type=_rate,
        help="pace the purchases at this many a second, the senders taking turns: the CPU a purchase costs "
        "at that load, where batches are smaller than at saturation (default: closed loop)",
    )
    start_bench = benches.add_parser(
        "start",
        help="how long the switch takes to be ready on the demo stack, and the CPU its processes spent",
        description="Start the switch of the demo stack (embedded PostgreSQL, a local Ray, the channels' and the "
        "risk actors) once uncounted, then --rounds times, each after a stop: seconds from its spawn to ready, and "
        "the CPU the front end, Ray's processes (actors included), PostgreSQL and the simulators alive then had "
        "spent; and the simulators' own start (started first: seconds to their ports open), and before each "
        "counted start a cold `paysw sim` as the tests start it (seconds to every port open, and its processes' CPU).",
    )
    start_bench.add_argument("--rounds", type=at_least_one, default=3, help="starts counted (default 3)")
    start_bench.add_argument("--out", type=Path, help="write the results as JSON here")
    start_bench.add_argument(
        "--against",
        metavar="REV",
        help="A/B: start commit REV (01cb817 or later) and this checkout alternately, --rounds each (each run "
        "with its own uncounted first start)",
    )
    held_bench = benches.add_parser(
        "held",
        help="the demo stack held under load for minutes: throughput and every part's memory, window by window",
        description="Hold the demo stack at one concurrency for --minutes and report, for each window, approved/s, "
        "p50 / p99 and the resident memory of every part; then each part's growth from the first window's end.",
    )
    held_bench.add_argument("--concurrency", type=int, default=128, help="purchases under way (default 128)")
    held_bench.add_argument("--minutes", type=float, default=10.0, help="length of the run (default 10)")
    held_bench.add_argument("--window-seconds", type=float, default=60.0, help="length of a window (default 60)")
    held_bench.add_argument(
        "--rate",
        type=_rate,
        help="pace the purchases at this many a second, the senders taking turns (default: closed loop)",
    )
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
    overload_bench.add_argument(
        "--rate",
        type=float,
        help="offer purchases at this many a second (an open loop, at most --concurrency outstanding); "
        "default: a closed loop, each sender's next as soon as its last is answered",
    )
    overload_bench.add_argument(
        "--quiet", type=int, default=8, help="purchases outstanding from another peer, 127.0.0.2 (default 8; 0: none)"
    )
    overload_bench.add_argument("--out", type=Path, help="write the results as JSON here")
    link_bench = benches.add_parser(
        "link",
        help="handing batches to a channel actor: Ray call, streaming Ray call and the actor's link",
        description="Send batches of payments to one echoing actor three ways in the same run (a Ray "
        "call, a streaming Ray call, the actor's TCP link) and report batches a second and CPU per batch.",
    )
    link_bench.add_argument("--seconds", type=float, default=5.0, help="time per measurement (default 5)")
    link_bench.add_argument("--out", type=Path, help="write the results as JSON here")
    scale_bench = benches.add_parser(
        "scale",
        help="1 or 2 front-end processes, actors on 1 or 2 Ray nodes: throughput and CPU per purchase",
        description="Run the demo stack on a Ray cluster of ray start processes (token authentication, TLS "
        "links) each way asked: F front-end processes (paysw run --workers F) x N Ray nodes (the --second-node "
        "channels' actors placed on the second node); the same closed-loop load each way; approved/s, p50 / p99 "
        "and the CPU per purchase of every process, with ratios to the first way and the purchases a second "
        "one core of each part carries.",
    )
    scale_bench.add_argument("--concurrency", type=int, default=128, help="purchases under way (default 128)")
    scale_bench.add_argument("--seconds", type=float, default=15.0, help="length of each measurement (default 15)")
    scale_bench.add_argument(
        "--ways", type=_ways, default="1x1,2x1,1x2,2x2", help="FxN, comma-separated (default 1x1,2x1,1x2,2x2)"
    )
    scale_bench.add_argument(
        "--second-node",
        type=_channels,
        default="alipay,unionpay,ecny",
        help="channels whose actors go to the second node (default alipay,unionpay,ecny)",
    )
    scale_bench.add_argument("--out", type=Path, help="write the results as JSON here")
    risk_bench = benches.add_parser(
        "risk",
        help="risk control's cost with 20 rules: decisions a second, a shard's rebuild, the latency it adds",
        description="In one run, with 20 rules (8 on the payment alone, 12 counted): decisions a second in one "
        "process against a busy day's counters; the same through a real risk actor over its link; a shard's "
        "rebuild from a journal of --rows approved purchases; and the demo stack with and without the rules, "
        "paced at --rate and then saturated, the risk steps' own p50 / p99 from the front end's step timing.",
    )
    risk_bench.add_argument("--seconds", type=float, default=5.0, help="each decisions measurement (default 5)")
    risk_bench.add_argument("--rows", type=int, default=1_000_000, help="the rebuild's day (default 1,000,000)")
    risk_bench.add_argument("--payments", type=int, default=200_000, help="counted before deciding (default 200,000)")
    risk_bench.add_argument("--stack-seconds", type=float, default=20.0, help="each stack run; 0: none (default 20)")
    risk_bench.add_argument("--rate", type=float, default=500.0,
                            help="stack: the paced load, purchases a second (default 500)")  # fmt: skip
    risk_bench.add_argument("--concurrency", type=int, default=128,
                            help="stack: purchases under way at most, paced or not (default 128)")  # fmt: skip
    risk_bench.add_argument("--out", type=Path, help="write the results as JSON here")
    notify_bench = benches.add_parser(
        "notify",
        help="notifications to the merchant under load: delivered a second, credit to receipt, the cost",
        description="The demo stack twice in one run: a baseline with no merchant URL, then with the demo "
        "merchant's receiver notified of every payment credited; a closed loop of purchases each time. Reports "
        "notifications delivered a second, the delay from credit to the merchant's receipt (p50, p99) and the "
        "approved purchases a second and p99 of both runs, as ratios. Exit 1 if a payment was not notified.",
    )
    notify_bench.add_argument("--concurrency", type=int, default=128, help="purchases under way (default 128)")
    notify_bench.add_argument("--seconds", type=float, default=20.0, help="length of each run (default 20)")
    notify_bench.add_argument("--rate", type=float, default=500.0,
                              help="purchases a second; 0: as many as --concurrency allow (default 500)")  # fmt: skip
    notify_bench.add_argument("--out", type=Path, help="write the results as JSON here")


def _rate(text: str) -> float:
    """A pace: purchases a second, above 0 (no pace is no ``--rate``)."""
    try:
        rate = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not rate > 0:
        raise argparse.ArgumentTypeError(f"a rate above 0, not {text}")
    return rate


def _ways(text: str) -> tuple:
    from bench.scale import Way

    ways = []
    for item in text.split(","):
        front_ends, _, nodes = item.partition("x")
        if not (front_ends.isdigit() and nodes.isdigit() and 1 <= int(front_ends) <= 8 and 1 <= int(nodes) <= 2):
            raise argparse.ArgumentTypeError(f"{item!r} is not FxN with F front ends (1-8) and N Ray nodes (1-2)")
        ways.append(Way(int(front_ends), int(nodes)))
    return tuple(ways)


def _channels(text: str) -> tuple[str, ...]:
    from bench.demo_config import DEMO_SWITCH_CONFIG
    from switch.config import load_config

    known = load_config(DEMO_SWITCH_CONFIG).channels
    channels = tuple(c for c in text.split(",") if c)
    unknown = [c for c in channels if c not in known]
    if unknown or not channels:
        raise argparse.ArgumentTypeError(f"expected some of {', '.join(known)}; not {', '.join(unknown) or 'none'}")
    return channels


def main(args: argparse.Namespace) -> int:
    if args.bench_command == "archive":
        from bench.archive_speed import main as archive_main

        return archive_main(args.rows, args.out)
    if args.bench_command == "recon":
        from bench.recon_bench import main as recon_bench_main

        return recon_bench_main(args.rows, args.out)
    if args.bench_command == "profile":
        from bench.profile import compare
        from bench.profile import main as profile_main

        if args.against:
            if args.steps or args.py_spy:
                print("paysw bench profile: --steps and --py-spy go with one profile, not --against", file=sys.stderr)
                return 2
            return compare(args.against, args.rounds, args.concurrency, args.seconds, args.out, args.rate)
        return profile_main(args.concurrency, args.seconds, args.py_spy, args.out, args.rate, args.steps)
    if args.bench_command == "start":
        from bench.start import compare as start_compare
        from bench.start import main as start_main

        if args.against:
            return start_compare(args.against, args.rounds, args.out)
        return start_main(args.rounds, args.out)
    if args.bench_command == "held":
        from bench.held import main as held_main

        return held_main(args.concurrency, args.minutes, args.window_seconds, args.out, args.rate)
    if args.bench_command == "overload":
        from bench.overload import main as overload_main

        return overload_main(args.concurrency, args.seconds, args.out, args.quiet, args.rate)
    if args.bench_command == "scale":
        from bench.scale import main as scale_main

        return scale_main(args.concurrency, args.seconds, args.ways, args.second_node, args.out)
    if args.bench_command == "risk":
        from bench.risk_speed import main as risk_main

        return risk_main(args.seconds, args.rows, args.payments, args.stack_seconds, args.rate, args.concurrency,
                         args.out)  # fmt: skip
    if args.bench_command == "notify":
        from bench.notify_speed import main as notify_main

        return notify_main(args.concurrency, args.seconds, args.rate, args.out)
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
