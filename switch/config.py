"""Configuration: one TOML file, validated at start-up. Every bad key or value is a
``ConfigError`` naming the file, the path inside it and what was expected."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta, Struct

from actors.settings import ActorSettings, LinkTls
from hsm import HsmSettings
from hsm.algorithms import SCHEMES
from hsm.secret_file import SecretFileError, read_secret
from protocols.channels import UnknownChannel, channel_of
from protocols.channels.base import Account
from risk.rules import RiskSection
from switch.addresses import HostPort
from switch.breaker import BreakerSettings
from switch.console.settings import ConsoleSection
from switch.journal.machine import REFUND_DAYS_MAX
from switch.merchant.settings import MerchantApiSection
from switch.toml_file import read_toml

Positive = Annotated[int, Meta(ge=1)]
Digits = Annotated[str, Meta(pattern=r"^\d+$")]
TerminalId = Annotated[str, Meta(min_length=8, max_length=8)]
MerchantId = Annotated[str, Meta(min_length=15, max_length=15)]
DRAIN_MARGIN_S = 5.0  # the default drain: the request deadline plus this


class _Strict(Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    pass


class SwitchSection(_Strict):
    listen: HostPort = "127.0.0.1:8583"
    admin_listen: HostPort = "127.0.0.1:9583"  # /metrics, /healthz, /readyz, /channels
    # Operator actions always need a Bearer token: this file's, else one the switch generates at its
    # first start under --data-dir (switch.admin_token). Required when admin_listen is not loopback.
    admin_token_file: str = ""
    # TLS on admin_listen (PEM files, from the configuration's folder): required when it is not
    # loopback, since operator actions carry the token. admin_tls_ca is what `paysw channel` and the
    # console trust it by (none: the system's CAs; a self-signed certificate: that certificate).
    admin_tls_cert: str = ""
    admin_tls_key: str = ""
    admin_tls_ca: str = ""
    request_deadline_ms: Annotated[int, Meta(ge=100, le=59_000)] = 30_000
    max_in_flight_per_connection: Positive = 512
    stalled_frame_timeout_s: Annotated[float, Meta(gt=0)] = 30.0
    # The limits of this section hold in each front-end process: `paysw run --workers N` (one port,
    # SO_REUSEPORT) admits up to N times as much in all; the channels' rate quotas are divided.
    # Caps on terminal connections (past one: accepted and closed at once) and on their silence.
    max_connections: Positive = 10_000  # keep under the process's open-file limit
    max_connections_per_peer: Positive = 500  # per address (IPv6: per /64): terminals behind one NAT share it
    idle_timeout_s: Annotated[float, Meta(gt=0)] = 300.0  # no complete frame for this long: closed
    max_batch: Positive = 256  # transactions per frame to a channel actor
    # Load shedding (91 at once, before any journal or channel work); see switch.shedding.
    # Admission by queueing delay (switch.shedding): a limit on new purchases waiting for their
    # channel call at once, cut when every wait of a shed_queue_interval_ms was over
    # shed_queue_delay_ms (CoDel's standing queue) with 3/4 of the limit waiting, to the number
    # that would wait that long, raised while reached without one. Past it, newcomers are answered
    # 91 at once, after the work under way (switch.intake), so under overload the accepted stay
    # fast; a peer (source address) with fewer than its share (the limit over the peers waiting)
    # is still let in, one share past the limit at most. Reversals and retransmissions of one under way are never shed.
    shed_queue_delay_ms: Annotated[int, Meta(ge=0, le=10_000)] = 50  # 0: off
    shed_queue_interval_ms: Annotated[int, Meta(ge=1, le=10_000)] = 150
    # Backstops, past either limit:
    max_in_flight: Positive = 10_000  # financial requests under way, all connections of one process together
    shed_loop_lag_ms: Annotated[int, Meta(ge=0)] = 300  # event loop running this late; 0: off
    step_timing: bool = False  # profiling: a histogram of seconds per lifecycle step (switch.steps)
    # Channel packages outside protocols/channels that a channel's dotted kind may name. Importing
    # one runs its code in the switch and in every channel actor: list only installed packages you
    # trust as you trust the switch's own code (and install them on every Ray node).
    channel_packages: list[str] = []
    # On SIGTERM, how long the front end may take to answer the requests it has read and finish
    # its transactions (switch.frontend's drain); then it stops anyway and the resolver of any
    # front end finishes what is left, as after a crash. Unset: request_deadline_ms + 5 s.
    drain_timeout_s: Annotated[float, Meta(gt=0, le=600)] | None = None
    # DEMO ONLY: accepts the published demo keys and secret files open to other users.
    demo: bool = False

    def drain_bound_s(self) -> float:
        """``drain_timeout_s``, or by default the request deadline and a margin to record and answer."""
        if self.drain_timeout_s is not None:
            return self.drain_timeout_s
        return self.request_deadline_ms / 1000 + DRAIN_MARGIN_S


class DatabaseSection(_Strict):
    url: str = ""  # empty: embedded PostgreSQL from pgserver under the data folder
    pool_size: Annotated[int, Meta(ge=2, le=90)] = 6  # connections for lookups
    group_commit_max: Positive = 512  # journal writes per round trip
    # Write-ahead batches committing at once, and as many outcome batches (a connection each).
    # One gathers the most rows per statement and commit, which is what PostgreSQL's CPU per
    # purchase follows; more only where the round trip to PostgreSQL, not its CPU, is the limit.
    writers: Annotated[int, Meta(ge=1, le=16)] = 1
    # Under load (writes less than this apart, on average) a batch waits up to this long for 16
    # writes before it is sent: fewer, fuller round trips, the CPU the tail queues for. 0: never.
    linger_ms: Annotated[float, Meta(ge=0, le=20)] = 2.0
    partitions_ahead_days: Annotated[int, Meta(ge=1, le=60)] = 7


class RaySection(_Strict):
    address: str = ""  # empty: start a local Ray sized for a small machine, on 127.0.0.1 only
    namespace: str = "paysw"
    # The payment links to channel actors on other nodes (actors.link): TLS both ways with these
    # PEM files (a CA of the links' own: any certificate it signed is a link party). Needed when
    # the Ray node is not on loopback, unless plaintext_links is set (trusted network only).
    link_tls_cert: str = ""
    link_tls_key: str = ""
    link_tls_ca: str = ""
    plaintext_links: bool = False


class ChannelSection(_Strict):
    """One channel: ``[channels.NAME]`` holds what the front end does with it (switched on, its
    bulkhead and quotas in each front end, its breaker, how open payments are resolved);
    ``[channels.NAME.actor]`` its actors' settings (``actors.settings``); and
    ``[channels.NAME.account]`` the switch's account there, whose fields the channel's package
    defines (``protocols.channels.<kind>``)."""

    kind: str  # the channel's package: wechat, alipay, unionpay, ecny, inbank, or a dotted module path
    actor: ActorSettings
    account: dict[str, object]  # checked against the package's schema by load_config (account_of)
    enabled: bool = True
    shards: Annotated[int, Meta(ge=1, le=64)] = 1
    frontend_in_flight: Positive = 2048  # transactions under way in one front-end process; beyond: 91
    # Quotas of one `paysw run`: its --workers processes each enforce an even share (worker_share).
    rate_per_s: Annotated[float, Meta(ge=0)] = 0  # new transactions a second; 0: no limit
    merchant_rate_per_s: Annotated[float, Meta(ge=0)] = 0  # the same for each merchant; 0: no limit
    # Its notifications read a second (each a signature its actor checks, beside its payments, for
    # whoever posts one); past it answered 503 unread, and the channel sends them again; 0: no limit.
    notices_per_s: Annotated[float, Meta(ge=0)] = 200
    breaker: BreakerSettings = BreakerSettings()
    pin_key: str = ""  # card channels: the zone PIN key (its key store label) PIN blocks are translated to
    # Days after a purchase its refunds are taken (from its receipt; later: 12, never sent): the
    # channel's own rule or the contract's, WeChat Pay's a year. 0: refunds refused (voids only).
    refund_days: Annotated[int, Meta(ge=0, le=REFUND_DAYS_MAX)] = REFUND_DAYS_MAX
    # Resolving a payment the customer is still confirming, or whose outcome is unknown:
    query_interval_ms: Annotated[int, Meta(ge=100)] = 5_000  # between queries
    payment_window_ms: Annotated[int, Meta(ge=1_000)] = 30_000  # from the pay call; then cancel it
    cancel_after_ms: Annotated[int, Meta(ge=0)] = 0  # no cancel sooner than this after the pay call
    close_after_ms: Annotated[int, Meta(ge=0)] = 0  # no close of a QR order sooner than this after it was made


class CodeRoute(_Strict):
    channel: str
    prefixes: list[Digits]
    lengths: list[Annotated[int, Meta(ge=8, le=24)]]  # field 2 carries at most 19 digits
    luhn: bool = False


class BinRoute(_Strict):
    prefix: Digits
    channel: str


class GrayRoute(_Strict):
    """Gray cut-over (灰度引流): the purchases a terminal of some merchants makes on ``channel`` go
    ``to`` another channel instead: a new gateway of the same kind, or a legacy switch upstream
    (kind ``legacy``). The merchants are those named, and ``percent`` of all of them, chosen by
    a stable hash of their id (``switch.routing.share_of``): raising it keeps those already moved."""

    channel: str
    to: str
    percent: Annotated[int, Meta(ge=0, le=100)] = 0
    merchants: list[MerchantId] = []


class RoutingSection(_Strict):
    codes: list[CodeRoute] = []
    card_bins: list[BinRoute] = []
    gray: list[GrayRoute] = []


class Merchant(_Strict):
    id: MerchantId
    name: str
    channels: list[str]
    channel_ids: dict[str, str] = {}  # the merchant's own id at each channel
    rate_per_s: dict[str, Annotated[float, Meta(gt=0)]] = {}  # its quota at a channel, over the channel's default
    suspended: bool = False
    mcc: Annotated[str, Meta(pattern=r"^([0-9]{4})?$")] = ""  # its merchant category code, for risk rules' scope
    onboarded: dt.date | None = None  # when it started taking payments (risk: limits for new merchants)
    # Settlement: the fee per channel in 1/10,000 of the amount (38 = 0.38 %), and the cycle:
    # T1 (the next day, by default) or D0 (the same day).
    fee_per_10000: dict[str, Annotated[int, Meta(ge=0, le=10_000)]] = {}
    settlement: Literal["T1", "D0"] = "T1"
    # The merchant API (switch.merchant): the key store label of the merchant's API key (HMAC;
    # "": the merchant has no HTTP API and gets no notifications), and where every payment of
    # its, at a terminal or over HTTP, is notified ("": nowhere; an HTTP order may name its own).
    api_key: str = ""
    notify_url: Annotated[str, Meta(pattern=r"^(https?://\S+)?$")] = ""


class Terminal(_Strict):
    id: TerminalId
    merchant: MerchantId
    # Field 64 of its requests, under the MAK it gets at sign-on (under its TMK, from the key store).
    mac_algorithm: Literal["x9.19", "unionpay-ecb"] = "x9.19"
    suspended: bool = False  # its purchases, voids, refunds and inquiries answered 57; reversals still taken


class SecuritySection(_Strict):
    hsm: HsmSettings
    pan_hash_key: str = "pan-hash"  # key store label of the keyed fingerprint of card numbers / codes
    # Keys imported at start when the store lacks their label (then the files may be deleted).
    key_manifest: str = ""
    # Every terminal needs a master key (tmk:TERMINAL in the key store) and MACs its requests: a
    # terminal without one could be impersonated by anyone reaching the ISO 8583 port (voids and
    # refunds need only an RRN). The switch refuses to start otherwise, unless this DEMO-ONLY
    # relaxation lets such terminals work without MAC.
    allow_terminals_without_mac: bool = False
    # Sign-on (0800 001) hands out new keys to whoever asks: it cannot require the MAK, which a
    # terminal may have lost in a power cycle. So one per terminal per this many seconds (65
    # past it); a terminal that still has its MAK uses key change (101, MAC'd, not limited).
    # 0: no limit (tests only).
    sign_on_interval_s: Annotated[float, Meta(ge=0)] = 30.0
    # PIN blocks of a terminal that do not read as format 0 under its PIK (answered 05, as an
    # issuer answers a wrong PIN), at most this many in any hour; past them its PIN blocks are
    # refused (58) until the oldest is an hour old (switch.terminal_keys.translate_pin). Counted
    # from the journal, every front end's: a process that has counted none lets one more through.
    pin_failures_per_hour: Annotated[int, Meta(ge=1, le=100)] = 3


class ReconSection(_Strict):
    """Reconciliation: how much the automatic error handling may do in one batch before it stops
    and leaves the rest to a person."""

    auto_max_count: Annotated[int, Meta(ge=0)] = 50
    auto_max_fen: Annotated[int, Meta(ge=0)] = 1_000_000  # 10,000 yuan
    schedule_hourly: bool = False  # run each hour's batches once it has closed (switch.recon.scheduler)
    grace_minutes: Annotated[int, Meta(ge=0)] = 15  # after the hour, for the channels' books to close
    lookback_hours: Annotated[int, Meta(ge=1, le=72)] = 3  # closed hours caught up after a restart


class Config(_Strict):
    security: SecuritySection
    channels: dict[str, ChannelSection]
    routing: RoutingSection
    merchants: list[Merchant]
    terminals: list[Terminal]
    switch: SwitchSection = SwitchSection()
    database: DatabaseSection = DatabaseSection()
    ray: RaySection = RaySection()
    recon: ReconSection = ReconSection()
    risk: RiskSection = RiskSection()
    merchant_api: MerchantApiSection = MerchantApiSection()
    console: ConsoleSection = ConsoleSection()
    base_dir: str = ""  # folder of the file, for relative key paths (set by load_config)
    source: str = ""  # the file itself, read again by a reload (set by load_config)


class ConfigError(Exception):
    pass


def load_config(path: str | Path) -> Config:
    path = Path(path)
    config = read_toml(path, Config, ConfigError, _upgrade_hint)
    config = msgspec.structs.replace(config, base_dir=str(path.resolve().parent), source=str(path.resolve()))
    problems = cross_check(config)
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems))
    return config


def cross_check(config: Config) -> list[str]:
    """What is wrong across sections (a route to a channel that is not configured, say), by path."""
    problems = []
    channels = config.channels
    base = Path(config.base_dir)
    for name, ch in channels.items():
        problems.extend(_channel_problems(name, ch, config.switch.channel_packages))
    token_file = config.switch.admin_token_file
    if token_file:
        try:
            read_secret(base / token_file, "the admin token file", relaxed=config.switch.demo)
        except SecretFileError as exc:
            problems.append(f"$.switch.admin_token_file: {exc}")
    elif not is_loopback(host_port(config.switch.admin_listen)[0]):
        problems.append(
            f"$.switch.admin_listen: {config.switch.admin_listen} is not a loopback address: "
            "set admin_token_file (a token generated under the data folder is for loopback only)"
        )
    problems.extend(_admin_tls_problems(config.switch))
    problems.extend(_link_tls_problems(config.ray, base))
    if config.switch.demo:  # the published demo keys are for a demo on this machine, never on a network
        listeners = {"$.switch.listen": config.switch.listen, "$.switch.admin_listen": config.switch.admin_listen}
        if config.merchant_api.listen:  # the demo merchant's key is published too
            listeners["$.merchant_api.listen"] = config.merchant_api.listen
        listeners["$.console.listen"] = config.console.listen
        for where, address in listeners.items():
            if not is_loopback(host_port(address)[0]):
                problems.append(f"{where}: {address} is not a loopback address, and demo = true")
    problems += config.console.problems()
    problems += config.merchant_api.problems()
    for i, endpoint in enumerate(config.console.admin_endpoints):  # without TLS the admin token goes in clear
        if not config.switch.admin_tls_cert and not is_loopback(host_port(endpoint)[0]):
            problems.append(
                f"$.console.admin_endpoints[{i}]: {endpoint} is not a loopback address, and the admin "
                "endpoints have no TLS ([switch] admin_tls_cert)"
            )
    pin_file = config.security.hsm.pin_file  # (a missing LMK file is the HSM's error: `paysw keys new-lmk` makes it)
    if pin_file and not (base / pin_file).is_file():
        problems.append(f"$.security.hsm.pin_file: no file {base / pin_file}")
    problems += [  # the rate rule could never judge: the window never holds min_calls
        f"$.channels.{name}.breaker.min_calls: more than window_calls ({ch.breaker.window_calls})"
        for name, ch in config.channels.items()
        if ch.breaker.min_calls > ch.breaker.window_calls
    ]
    for i, route in enumerate(config.routing.codes):
        if route.channel not in channels:
            problems.append(f"$.routing.codes[{i}].channel: unknown channel {route.channel!r}")
        if not route.prefixes or not route.lengths:
            problems.append(f"$.routing.codes[{i}]: needs at least one prefix and one length")
    for i, route in enumerate(config.routing.card_bins):
        if route.channel not in channels:
            problems.append(f"$.routing.card_bins[{i}].channel: unknown channel {route.channel!r}")
    diverted: set[str] = set()
    for i, gray in enumerate(config.routing.gray):
        where = f"$.routing.gray[{i}]"
        problems += [f"{where}.{f}: unknown channel {c!r}" for f, c in (("channel", gray.channel), ("to", gray.to))
                     if c not in channels]  # fmt: skip
        if gray.to == gray.channel:
            problems.append(f"{where}.to: the channel itself")
        if gray.channel in diverted:
            problems.append(f"{where}.channel: {gray.channel} has a gray route already")
        diverted.add(gray.channel)
    merchant_ids = set()
    for i, m in enumerate(config.merchants):
        if m.id in merchant_ids:
            problems.append(f"$.merchants[{i}].id: duplicate merchant {m.id}")
        merchant_ids.add(m.id)
        for ch in [*m.channels, *m.channel_ids, *m.rate_per_s, *m.fee_per_10000]:
            if ch not in channels:
                problems.append(f"$.merchants[{i}]: unknown channel {ch!r}")
        if m.notify_url and not m.api_key:
            problems.append(f"$.merchants[{i}].notify_url: notifications are signed with its api_key: set it")
        problems.extend(_url_problems(f"$.merchants[{i}].notify_url", m.notify_url))
    terminal_ids = set()
    for i, t in enumerate(config.terminals):
        if t.id in terminal_ids:
            problems.append(f"$.terminals[{i}].id: duplicate terminal {t.id}")
        terminal_ids.add(t.id)
        if t.merchant not in merchant_ids:
            problems.append(f"$.terminals[{i}].merchant: unknown merchant {t.merchant}")
    return problems


def _url_problems(where: str, url: str) -> list[str]:
    """What is wrong with ``url`` as the address a notification or statement goes to: plain http
    off this host, a user and password in it (they would be logged with it, and sent nowhere:
    an endpoint names its host), or a port that is no number."""
    if not url:
        return []
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        return [f"{where}: no user or password in the URL (its host and path only)"]
    try:
        parts.port  # noqa: B018 (read to check it)
    except ValueError:
        return [f"{where}: the port of {url} is not a number from 0 to 65535"]
    if not parts.hostname:
        return [f"{where}: no host in {url}"]
    return [f"{where}: an address off this host is reached over https, not {url}"] if insecure_url(url) else []


def insecure_url(url: str) -> bool:
    """Money facts cross a network only over https: http is for this host (tests, a sidecar)."""
    return url.startswith("http://") and not is_loopback(urlsplit(url).hostname or "")


# Keys of a channel's table before it was split by owner (README, "Upgrading").
_MOVED_TO_ACTOR = (
    "endpoint",
    "pool_size",
    "max_in_flight",
    "queue_wait_ms",
    "sign_threads",
    "timeout_ms",
    "actor_max_restarts",
)
_MOVED_TO_ACCOUNT = ("app_id", "mch_id", "cert_id", "keys")


def _upgrade_hint(error: str) -> str:
    if "`$.channels" not in error:
        return ""
    if any(f"unknown field `{key}`" in error for key in _MOVED_TO_ACTOR):
        return " (a channel's endpoint, pools and timeout now go in its `actor = { ... }` table)"
    if any(f"unknown field `{key}`" in error for key in _MOVED_TO_ACCOUNT):
        return " (a channel's ids and keys now go in its `account = { ... }` table)"
    return ""


def account_of(section: ChannelSection) -> Account:
    """The channel's account, typed by its package (``ValueError`` naming the field when invalid;
    ``load_config`` has checked it already)."""
    return msgspec.convert(section.account, channel_of(section.kind).account)


def _channel_problems(name: str, section: ChannelSection, packages: list[str]) -> list[str]:
    where = f"$.channels.{name}"
    if "." in section.kind and section.kind not in packages:
        return [f"{where}.kind: {section.kind!r} is a package outside the switch: list it in switch.channel_packages"]
    endpoint = section.actor.endpoint
    host = urlsplit(endpoint).hostname or ""
    if endpoint.startswith(("http://", "tcp://")) and not is_loopback(host):
        return [f"{where}.actor.endpoint: a channel off this host is reached over https or tls, not {endpoint}"]
    try:
        wire = channel_of(section.kind).wire
    except UnknownChannel as exc:
        return [f"{where}.kind: {exc}"]
    if endpoint.startswith(("tcp://", "tls://")) != (wire == "iso8583"):
        return [f"{where}.actor.endpoint: a {section.kind} channel is reached over {wire}, not {endpoint}"]
    try:
        account = account_of(section)
    except UnknownChannel as exc:
        return [f"{where}.kind: {exc}"]
    except msgspec.ValidationError as exc:  # its path is inside the account table
        text = str(exc)
        return [
            text.replace(" - at `$", f" - at `{where}.account") if "`$" in text else f"{text} - at `{where}.account`"
        ]
    return [
        f"{where}.account.keys.{field}: {getattr(account.keys, field)!r} is not one of {', '.join(SCHEMES)}"
        for field in ("sign_algorithm", "verify_algorithm")
        if getattr(account.keys, field) not in SCHEMES
    ]


def _admin_tls_problems(section: SwitchSection) -> list[str]:
    """TLS on a non-loopback admin_listen (its operator actions carry the token). Its files are the
    switch's to read at start (``switch.admin_tls``): a client's host has the CA alone."""
    cert, key, ca = section.admin_tls_cert, section.admin_tls_key, section.admin_tls_ca
    if not cert and not key:
        if is_loopback(host_port(section.admin_listen)[0]):
            return [] if not ca else ["$.switch.admin_tls_ca: set with admin_tls_cert and admin_tls_key only"]
        return [
            f"$.switch.admin_listen: {section.admin_listen} is not a loopback address: set admin_tls_cert and "
            "admin_tls_key (operator actions carry the admin token, which must not cross a network in clear)"
        ]
    if not cert or not key:
        return [f"$.switch.{'admin_tls_key' if cert else 'admin_tls_cert'}: expected with the other (both or neither)"]
    return []


def _link_tls_problems(ray: RaySection, base: Path) -> list[str]:
    files = {"link_tls_cert": ray.link_tls_cert, "link_tls_key": ray.link_tls_key, "link_tls_ca": ray.link_tls_ca}
    if not any(files.values()):
        return []
    if ray.plaintext_links:
        return ["$.ray.plaintext_links: expected false when link TLS files are set"]
    return [
        f"$.ray.{key}: " + (f"no file {base / name}" if name else "expected a file name (all three go together)")
        for key, name in files.items()
        if not name or not (base / name).is_file()
    ]


def reconciled(config: Config) -> list[str]:
    """The channels reconciled here: those whose kind keeps a statement for the switch (a legacy
    switch upstream reconciles what it handled on its own side)."""
    return [name for name, ch in config.channels.items() if channel_of(ch.kind).statement is not None]


def known_names(config: Config) -> tuple[set[str], set[str], set[str]]:
    """The channels, merchants and terminals of ``config``: what a risk rule's scope may name."""
    return {*config.channels}, {m.id for m in config.merchants}, {t.id for t in config.terminals}


