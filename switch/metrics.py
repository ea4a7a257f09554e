"""Prometheus metrics of the front end. Labels are bounded: MTI, channel, shard, response code,
reason, field and rule of a rejection, step, worker; never a card or terminal number."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from switch.gateway import ChannelGateway
    from switch.shedding import LoadShedder

# Figures every worker of ``paysw run --workers`` reads from the same place (the journal, the
# shared channel actors): the merged scrape has them once, without the ``worker`` label.
SHARED_FAMILIES = frozenset(
    {
        "paysw_open_transactions",
        "paysw_dead_letters_open",
        "paysw_recon_open_differences",
        "paysw_recon_batches_failed",
        "paysw_actor_in_flight",
        "paysw_actor_calls",
        "paysw_actor_alive",
    }
)
_STEP_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005)  # then the latency buckets
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
            "Open transactions the resolver brought to a final state, by channel and that state",
            ["channel", "state"],
            registry=r,
        )
        self.overtaken = Counter(
            "paysw_answers_overtaken",
            "Purchases whose front end's answer came after a resolver had taken them (past the deadline and its "
            "grace): the journal's answer was given instead; a rise means the journal's commits are held up",
            ["channel"],
            registry=r,
        )
        self.undelivered = Counter(
            "paysw_undelivered_answers",
            "Purchases approved or still confirming whose terminal's connection closed before the answer: "
            "recorded 05, their money to go back, by channel and the channel's outcome",
            ["channel", "outcome"],
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
            "New transactions refused before reaching their channel, by channel and reason (a channel's limits: "
            "91; SUSPENDED: 57; a void's or refund's check of its purchase, machine.UndoRefusal: 12 or 64)",
            ["channel", "reason"],
            registry=r,
        )
        self.shed = Counter(
            "paysw_shed",
            "Requests shed because the switch as a whole was over capacity (answered 91), by reason",
            ["reason"],
            registry=r,
        )
        self.resend_lookups = Counter(
            "paysw_resend_lookups",
            "Requests old enough to be resends, looked up in the journal before being shed, by result "
            "(found: answered as the original; absent, busy, failed: shed)",
            ["result"],
            registry=r,
        )
        self.actor_restarts = Counter(
            "paysw_actor_restarts", "Channel actors found restarted after a crash, by channel", ["channel"], registry=r
        )
        self.open_transactions = Gauge(
            "paysw_open_transactions",
            "Transactions the resolver is settling, by channel and queue (RECEIVED orphans: past their front end's "
            "deadline; PENDING, UNKNOWN, REVERSAL: the store-and-forward reversals)",
            ["channel", "queue"],
            registry=r,
        )
        self.recon_open = Gauge(
            "paysw_recon_open_differences",
            "Reconciliation differences waiting for a person, by channel and class",
            ["channel", "class"],
            registry=r,
        )
        self.recon_unfinished = Gauge(
            "paysw_recon_batches_failed",
            "Reconciliation batches stopped by an error at a step (they resume on the next run), by channel",
            ["channel"],
            registry=r,
        )
        self.requests = Counter("paysw_requests", "Requests received, by MTI", ["mti"], registry=r)
        self.risk_hits = Counter(
            "paysw_risk_hits",
            "Risk rules that fired, by rule, action and mode (shadow: evaluated, not applied)",
            ["rule", "action", "mode"],
            registry=r,
        )
        self.risk_reloads = Counter(
            "paysw_risk_reloads", "Reloads of the risk rules and lists, by result (ok, invalid, failed)", ["result"],
            registry=r,
        )  # fmt: skip
        self.config_reloads = Counter(
            "paysw_config_reloads",
            "Reloads of the configuration file (switch.live), by result (ok, invalid, failed)", ["result"],
            registry=r,
        )  # fmt: skip
        self.risk_unreachable = Counter(
            "paysw_risk_unreachable",
            "Payments whose counted rules could not be judged in time (risk actors unreachable), by the "
            "rule set's policy (open: let through, closed: declined 91); alert on any",
            ["policy"],
            registry=r,
        )
        self.risk_rules = Gauge("paysw_risk_rules", "Risk rules in force (enforced and shadow)", registry=r)
        self.rejected = Counter(
            "paysw_rejected",
            "Requests refused by a rule of the wire contract, by field and rule (protocols.validation)",
            ["field", "rule"],
            registry=r,
        )
        self.pin_refused = Counter(
            "paysw_pin_refused",
            "PIN blocks not translated, by reason (unreadable: not format 0 under the terminal's PIK, "
            "answered 05; tries: the terminal's hour of unreadable blocks used up, 58; no_key: 30; "
            "hsm: 96); a terminal with unreadable blocks is a wrong key or someone probing its PINs",
            ["reason"],
            registry=r,
        )
        self.step_seconds = Histogram(
            "paysw_step_seconds",
            "Time in each step of a transaction's path, waits included, by step and transaction type "
            "(only with [switch] step_timing, for profiling)",
            ["step", "txn_type"],
            buckets=_STEP_BUCKETS + _LATENCY_BUCKETS,
            registry=r,
        )
        self.channel_notices = Counter(
            "paysw_channel_notices",
            "Channels' payment notifications, by channel and result (recorded, unchanged, queried; unknown_order, "
            "amount_differs, paid_after_final: kept for reconciliation; refused: not verified; shed: past the "
            "channel's notices_per_s, unanswered: by its actor, both answered 503 unread)",
            ["channel", "result"],
            registry=r,
        )
        self.merchant_notices = Counter(
            "paysw_merchant_notices",
            "Notification attempts to merchants, by result (delivered, failed: tried again later, dead: "
            "its schedule ran out, for `paysw notify`; alert on any)",
            ["result"],
            registry=r,
        )
        self.dead_letters = Counter(
            "paysw_dead_letters",
            "Transactions handed to a person (alert on any increase), by channel",
            ["channel"],
            registry=r,
        )
        self.dead_letters_open = Gauge(
            "paysw_dead_letters_open",
            "Transactions handed to a person and not resolved yet, by channel (alert while any)",
            ["channel"],
            registry=r,
        )
        self.leases_lost = Counter(
            "paysw_resolver_leases_lost",
            "Transactions a resolver's lane left alone because its lease had lapsed and another front end's "
            "resolver took them (a lane stuck past resolver.LEASE_S): alert on any, by channel",
            ["channel"],
            registry=r,
        )

        for hot in (self.answers, self.latency, self.channel_latency, self.in_flight, self.requests, self.refused,
                    self.shed, self.resend_lookups, self.journal_batch, self.journal_seconds,
                    self.rejected):  # fmt: skip
            _remember_children(hot)

    def circuit_changed(self, channel: str, shard: int, state: int) -> None:
        self.circuit.labels(channel, str(shard)).set(state)

    def actor_restarted(self, channel: str) -> None:
        self.actor_restarts.labels(channel).inc()

    def watch_shedder(self, shedder: LoadShedder) -> None:
        """The requests under way that ``max_in_flight`` bounds, and the admission's limit, how
        many wait under it and of how many peers (``switch.shedding``), when it is on."""
        r = self.registry
        Gauge(
            "paysw_requests_in_flight", "Financial requests under way at this front end (max_in_flight)", registry=r
        ).set_function(lambda: shedder.in_flight)
        limit = shedder.waiting
        if limit is None:
            return
        Gauge(
            "paysw_admission_limit",
            "Admitted requests that may wait for their channel call at once (switch.shedding)",
            registry=r,
        ).set_function(lambda: limit.limit)
        Gauge("paysw_admission_waiting", "Admitted requests waiting for their channel call", registry=r).set_function(
            lambda: limit.waiting
        )
        Gauge(
            "paysw_admission_peers", "Peers with requests waiting, who share the admission's limit", registry=r
        ).set_function(lambda: limit.peers)

    def watch_gateways(self, gateways: Mapping[str, ChannelGateway]) -> None:
        """Figures read from the gateways, and through them from the channel actors, at each scrape."""
        self.registry.register(_GatewayCollector(gateways))

    def from_zero(self, channels: Iterable[str]) -> None:
        """The counters switch/monitoring/alerts.yml watches, at 0 from the start: a series born at its first
        count shows no increase() to an alert until its second (the first answer overtaken would
        go unseen)."""
        for channel in channels:
            for counter in (self.overtaken, self.leases_lost):
                counter.labels(channel)
            for result in ("unknown_order", "amount_differs", "paid_after_final", "shed", "unanswered"):
                self.channel_notices.labels(channel, result)
        self.merchant_notices.labels("dead")
        self.pin_refused.labels("tries")
        for policy in ("open", "closed"):
            self.risk_unreachable.labels(policy)
        for result in ("invalid", "failed"):
            self.config_reloads.labels(result)
            self.risk_reloads.labels(result)

    def set_open(self, counts: list[tuple[str, str, int]]) -> None:
        self.open_transactions.clear()
        for channel, queue, n in counts:
            self.open_transactions.labels(channel, queue).set(n)

    def set_dead_letters(self, counts: list[tuple[str, int]]) -> None:
        self.dead_letters_open.clear()
        for channel, n in counts:
            self.dead_letters_open.labels(channel).set(n)

    def set_recon(self, open_differences: list[tuple[str, str, int]], failed: list[tuple[str, int]]) -> None:
        self.recon_open.clear()
        for channel, cls, n in open_differences:
            self.recon_open.labels(channel, cls).set(n)
        self.recon_unfinished.clear()
        for channel, n in failed:
            self.recon_unfinished.labels(channel).set(n)

    def risk_reloaded(self, result: str, rules: int) -> None:
        self.risk_reloads.labels(result).inc()
        self.risk_rules.set(rules)

    def journal_batch_done(self, op: str, size: int, seconds: float) -> None:
        self.journal_batch.labels(op).observe(size)
        self.journal_seconds.labels(op).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _remember_children(metric: Counter | Gauge | Histogram) -> None:
    """``metric.labels`` remembered per label values: the hot path's metrics take a dict lookup,
    not prometheus_client's checks and lock, on every request. For metrics never cleared (a
    cleared metric drops its children, and remembered ones would count into the void); the
    labels are bounded, so the memory is too."""
    metric.labels = functools.cache(metric.labels)  # type: ignore[method-assign]


class _GatewayCollector(Collector):
    def __init__(self, gateways: Mapping[str, ChannelGateway]) -> None:
        self._gateways = gateways

    def collect(self) -> Iterator[GaugeMetricFamily]:
        in_flight = GaugeMetricFamily(
            "paysw_gateway_in_flight", "Channel calls under way from this front end", labels=["channel"]
        )
        queued = GaugeMetricFamily(
            "paysw_gateway_queue_depth", "Channel calls waiting to be shipped to an actor", labels=["channel"]
        )
        enabled = GaugeMetricFamily("paysw_channel_enabled", "1 when the channel is switched on", labels=["channel"])
        actor_in_flight = GaugeMetricFamily(
            "paysw_actor_in_flight", "Calls under way in a channel actor, as it reported", labels=["channel", "shard"]
        )
        actor_calls = CounterMetricFamily(
            "paysw_actor_calls", "Calls a channel actor has made since it started", labels=["channel", "shard"]
        )
        actor_alive = GaugeMetricFamily(
            "paysw_actor_alive", "1 unless the actor is gone for good", labels=["channel", "shard"]
        )
        for name, gateway in self._gateways.items():
            in_flight.add_metric([name], gateway.in_flight)
            queued.add_metric([name], gateway.queue_depth)
            enabled.add_metric([name], int(gateway.enabled))
            for shard in gateway.shards:
                labels = [name, str(shard.index)]
                actor_in_flight.add_metric(labels, float(shard.figures.get("in_flight", 0)))
                actor_calls.add_metric(labels, float(shard.figures.get("calls", 0)))
                actor_alive.add_metric(labels, 0 if shard.dead else 1)
        yield from (in_flight, queued, enabled, actor_in_flight, actor_calls, actor_alive)


def merged_exposition(scrapes: Sequence[str | None]) -> bytes:
    """One exposition of the workers' ``scrapes`` (index: the worker; None: it did not answer):
    each worker's series labelled ``worker``, so that a sum over it is the whole switch's figure,
    but the shared ones (``SHARED_FAMILIES``) once, from the first worker that has them; and
    ``paysw_worker_up`` for each worker."""
    families: dict[str, Metric] = {}
    up = GaugeMetricFamily("paysw_worker_up", "1 when the worker process answered this scrape", labels=["worker"])
    for index, text in enumerate(scrapes):
        up.add_metric([str(index)], 0 if text is None else 1)
        for family in text_string_to_metric_families(text or ""):
            shared = family.name in SHARED_FAMILIES
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            elif shared:
                continue
            worker = {} if shared else {"worker": str(index)}
            merged.samples.extend(s._replace(labels={**s.labels, **worker}) for s in family.samples)
    return generate_latest(_Families([*families.values(), up]))  # type: ignore[arg-type]  # any collector will do


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families
