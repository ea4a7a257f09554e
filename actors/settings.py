"""A channel's settings as its actors receive them (also the ``[channels.NAME]`` table of the
switch's configuration file, which is why they are strict msgspec Structs)."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct

from hsm import HsmSettings, KeyRecord

Positive = Annotated[int, Meta(ge=1)]


class ChannelKeys(Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """The switch's keys for a channel's API, by their labels in the key store (``paysw keys``)."""

    sign_algorithm: str
    sign_key: str
    verify_algorithm: str
    verify_key: str
    zpk: str = ""  # card channels: the zone PIN key PIN blocks are translated to
    encrypt_key: str = ""  # e-CNY: the SM4 data key the payment code travels under


class ActorKeys(Struct, kw_only=True, frozen=True):
    """What an actor needs to sign and verify a channel's API: the HSM to open and the channel's
    key records (encrypted under the LMK)."""

    hsm: HsmSettings
    base_dir: str  # the configuration's folder, for the HSM's relative file names
    demo: bool = False  # the configuration's switch.demo: the HSM accepts the published demo keys
    sign: KeyRecord
    verify: KeyRecord
    encrypt: KeyRecord | None = None  # the payment code is sent encrypted under this SM4 key


class BreakerSettings(Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """A channel shard's circuit breaker (``switch.breaker``). The defaults follow Hystrix and
    resilience4j (50 % failures over a window of recent calls, at least 20 of them) with a short
    open state: a payment channel that is back should get traffic again within seconds."""

    failure_rate: Annotated[float, Meta(gt=0, le=1)] = 0.5  # failed calls (no answer, refused, errors)
    slow_rate: Annotated[float, Meta(gt=0, le=1)] = 0.5  # calls at or over slow_call_ms
    slow_call_ms: Positive = 3_000
    window_calls: Annotated[int, Meta(ge=2)] = 100
    window_s: Annotated[float, Meta(gt=0)] = 10.0
    min_calls: Positive = 20
    open_ms: Annotated[int, Meta(ge=100)] = 5_000  # then half-open
    probes: Positive = 5  # calls let through half-open; all fine closes the circuit
    # While the window holds fewer than min_calls (a quiet channel, a small bank at night), this many
    # calls failing in a row open the circuit (calls outstanding past slow_call_ms count as failing):
    # else every customer waits out a hung channel's timeout. 3, not 1: one or two failures may be
    # the customer's or the network's; three with no success between are the channel's.
    consecutive_failures: Positive = 3


class ChannelSection(Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    kind: str
    endpoint: Annotated[str, Meta(pattern=r"^https?://")]
    app_id: str = ""
    mch_id: str = ""
    cert_id: str = ""
    keys: ChannelKeys
    enabled: bool = True
    shards: Annotated[int, Meta(ge=1, le=64)] = 1
    pool_size: Positive = 32  # HTTP connections per shard = calls on the wire at once
    max_in_flight: Positive = 256  # calls admitted per shard (on the wire or waiting); beyond: 91 at once
    queue_wait_ms: Positive = 1_000  # longest wait for a free connection; then 91, not sent
    frontend_in_flight: Positive = 2048  # transactions under way in one front end; beyond: 91
    rate_per_s: Annotated[float, Meta(ge=0)] = 0  # new transactions a second, per front end; 0: no limit
    merchant_rate_per_s: Annotated[float, Meta(ge=0)] = 0  # the same for each merchant; 0: no limit
    breaker: BreakerSettings = BreakerSettings()
    actor_max_restarts: Annotated[int, Meta(ge=0)] = 10  # Ray restarts of a crashed actor, over its life
    sign_threads: Annotated[int, Meta(ge=1, le=32)] = 2
    timeout_ms: Annotated[int, Meta(ge=50, le=59_000)] = 10_000
    # Resolving a payment the customer is still confirming, or whose outcome is unknown:
    query_interval_ms: Annotated[int, Meta(ge=100)] = 5_000  # between queries
    payment_window_ms: Annotated[int, Meta(ge=1_000)] = 30_000  # from the pay call; then cancel it
    cancel_after_ms: Annotated[int, Meta(ge=0)] = 0  # no cancel sooner than this after the pay call


class LinkTls(Struct, kw_only=True, frozen=True):
    """The PEM files of the links' TLS (``actors.link``), as absolute paths: each side reads them
    on its own node. One CA signs both the front ends' and the actors' certificates."""

    cert: str
    key: str
    ca: str
