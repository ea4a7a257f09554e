"""``paysw demo``: embedded PostgreSQL + channel simulators + the switch + a short burst of
purchases over real TCP for every channel, then a summary of what happened. ``--serve`` leaves
it all running on 127.0.0.1 for trying by hand, until Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import uvloop

from bench.client import IsoClient
from bench.demo_config import DEMO_DIR, DEMO_SIMULATORS_CONFIG, DEMO_SWITCH_CONFIG, absolute_paths
from bench.demo_console import (
    DEMO_CHECKER,
    DEMO_CHECKER_PASSWORD,
    DEMO_PASSWORD,
    DEMO_USER,
    LEGACY_CONFIG,
    LEGACY_LISTEN,
    console,
    console_drill,
    forget_live_sections,
    legacy_switch,
)
from bench.merchant import MerchantClient, Receiver, describe, receiver_thread
from bench.simulators.outcomes import SLOW_SUFFIX
from bench.simulators.runner import start_simulators, stop_simulators
from bench.simulators.server import SimulatorConfig, control_address, load_simulator_config
from bench.terminal import TerminalKeys
from bench.traffic import (
    CODE_SHAPES,
    DEMO_MERCHANT,
    Stans,
    card_number,
    network,
    payment_code,
    purchase,
    quantile,
    reversal,
)
from protocols.channels import channel_of
from risk.lists import change_list
from switch.admin_token import switch_token, token_path
from switch.app import SwitchApp, database_url_for, until_signalled
from switch.config import Config, SecuritySection, host_port, load_config
from switch.journal.archive import KEEP_DAYS
from switch.journal.machine import FINAL, sql_set
from switch.journal.roles import OWNER_URL_ENV
from switch.logs import setup_logging
from switch.operator import request as admin_request

MERCHANT = DEMO_MERCHANT
TERMINALS = ("T0000001", "T0000002", "T0000003", "T0000004")
# Outcome mix of the demo burst: mostly approvals, some of each decline, a few customers who
# confirm on their phone ("user paying"), and a few the channel charges but answers with an error.
SUFFIX_MIX = ["00"] * 87 + ["51"] * 4 + ["54"] * 3 + ["05"] * 3 + ["09"] * 2 + ["96"]
USER_PAYING = "09"
SETTLE_TIMEOUT_S = 60


@dataclass
class ChannelTally:
    codes: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)  # all but the customers who confirmed on the phone
    confirmed: int = 0  # paid after the customer confirmed (they wait for the channel's query schedule)


def _ports_in_use(config: Config, simulators: SimulatorConfig, others: tuple[str, ...] = ()) -> list[str]:
    sims = simulators.simulators.values()
    addresses = [
        config.switch.listen,
        config.switch.admin_listen,
        *([config.merchant_api.listen] if config.merchant_api.listen else []),
        *others,
        *(s.listen for s in sims),
        *(control_address(s) for s in sims),
    ]
    return [address for address in addresses if listening(address)]


def listening(address: str) -> bool:
    """Whether something accepts connections at ``address`` (host:port)."""
    with socket.socket() as probe:
        return probe.connect_ex(host_port(address)) == 0


def _wait_for_ports(addresses: list[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    for address in addresses:
        while not listening(address):
            if time.monotonic() > deadline:
                raise RuntimeError(f"simulator at {address} did not start within {timeout:g}s")
            time.sleep(0.1)


async def send_burst(host: str, port: int, per_channel: int, concurrency: int = 64) -> dict[str, ChannelTally]:
    """``per_channel`` purchases on each channel over four pipelined connections."""
    rng = random.Random(8583)
    stans = Stans(start=rng.randrange(1, 900_000))
    clients = [await IsoClient.connect(host, port) for _ in TERMINALS]
    tallies: dict[str, ChannelTally] = defaultdict(ChannelTally)
    limit = asyncio.Semaphore(concurrency)
    jobs = [(channel, i) for i in range(per_channel) for channel in CODE_SHAPES]

    async def one(channel: str, i: int) -> None:
        slot = i % len(TERMINALS)
        terminal = TERMINALS[slot]
        suffix = rng.choice(SUFFIX_MIX)
        pan = payment_code(channel, suffix, rng)
        message = purchase(terminal, MERCHANT, pan, rng.randrange(1, 50_000), stans.next(terminal))
        async with limit:
            started = time.perf_counter()
            answer = await clients[slot].request(message)
            elapsed_ms = (time.perf_counter() - started) * 1000
        tallies[channel].codes[answer["39"]] += 1
        if suffix == USER_PAYING:
            tallies[channel].confirmed += 1
        else:
            tallies[channel].latencies_ms.append(elapsed_ms)

    try:
        await asyncio.gather(*(one(channel, i) for channel, i in jobs))
    finally:
        for client in clients:
            await client.close()
    return tallies


async def secured_terminal(host: str, port: int, security: SecuritySection) -> None:
    """Spec section 7 on a terminal with a master key: sign on for keys, MAC'd purchases, a card
    with its PIN to UnionPay, and a forged MAC; one line each."""
    rng = random.Random()
    stans = Stans(start=rng.randrange(1, 900_000))
    terminal_id = "M0000001"
    keys = TerminalKeys(terminal_id, bytes.fromhex((DEMO_DIR / "keys/terminals/M0000001.tmk").read_text().strip()))
    client = await IsoClient.connect(host, port)
    client.keys[terminal_id] = keys  # the sign-on is MAC'd under the TMK's sign-on variant
    try:
        signed_on = await client.request(network(terminal_id, stans.next(terminal_id), "001"))
        if signed_on["39"] == "65":  # an earlier run signed on less than the switch's limit ago
            print(f"terminal {terminal_id}: sign-on refused (65, one per {security.sign_on_interval_s:g}s); waiting")
            await asyncio.sleep(security.sign_on_interval_s)
            signed_on = await client.request(network(terminal_id, stans.next(terminal_id), "001"))
        keys.take_working_keys(signed_on["62"])
        print(f"terminal {terminal_id}: signed on, PIK and MAK received under its TMK (check values match)")
        codes = Counter()
        for channel in CODE_SHAPES:
            message = purchase(terminal_id, MERCHANT, payment_code(channel, "00", rng), 888, stans.next(terminal_id))
            codes[(await client.request(message))["39"]] += 1
        print(f"  MAC'd purchases, one per channel: {dict(codes)}; answers' MACs verified: {client.bad_macs == 0}")
        card = card_number(rng)
        message = purchase(terminal_id, MERCHANT, card, 2000, stans.next(terminal_id), entry_mode="021")
        message["52"] = keys.pin_block("123456", card)
        answer = await client.request(message)
        print(f"  card {card[:6]}...{card[-4:]} with PIN: {answer['39']} (PIN translated to UnionPay's zone key)")
        message = purchase(terminal_id, MERCHANT, card_number(rng), 2000, stans.next(terminal_id), entry_mode="021")
        message["52"] = keys.pin_block("123456", card)  # bound to the card before: not format 0 for this one
        probe = await client.request(message)
        print(
            f"  PIN block bound to another card: {probe['39']} (as a wrong PIN, not sent; "
            f"{security.pin_failures_per_hour} such an hour, then 58)"
        )
        keys.mak = bytes(16)  # a tampered terminal
        forged = await client.request(
            purchase(terminal_id, MERCHANT, payment_code("wechat", "00", rng), 1, stans.next(terminal_id))
        )
        print(f"  request with a forged MAC: {forged['39']} (never sent to a channel)")
    finally:
        await client.close()


async def operator_drill(host: str, port: int, admin: str, token: str, token_file: Path) -> None:
    """What ``paysw channel disable inbank`` / ``enable inbank`` do, through the admin endpoint:
    refused without the admin token; with it, the channel off (91 at once) and on again."""
    rng = random.Random()
    stans = Stans(start=rng.randrange(1, 900_000))
    terminal = TERMINALS[0]

    async def act(action: str, with_token: str) -> int:
        try:
            await asyncio.to_thread(admin_request, admin, f"/channels/inbank/{action}", with_token, post=True)
        except urllib.error.HTTPError as exc:
            return exc.code
        return 200

    async def pay() -> str:
        message = purchase(terminal, MERCHANT, payment_code("inbank", "00", rng), 100, stans.next(terminal))
        return (await client.request(message))["39"]

    client = await IsoClient.connect(host, port)
    try:
        refused = await act("disable", "")
        off = (await act("disable", token), await pay())
        on = (await act("enable", token), await pay())
    finally:
        await client.close()
    print(f"operator, with the admin token in {token_file} (as paysw channel does):")
    print(f"  without the token: disable inbank -> HTTP {refused}")
    print(f"  disable inbank -> HTTP {off[0]}, purchase {off[1]};  enable inbank -> HTTP {on[0]}, purchase {on[1]}")


async def hang_up_drill(host: str, port: int, app: SwitchApp) -> str:
    """A terminal that hangs up while its channel is paying (Alipay, answering this code in 3 s):
    nobody hears the approval, so the switch records it ``05`` and the resolver cancels the
    payment at the channel; the terminal's 0400, sent when it is back, is ``00``. Its line, once
    the payment is final (run beside the other drills: the resolver takes some seconds)."""
    assert app.journal is not None
    rng = random.Random()
    stans = Stans(start=rng.randrange(1, 900_000))
    terminal = TERMINALS[1]
    message = purchase(terminal, MERCHANT, payment_code("alipay", SLOW_SUFFIX, rng), 100, stans.next(terminal))
    client = await IsoClient.connect(host, port)
    sent = asyncio.ensure_future(client.request(message))
    await asyncio.sleep(0.5)
    await client.close()
    await asyncio.gather(sent, return_exceptions=True)
    row = None
    for _ in range(SETTLE_TIMEOUT_S * 4):
        row = await app.journal.pool.fetchrow(
            "SELECT state, response_code FROM txn WHERE terminal_id = $1 AND stan = $2 AND transmitted = $3 "
            f"AND state IN {sql_set(FINAL)}",
            terminal,
            message["11"],
            message["7"],
        )
        if row is not None:
            break
        await asyncio.sleep(0.25)
    client = await IsoClient.connect(host, port)
    try:
        reversed_ = await client.request(reversal(message, stans.next(terminal)))
    finally:
        await client.close()
    ended = f"recorded {row['response_code']}, {row['state']} at the channel" if row else "still open"
    return f"a terminal hanging up while Alipay pays (3 s): {ended}; its 0400 when it is back: {reversed_['39']}"


async def risk_drill(host: str, port: int, app: SwitchApp) -> None:
    """The demo's risk rules (bench/demo_config/risk/rules.toml) at work: a payment over the cap
    declined, one over the shadow rule's threshold approved with the hit journaled, and a code
    declined once it is black-listed (as ``paysw risk list add`` does)."""
    assert app.journal is not None
    pool = app.journal.pool
    rng = random.Random()
    stans = Stans(start=rng.randrange(1, 900_000))
    terminal = TERMINALS[0]

    async def pay(amount_fen: int, code: str) -> tuple[str, list[str]]:
        answer = await client.request(purchase(terminal, MERCHANT, code, amount_fen, stans.next(terminal)))
        rows = await pool.fetch("SELECT rule_id, mode FROM risk_decision WHERE rrn = $1 ORDER BY 1", answer["37"])
        return answer["39"], [f"{r['rule_id']} ({r['mode']})" for r in rows]

    client = await IsoClient.connect(host, port)
    try:
        capped = await pay(5_000_001, payment_code("alipay", "00", rng))
        watched = await pay(2_500_000, payment_code("alipay", "00", rng))
        code = payment_code("wechat", "00", rng)
        before = await pay(100, code)
        async with pool.acquire() as conn:
            assert app.fingerprint is not None
            fingerprint = app.fingerprint(code).hex()  # as paysw risk list --code-stdin keeps it
            await change_list(conn, True, "black", "code", fingerprint, "demo: reported stolen", "demo")
        for _ in range(50):  # the switch hears of it by NOTIFY, within a second
            after = await pay(100, code)
            if after[0] != "00":
                break
            await asyncio.sleep(0.1)
        async with pool.acquire() as conn:
            await change_list(conn, False, "black", "code", fingerprint, "demo: over", "demo")
        drained = payment_code("unionpay", "00", rng)
        burst = [await pay(100, drained) for _ in range(6)]
    finally:
        await client.close()
    print("risk rules (bench/demo_config/risk/rules.toml), decided before the channel and journaled:")
    print(f"  a payment of 50,000.01 yuan: {capped[0]} (exceeds amount limit; never sent), rules {capped[1]}")
    print(f"  a payment of 25,000.00 yuan: {watched[0]}, rules {watched[1]} (shadow: counted, not applied)")
    print(f"  a code before and after it is black-listed: {before[0]}, then {after[0]}, rules {after[1]}")
    print(f"  one code paying six times running: {' '.join(code for code, _ in burst)}, rules {burst[-1][1]}"
          " (counted by the risk actors)")  # fmt: skip


async def reload_drill(host: str, port: int, app: SwitchApp) -> None:
    """Live configuration: the demo's kiosk merchant suspended in the configuration file and the
    file reloaded (as SIGHUP or ``paysw reload`` do), with no restart; then the file as it was.
    The file is the demo's copy in the data folder (``main``), never the repository's."""
    source = Path(app.config.source)
    original = source.read_text()
    kiosk, terminal = "898310048990002", "K0000001"
    stans = Stans(start=random.randrange(1, 900_000))
    client = await IsoClient.connect(host, port)

    async def pay() -> str:
        code = payment_code("wechat", "00", random.Random())
        return (await client.request(purchase(terminal, kiosk, code, 100, stans.next(terminal))))["39"]

    try:
        before = await pay()
        source.write_text(original.replace(f'id = "{kiosk}"\n', f'id = "{kiosk}"\nsuspended = true\n', 1))
        applied = await app.reload()
        suspended = await pay()
        source.write_text(original.replace(f'id = "{kiosk}"', 'id = "not a merchant id"', 1))
        refused = not await app.reload()
        still = await pay()
        source.write_text(original)
        await app.reload()
        after = await pay()
    finally:
        source.write_text(original)
        await client.close()
    print(f"live configuration ({source.name} read again, as SIGHUP or `paysw reload` do; no restart):")
    print(f"  merchant {kiosk} suspended in the file: {before} before, {suspended} after (applied: {applied})")
    print(f"  an invalid file refused, the running configuration kept: {refused}, the merchant still {still}")
    print(f"  the file as it was: {after}")


def _receiver_address(config: Config) -> str:
    """Where the demo merchant's notifications go (its ``notify_url``): the demo's receiver."""
    url = next(m.notify_url for m in config.merchants if m.id == MERCHANT)
    return url.removeprefix("http://").partition("/")[0]


async def merchant_drill(config: Config, simulators: SimulatorConfig, receiver: Receiver) -> None:
    """The merchant side: a QR order on each channel that takes them, created over the signed
    merchant API, scanned and paid at the channel's simulator, recorded from the channel's
    notification, and the merchant's receipt; and how many of the terminal payments above the
    merchant was told of (the till-speaker case)."""
    merchant = next(m for m in config.merchants if m.id == MERCHANT)
    key = (DEMO_DIR / "keys" / "merchants" / MERCHANT).read_bytes()  # DEMO TEST KEY
    client = MerchantClient(f"http://{config.merchant_api.listen}", MERCHANT, key)
    qr_channels = [c for c in merchant.channels if channel_of(config.channels[c].kind).takes_qr]
    print(f"merchant API on http://{config.merchant_api.listen}: one QR order per channel, paid by a customer's scan:")
    for channel in qr_channels:
        number = f"DEMO{random.randrange(10**12):012d}"
        status, order = await asyncio.to_thread(client.create_qr, number, 1234, "Demo latte", channel=channel)
        if status != 200 or not order.get("qr_code"):
            print(f"  {channel}: not created: {order}")
            continue
        control, scan = control_address(simulators.simulators[channel]), json.dumps({"qr_code": order["qr_code"]})
        try:  # the customer scans the code and pays
            scanned = await asyncio.to_thread(admin_request, control, "/_sim/scan", "", True, scan.encode())
        except urllib.error.HTTPError as exc:
            scanned = {"status": f"refused ({exc.code})"}
        for _ in range(100):
            receipt = [b for b in receiver.received if b["order_no"] == number]
            if receipt:
                break
            await asyncio.sleep(0.1)
        told = describe(receipt[0]) if receipt else "no notification yet"
        print(f"  {channel}: code {order['qr_code'][:40]}..., scanned: {scanned.get('status')}; merchant {told}")
    terminal = [b for b in receiver.received if b["terminal_id"] != "HTTP" and b["state"] == "APPROVED"]
    print(f"  terminal payments notified to the merchant (signed, verified by its receiver): {len(terminal)}")


def print_summary(tallies: dict[str, ChannelTally], seconds: float) -> None:
    header = (
        f"{'channel':10s} {'count':>6s} {'approved':>9s} {'confirmed':>10s} {'declined':>9s} {'pending':>8s}"
        f" {'91':>4s} {'mean ms':>8s} {'p99 ms':>7s}  response codes"
    )
    print(header)
    print("-" * len(header))
    total = 0
    for channel in CODE_SHAPES:
        t = tallies[channel]
        count = sum(t.codes.values())
        total += count
        approved, pending, unavailable = t.codes["00"], t.codes["09"], t.codes["91"]
        declined = count - approved - pending - unavailable
        codes = " ".join(f"{c}:{n}" for c, n in sorted(t.codes.items()))
        print(
            f"{channel:10s} {count:6d} {approved:9d} {t.confirmed:10d} {declined:9d} {pending:8d} {unavailable:4d}"
            f" {statistics.fmean(t.latencies_ms):8.1f} {quantile(t.latencies_ms, 99):7.1f}  {codes}"
        )
    print(f"\n{total} purchases in {seconds:.1f}s, 64 outstanding at a time. 'confirmed': approved after the")
    print("customer confirmed on the phone, found by the channel's query schedule (WeChat Pay every 10 s, Alipay")
    print("every 5 s); they are left out of mean and p99. '91': the channel charged but answered an error; the")
    print("resolver reverses those.")


async def _settle(app: SwitchApp) -> None:
    """Wait for the resolver to settle every open transaction, showing progress (rewritten in
    place on a terminal, a line every few seconds otherwise)."""
    assert app.journal is not None
    on_terminal = sys.stdout.isatty()
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    waited = 0
    while (open_now := await app.journal.open_count()) and time.monotonic() < deadline:
        if on_terminal:
            print(f"\rresolver: {open_now} transaction(s) still open (pending or unknown)...   ", end="", flush=True)
        elif waited % 5 == 0:
            print(f"resolver: {open_now} transaction(s) still open (pending or unknown)...", flush=True)
        await asyncio.sleep(1)
        waited += 1
    settled = f"{open_now} transaction(s) open (settled at the next start)" if open_now else "no transaction open"
    print(("\r" if on_terminal else "") + f"resolver: {settled}" + " " * 30)


async def _journal_summary(app: SwitchApp) -> None:
    assert app.journal is not None
    rows = await app.journal.pool.fetch(
        "SELECT channel, state, count(*) AS n FROM txn WHERE received_at > now() - interval '10 minutes' "
        "GROUP BY channel, state ORDER BY channel, state"
    )
    print("\njournal (last 10 minutes): " + ", ".join(f"{r['channel']}/{r['state']}={r['n']}" for r in rows))


async def _run(
    config: Config, simulators: SimulatorConfig, url: str, token: str, token_file: Path, serve: bool, per_channel: int
) -> None:
    key = (DEMO_DIR / "keys" / "merchants" / MERCHANT).read_bytes()  # DEMO TEST KEY
    dropped = await forget_live_sections(url)
    if dropped:
        print(f"configuration: the file's again (an earlier run's console kept {', '.join(dropped)} in the journal)")
    with receiver_thread(key, *host_port(_receiver_address(config))) as receiver:
        async with legacy_switch():
            await _run_with(config, simulators, url, token, token_file, serve, per_channel, receiver)


async def _run_with(
    config: Config, simulators: SimulatorConfig, url: str, token: str, token_file: Path, serve: bool,
    per_channel: int, receiver: Receiver,
) -> None:  # fmt: skip
    app = SwitchApp(config, url, token)
    started = time.monotonic()
    await app.start()
    print(
        f"switch ready in {time.monotonic() - started:.1f}s on {config.switch.listen}"
        f" (metrics: http://{config.switch.admin_listen}/metrics)",
        flush=True,
    )
    try:
        if serve:
            print(f"operator controls: paysw channel list|disable|enable|... (admin token in {token_file})")
            async with console(config, url, token) as base:
                print(f"console: {base} (DEMO ONLY accounts {DEMO_USER} / {DEMO_PASSWORD}, and "
                      f"{DEMO_CHECKER} / {DEMO_CHECKER_PASSWORD} who approves the first's changes)")  # fmt: skip
                print("serving until Ctrl-C", flush=True)
                await until_signalled()
        else:
            host, port = host_port(config.switch.listen)
            started = time.monotonic()
            tallies = await send_burst(host, port, per_channel)
            print()
            print_summary(tallies, time.monotonic() - started)
            print()
            hang_up = asyncio.ensure_future(hang_up_drill(host, port, app))  # told at the end
            await secured_terminal(host, port, config.security)
            print()
            await operator_drill(host, port, config.switch.admin_listen, token, token_file)
            print()
            await risk_drill(host, port, app)
            print()
            await reload_drill(host, port, app)
            print()
            await merchant_drill(config, simulators, receiver)
            print()
            async with console(config, url, token) as base:
                await console_drill(host, port, base, app)
            print()
            print(await hang_up)
            print()
            await _settle(app)
            await _journal_summary(app)
    finally:
        await app.stop()


def _retention(data_dir: Path) -> None:
    """The journal's retention as its owner runs it each day from cron (nothing of the demo's is old
    enough to go)."""
    to = data_dir / "journal-archive"
    to.mkdir(mode=0o700, exist_ok=True)
    command = ["journal", "archive", "--to", str(to), "--drop", "--data-dir", str(data_dir)]
    env = {k: v for k, v in os.environ.items() if k != OWNER_URL_ENV}  # the embedded journal's owner
    done = subprocess.run([sys.executable, "-m", "switch.cli", *command], env=env, capture_output=True, text=True)
    said = (done.stdout + done.stderr).strip().splitlines() or ["?"]
    print(f"retention: paysw journal archive --to {to.name} --drop: {said[-1]} (exit {done.returncode}; the journal "
          f"keeps the last {KEEP_DAYS} days, and the demo's are today's)")  # fmt: skip


def main(serve: bool = False, data_dir: Path = Path(".paysw"), per_channel: int = 200) -> int:
    setup_logging("WARNING")
    data_dir.mkdir(parents=True, exist_ok=True)
    copy = data_dir / "switch.toml"  # what a reload reads again (the demo's drill edits it, never the repository's)
    copy.write_text(absolute_paths(DEMO_SWITCH_CONFIG.read_text()) + LEGACY_CONFIG)
    config = load_config(copy)
    simulators = load_simulator_config(str(DEMO_SIMULATORS_CONFIG))
    busy = _ports_in_use(config, simulators, (_receiver_address(config), LEGACY_LISTEN, config.console.listen))
    if busy:
        print(f"paysw demo: ports already in use: {', '.join(busy)} (is another demo running?)")
        return 2
    token = switch_token(config, data_dir)  # generated at the first start, then reused
    url, embedded = database_url_for(config, data_dir)
    print(f"journal: {'embedded PostgreSQL under ' + str(data_dir / 'pg') if embedded else 'external database'}")
    processes = start_simulators(simulators)
    try:
        _wait_for_ports([s.listen for s in simulators.simulators.values()])
        print(f"simulators: {', '.join(f'{n} {s.listen}' for n, s in simulators.simulators.items())}", flush=True)
        uvloop.run(_run(config, simulators, url, token, token_path(config, data_dir), serve, per_channel))
        if embedded is not None and not serve:
            _retention(data_dir)
    except KeyboardInterrupt:
        pass
    finally:
        stop_simulators(processes)
        if embedded is not None:
            embedded.stop()
    return 0
