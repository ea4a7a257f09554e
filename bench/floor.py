"""The CPU a purchase of the benchmark's mix costs whatever the switch does: the channel API
signatures on both sides of its channel call. The switch signs its request and checks the
answer's signature; the channel checks the request and signs its answer. Measured in this
process with the demo keys (the switch's through the same ``hsm.algorithms`` functions its HSM
binds, the channel's as the simulators load them), over the text the switch really signs for a
pay request. The answer's signature is timed over that same text: its cost is the asymmetric
operation, not the few hundred bytes hashed.

With the load generator's own CPU per request (measured on the baseline), this bounds what the
machine can do: ``cores / (signatures + load generator)`` approved purchases a second, were the
front end, journal, actors, HTTP and simulators free. ``paysw bench throughput`` reports it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from bench.demo_config import DEMO_SIMULATORS_CONFIG, DEMO_SWITCH_CONFIG, demo_account, demo_material
from bench.simulators.server import load_simulator_config
from bench.traffic import CHANNEL_SHARES, DEMO_MERCHANT, payment_code
from hsm import algorithms
from protocols.channels import channel_of
from protocols.messages import PAY, ChannelRequest
from switch.config import load_config

K = TypeVar("K")
ROUNDS, ROUND_S = 7, 0.025  # rounds over every operation in turn, seconds of each in a round


def least_cpu_us(operations: dict[K, Callable[[], object]]) -> dict[K, float]:
    """CPU microseconds one call of each operation takes: this thread's CPU time, the least over
    rounds that take every operation in turn (a shared machine's slow spell only ever adds, and
    it falls on all the operations of a round rather than on one)."""
    best = {name: float("inf") for name in operations}
    for _ in range(ROUNDS):
        for name, operation in operations.items():
            operation()  # warm: lazy tables, caches
            calls, started = 0, time.thread_time()
            while (used := time.thread_time() - started) < ROUND_S:
                operation()
                calls += 1
            best[name] = min(best[name], used * 1e6 / calls)
    return best


def text_signed_for_pay(channel: str) -> bytes:
    """What the switch's pay builder hands its signer for a pay request at ``channel``."""
    signed: list[bytes] = []

    def record(data: bytes) -> str:
        signed.append(data)
        return "0" * 64

    request = ChannelRequest(
        1, PAY, "20261124000000000001", 100, payment_code(channel), DEMO_MERCHANT, "T0000001", time.time() + 30
    )
    account, crypto = demo_account(channel)
    kind = load_config(DEMO_SWITCH_CONFIG).channels[channel].kind
    channel_of(kind).flows[PAY].build(request, account, dataclasses.replace(crypto, sign=record), time.time())
    return signed[0]


def signature_operations(channel: str) -> dict[str, Callable[[], object]]:
    """The four signature operations of one ``channel`` call, ready to time."""
    switch_keys = demo_account(channel)[0].keys
    sim = load_simulator_config(str(DEMO_SIMULATORS_CONFIG))
    channel_keys, base = sim.simulators[channel].keys, Path(sim.base_dir)
    switch_sign = algorithms.signer(switch_keys.sign_algorithm, demo_material(switch_keys.sign_key))
    switch_verify = algorithms.verifier(switch_keys.verify_algorithm, demo_material(switch_keys.verify_key))
    channel_sign = algorithms.signer(channel_keys.sign_algorithm, (base / channel_keys.sign_key).read_bytes())
    channel_verify = algorithms.verifier(channel_keys.verify_algorithm, (base / channel_keys.verify_key).read_bytes())
    text = text_signed_for_pay(channel)
    by_switch, by_channel = switch_sign(text), channel_sign(text)
    if not (channel_verify(text, by_switch) and switch_verify(text, by_channel)):
        raise RuntimeError(f"{channel}: the demo keys do not verify each other's signatures")
    return {
        "switch signs": lambda: switch_sign(text),
        "channel verifies": lambda: channel_verify(text, by_switch),
        "channel signs": lambda: channel_sign(text),
        "switch verifies": lambda: switch_verify(text, by_channel),
    }


def signature_floor() -> dict:
    """Each channel's signature CPU per call (us), and per purchase of the mix (ms)."""
    operations = {
        (channel, name): operation
        for channel in CHANNEL_SHARES
        for name, operation in signature_operations(channel).items()
    }
    per_call: dict[str, dict[str, float]] = {channel: {} for channel in CHANNEL_SHARES}
    for (channel, name), us in least_cpu_us(operations).items():
        per_call[channel][name] = round(us, 1)
    per_purchase_us = sum(share * sum(per_call[c].values()) for c, share in CHANNEL_SHARES.items())
    return {
        "signature_us_per_call": per_call,
        "signatures_ms_per_purchase": round(per_purchase_us / sum(CHANNEL_SHARES.values()) / 1000, 3),
    }


def ceiling_tps(cores: int, signatures_ms: float, load_generator_ms: float) -> float:
    """Approved purchases a second the machine could do if only the signatures and the load
    generator used CPU."""
    return round(cores * 1000 / (signatures_ms + load_generator_ms), 1)
