"""Starting Ray and the channel actors."""

from __future__ import annotations

import logging
import os

import ray
from ray.actor import ActorHandle

from actors.channel_actor import ChannelActor
from actors.settings import ActorKeys, ChannelSection

log = logging.getLogger("paysw.ray")


def init_ray(address: str, namespace: str) -> bool:
    """Join the cluster at ``address``, or start a local one sized for a small machine (no
    dashboard). Returns True when this call started Ray (and so should shut it down)."""
    if ray.is_initialized():
        return False
    common = {"namespace": namespace, "logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        ray.init(address=address, **common)
    else:
        # Ray starts workers at nice 15; channel actors sit on the payment hot path, so under a
        # full CPU they must not lose to everything else on the machine.
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(
            include_dashboard=False,
            num_cpus=os.cpu_count() or 2,
            object_store_memory=256 * 1024 * 1024,
            **common,
        )
    return True


def channel_actor(name: str, config: ChannelSection, keys: ActorKeys, shard: int) -> ActorHandle:
    """Shard ``shard``'s actor of channel ``name``: named, so that several front ends on one
    cluster share it (an existing live one is joined); restarted by Ray when it crashes, up to
    the channel's ``actor_max_restarts``."""
    return ChannelActor.options(
        name=f"channel:{name}:{shard}", get_if_exists=True, max_restarts=config.actor_max_restarts
    ).remote(name, config, keys, shard)
