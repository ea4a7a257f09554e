"""Prometheus metrics of the front end. Labels are bounded: MTI, channel, shard, response code,
reason; never a card or terminal number."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.answers = Counter(
            "paysw_answers",
            "Answers sent, by request MTI, channel and response code",
            ["mti", "channel", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "paysw_request_seconds",
            "Front-end time from request to answer, by channel",
            ["channel"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.channel_latency = Histogram(
            "paysw_channel_call_seconds",
            "Time in the channel call, by channel",
            ["channel"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("paysw_channel_in_flight", "Transactions under way, by channel", ["channel"], registry=r)
        self.connections = Gauge("paysw_connections", "Open terminal connections", registry=r)
        ProcessCollector(registry=r)  # process_resident_memory_bytes, CPU, open files
        Gauge("paysw_event_loop_tasks", "Tasks alive on the front end's event loop", registry=r).set_function(
            lambda: len(asyncio.all_tasks())
        )
        self.closed = Counter(
            "paysw_connections_closed", "Connections closed by the switch, by reason", ["reason"], registry=r
        )
        self.journal_batch = Histogram(
            "paysw_journal_batch_size",
            "Journal writes per round trip, by operation",
            ["op"],
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
            registry=r,
        )
        self.journal_seconds = Histogram(
            "paysw_journal_flush_seconds",
            "Journal round trip time, by operation",
            ["op"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

        self.resolved = Counter(
            "paysw_resolved",
            "Open transactions settled by the resolver, by channel and final state",
            ["channel", "state"],
            registry=r,
        )
        self.circuit = Gauge(
            "paysw_circuit_state",
            "Circuit breaker of each channel shard: 0 closed, 1 half-open, 2 open",
            ["channel", "shard"],
            registry=r,
        )
        self.refused = Counter(
            "paysw_refused",
            "New transactions refused before reaching their channel (answered 91), by channel and reason",
            ["channel", "reason"],
            registry=r,
        )
        self.shed = Counter(
            "paysw_shed",
            "Requests shed because the switch as a whole was over capacity (answered 91), by reason",
            ["reason"],
            registry=r,
        )
        self.actor_restarts = Counter(
            "paysw_actor_restarts", "Channel actors found restarted after a crash, by channel", ["channel"], registry=r
        )
        self.dead_letters = Counter(
            "paysw_dead_letters",
            "Transactions handed to a person (alert on any increase), by channel",
            ["channel"],
            registry=r,
        )

    def circuit_changed(self, channel: str, shard: int, state: int) -> None:
        self.circuit.labels(channel, str(shard)).set(state)

    def actor_restarted(self, channel: str) -> None:
        self.actor_restarts.labels(channel).inc()

    def journal_batch_done(self, op: str, size: int, seconds: float) -> None:
        self.journal_batch.labels(op).observe(size)
        self.journal_seconds.labels(op).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
