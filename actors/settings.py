"""What a channel's actors are given: their own settings (the ``[channels.NAME.actor]`` table of
the switch's configuration, hence strict msgspec Structs), the key records of the channel's
account, and the links' TLS files. The channel's account itself is its package's
(``protocols.channels``); the front end's limits for the channel are the switch's."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct

from hsm import HsmSettings, KeyRecord
from protocols.channels.base import Account

Positive = Annotated[int, Meta(ge=1)]


class ActorKeys(Struct, kw_only=True, frozen=True):
    """What an actor needs to sign and verify a channel's API: the HSM to open and the channel's
    key records (encrypted under the LMK)."""

    hsm: HsmSettings
    base_dir: str  # the configuration's folder, for the HSM's relative file names
    demo: bool = False  # the configuration's switch.demo: the HSM accepts the published demo keys
    sign: KeyRecord
    verify: KeyRecord
    seal: KeyRecord | None = None  # the account's seal_key: SM4, for fields sent encrypted


class ActorSettings(Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """A channel shard's actor: where the channel is, its connections, in-flight limit, signing
    threads and timeout."""

    # http(s)://host:port/base for an HTTP API; tcp://host:port (loopback only) or tls://host:port
    # for a switch reached over ISO 8583 (a channel of wire "iso8583", such as "legacy").
    endpoint: Annotated[str, Meta(pattern=r"^(https?|tcp|tls)://")]
    pool_size: Positive = 32  # HTTP connections per shard = calls on the wire at once
    max_in_flight: Positive = 256  # calls admitted per shard (on the wire or waiting); beyond: 91 at once
    queue_wait_ms: Positive = 1_000  # longest wait for a free connection; then 91, not sent
    # 0: sign on the actor's event loop, the least CPU per call (the hop to a thread and back
    # costs about a tenth of an RSA channel's actor). N: sign in N threads (for the schemes that
    # release the GIL, RSA), so that on a node with cores to spare one shard signs on several.
    sign_threads: Annotated[int, Meta(ge=0, le=32)] = 0
    timeout_ms: Annotated[int, Meta(ge=50, le=59_000)] = 10_000
    max_restarts: Annotated[int, Meta(ge=0)] = 10  # Ray restarts of a crashed actor, over its life
    # Placement: only on Ray nodes that offer this custom resource (`ray start --resources
    # '{"NAME": 1000}'`); empty: any node. Offer it on two nodes or more, so that an actor whose
    # node is lost has somewhere to restart.
    node_resource: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.:-]{0,64}$")] = ""


class ActorSetup(Struct, kw_only=True, frozen=True):
    """Everything one channel's actors are set up with, and nothing else: the channel's kind
    (its package), its actors' settings, the switch's account there and that account's keys."""

    kind: str
    settings: ActorSettings
    account: Account
    keys: ActorKeys


class LinkTls(Struct, kw_only=True, frozen=True):
    """The PEM files of the links' TLS (``actors.link``), as absolute paths: each side reads them
    on its own node. One CA signs both the front ends' and the actors' certificates."""

    cert: str
    key: str
    ca: str
