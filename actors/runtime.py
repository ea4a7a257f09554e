"""Starting Ray and the channel actors."""

from __future__ import annotations

import ipaddress
import logging
import os

import ray
from ray._private import ray_constants
from ray.actor import ActorHandle

from actors.channel_actor import ChannelActor
from actors.settings import ActorSetup, LinkTls

log = logging.getLogger("paysw.ray")

LOOPBACK = "127.0.0.1"
# Ray's switch for "this node is its own cluster" (its default on macOS and Windows): then the
# node's address stays the 127.0.0.1 asked for, where on Linux Ray replaces it with the host's
# network address and its GCS, raylet and workers listen on every interface.
SINGLE_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
NODE_RESOURCE_SHARE = 0.001  # of a node's placement resource per actor: a marker, not a capacity


def init_ray(address: str, namespace: str) -> bool:
    """Join the cluster at ``address``, or start a local one sized for a small machine (no
    dashboard) that listens on 127.0.0.1 only. Returns True when this call started Ray (and so
    should shut it down)."""
    if ray.is_initialized():
        return False
    common = {"namespace": namespace, "logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        ray.init(address=address, **common)
    else:
        # Ray starts workers at nice 15; channel actors sit on the payment hot path, so under a
        # full CPU they must not lose to everything else on the machine.
        os.environ.setdefault("RAY_worker_niceness", "0")
        os.environ[SINGLE_NODE_ENV] = "0"  # for Ray's processes, which read it at start
        ray_constants.ENABLE_RAY_CLUSTER = False  # this one read it when ray was imported
        ray.init(
            _node_ip_address=LOOPBACK,
            include_dashboard=False,
            num_cpus=os.cpu_count() or 2,
            object_store_memory=256 * 1024 * 1024,
            **common,
        )
        if not node_on_loopback():  # a Ray that stopped honouring the switch above
            ray.shutdown()
            raise RuntimeError(f"the local Ray took address {ray.util.get_node_ip_address()}, not {LOOPBACK}")
    return True


def node_on_loopback() -> bool:
    """Whether this process's Ray node is on loopback, and so its actors (and their links) too."""
    return ipaddress.ip_address(ray.util.get_node_ip_address()).is_loopback


def channel_actor(name: str, setup: ActorSetup, shard: int, link_tls: LinkTls | None = None) -> ActorHandle:
    """Shard ``shard``'s actor of channel ``name``: named, so that several front ends on one
    cluster share it (an existing live one is joined); restarted by Ray when it crashes, up to
    the actor settings' ``max_restarts``, on a node that offers their ``node_resource`` (a Ray
    custom resource: Ray schedules an actor and each of its restarts by it, and `ray start
    --resources` has long been stable; node labels and ``label_selector`` would serve as well on
    Ray 2.60). Its link is TLS with ``link_tls``. Detached: it outlives
    the front end that created it (the others, and a rolling restart, go on using it); it ends
    with the Ray cluster, or by ``ray.kill``."""
    placement = setup.settings.node_resource
    return ChannelActor.options(
        name=f"channel:{name}:{shard}",
        get_if_exists=True,
        max_restarts=setup.settings.max_restarts,
        lifetime="detached",
        resources={placement: NODE_RESOURCE_SHARE} if placement else None,
    ).remote(name, setup, shard, link_tls)