def worker_share(config: Config, workers: int) -> Config:
    """The configuration of one of the ``workers`` front-end processes of ``paysw run --workers``:
    the rate quotas at the channels and of their notifications, which bound the switch as a whole,
    divided evenly (the kernel spreads connections about evenly); every other limit holds in each
    process as configured."""
    if workers == 1:
        return config
    channels = {
        name: msgspec.structs.replace(
            ch,
            rate_per_s=ch.rate_per_s / workers,
            merchant_rate_per_s=ch.merchant_rate_per_s / workers,
            notices_per_s=ch.notices_per_s / workers,
        )
        for name, ch in config.channels.items()
    }
    merchants = [
        msgspec.structs.replace(m, rate_per_s={ch: rate / workers for ch, rate in m.rate_per_s.items()})
        for m in config.merchants
    ]
    return msgspec.structs.replace(config, channels=channels, merchants=merchants)


def sizing_warnings(config: Config) -> list[str]:
    """Limits that are valid but let one channel's trouble reach the others: a channel whose
    bulkhead can hold half the switch's requests under way (a hung channel fills its bulkhead
    before its circuit opens, and the switch then sheds every channel)."""
    limit = config.switch.max_in_flight
    return [
        f"channel {name}: frontend_in_flight {ch.frontend_in_flight} is not below half of "
        f"switch.max_in_flight {limit}: a hung {name} could make the whole switch shed load"
        for name, ch in config.channels.items()
        if ch.enabled and ch.frontend_in_flight * 2 > limit
    ]


def link_tls(config: Config) -> LinkTls | None:
    """The links' TLS files as absolute paths, or None when not configured."""
    ray = config.ray
    if not ray.link_tls_cert:
        return None
    base = Path(config.base_dir)
    return LinkTls(cert=str(base / ray.link_tls_cert), key=str(base / ray.link_tls_key), ca=str(base / ray.link_tls_ca))


def host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine alone (a name other than localhost may
    resolve anywhere, so it is not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
