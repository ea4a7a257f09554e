"""``paysw bench scale``: what a second front-end process and a second Ray node change, measured
on this machine. The demo stack runs four ways in one run: one or two front-end processes
(``paysw run --workers``) times channel actors on one or two Ray nodes (the actors of the
``--second-node`` channels placed on the second node by its label). Each way gets the same
closed-loop load; for each: approved/s, p50 / p99, and the CPU per approved purchase of every
process, front end by front end and node by node, with ratios to the first way (1 x 1) of the
same run.

Every way runs on a Ray cluster of its own, made of ``ray start`` processes with token
authentication, the way a real cluster is run; its nodes have the host's address, so the links to
the actors are TLS (a links CA made for the run). The ways then differ only in the counts.

Two cores cannot show more processes adding throughput: they share the same two cores with the
simulators and the load generator. What carries to a bigger machine is each part's CPU per
purchase, printed at the end as the purchases a second one core of it carries: a front-end
process, PostgreSQL and the actors scale out (``--workers``, its own cores, shards and nodes).
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import tempfile
from pathlib import Path
from typing import NamedTuple

import psutil
import uvloop

from actors.link_pki import make_pki
from bench.profile import WARM_UP_S, cpu_ms_per_approved, cpu_seconds, named_processes, totals
from bench.provenance import provenance
from bench.ray_cluster import RayCluster
from bench.stack import Stack, demo_config_in
from bench.throughput import closed_loop
from bench.traffic import Stans

NODE_LABEL = "paysw-second-node"  # the second node's Ray resource; the placed channels ask for it
SECOND_NODE_DEFAULT = ("alipay", "unionpay", "ecny")  # the channels whose signatures cost most


class Way(NamedTuple):
    front_ends: int
    nodes: int

    def __str__(self) -> str:
        return f"{self.front_ends} front end{'s' * (self.front_ends > 1)} x {self.nodes} node{'s' * (self.nodes > 1)}"


WAYS = (Way(1, 1), Way(2, 1), Way(1, 2), Way(2, 2))


def way_config(folder: Path, links: Path, second_node: tuple[str, ...], nodes: int) -> Path:
    """The demo configuration with TLS links (files under ``links``) and, on two nodes, the
    ``second_node`` channels' actors asking for the second node's label."""

    def edit(text: str) -> str:
        tls = f'link_tls_cert = "{links}/link.pem"\nlink_tls_key = "{links}/link.key"\nlink_tls_ca = "{links}/ca.pem"\n'
        text = text.replace('namespace = "paysw"\n', f'namespace = "paysw"\n{tls}', 1)
        for channel in second_node if nodes > 1 else ():
            text, placed = re.subn(
                rf"(?ms)^(\[channels\.{channel}\]\n.*?^actor = \{{[^}}\n]*?)\s*\}}",
                rf'\1, node_resource = "{NODE_LABEL}" }}',
                text,
                count=1,
            )
            if not placed:
                raise ValueError(f"no [channels.{channel}] with an actor table in the demo configuration")
        return text

    return demo_config_in(folder, edit)


def node_of_actors(named: dict[str, psutil.Process], nodes: dict[int, list[psutil.Process]]) -> dict[str, int]:
    """Which node each actor runs on."""
    node_of = {p.pid: node for node, procs in nodes.items() for p in procs}
    return {name: node_of[p.pid] for name, p in named.items() if name.startswith("actor ") and p.pid in node_of}


def report_part(name: str) -> str:
    """The part a process is reported under: each front end and each actor by itself; each
    node's other Ray processes together; PostgreSQL's together."""
    if name.startswith("ray node "):
        return name.rsplit(" ", 2)[0]
    return "postgresql" if name.startswith("postgresql") else name


def measure(
    way: Way, folder: Path, links: Path, second_node: tuple[str, ...], concurrency: int, seconds: float
) -> dict:
    folder.mkdir()
    cluster = RayCluster(folder / "ray", [{}, *[{NODE_LABEL: 1000}] * (way.nodes - 1)])
    config = way_config(folder, links, second_node, way.nodes)
    (folder / "data").mkdir()
    print(f"{way}: starting", flush=True)
    with contextlib.ExitStack() as running:
        running.callback(cluster.stop)
        cluster.start()
        stack = Stack(folder / "data", config, workers=way.front_ends, ray_address=cluster.address, env=cluster.env)
        running.callback(stack.stop)
        stack.start()
        stans = Stans(start=random.randrange(1, 500_000))
        uvloop.run(closed_loop("127.0.0.1", stack.port, concurrency, WARM_UP_S, stans))
        nodes = cluster.processes_by_node()
        named = named_processes(stack, {f"ray node {node}": procs for node, procs in nodes.items()})
        placed = node_of_actors(named, nodes)
        before = cpu_seconds(named)
        load = uvloop.run(closed_loop("127.0.0.1", stack.port, concurrency, seconds, stans))
        after = cpu_seconds(named)
    cpu_ms = cpu_ms_per_approved(before, after, load["approved_tps"] * seconds, report_part)
    result = {
        "front_ends": way.front_ends,
        "nodes": way.nodes,
        "load": load,
        "cpu_ms_per_approved": cpu_ms,
        "totals_ms_per_approved": totals(cpu_ms),
        "actors_on_node": placed,
    }
    print(
        f"{way}: {load['approved_tps']:.0f} approved/s, p50 {load['p50_ms']} ms, p99 {load['p99_ms']} ms;"
        f" switch {result['totals_ms_per_approved']['switch']:.3f} ms CPU per purchase",
        flush=True,
    )
    return result


def by_kind(cpu_ms: dict[str, float]) -> dict[str, float]:
    """CPU per purchase by kind of process: the front ends, the actors, the rest of Ray, PostgreSQL."""
    kinds = {"front ends": "front end", "actors": "actor ", "ray": "ray node", "postgresql": "postgresql"}
    return {
        kind: round(sum(ms for p, ms in cpu_ms.items() if p.startswith(prefix)), 3) for kind, prefix in kinds.items()
    }


def main(
    concurrency: int = 128,
    seconds: float = 15.0,
    ways: tuple[Way, ...] = WAYS,
    second_node: tuple[str, ...] = SECOND_NODE_DEFAULT,
    out: Path | None = None,
) -> int:
    with tempfile.TemporaryDirectory(prefix="paysw-scale-") as folder:
        links = Path(folder) / "links"
        make_pki(links, "paysw bench links CA", ("link",))
        print(f"{len(ways)} ways in {folder}; {concurrency} purchases under way, {seconds:g} s each", flush=True)
        results = [
            measure(way, Path(folder) / f"way{i}", links, second_node, concurrency, seconds)
            for i, way in enumerate(ways)
        ]
    base = results[0]
    for result in results:
        result["ratio_to_first"] = {
            "approved/s": _ratio(result["load"]["approved_tps"], base["load"]["approved_tps"]),
            "switch_cpu_per_purchase": _ratio(
                result["totals_ms_per_approved"]["switch"], base["totals_ms_per_approved"]["switch"]
            ),
        }
        result["by_kind_ms_per_approved"] = by_kind(result["cpu_ms_per_approved"])
    print(f"\n{'way':24s} {'approved/s':>10s} {'p50 ms':>7s} {'p99 ms':>7s} {'switch ms':>9s}  ratios to the first")
    for way, result in zip(ways, results, strict=True):
        load, ratios = result["load"], result["ratio_to_first"]
        print(
            f"{way!s:24s} {load['approved_tps']:10.0f} {load['p50_ms']:7.1f} {load['p99_ms']:7.1f}"
            f" {result['totals_ms_per_approved']['switch']:9.3f}  approved/s {ratios['approved/s']},"
            f" CPU {ratios['switch_cpu_per_purchase']}"
        )
        print("    " + ", ".join(f"{kind} {ms:.3f}" for kind, ms in result["by_kind_ms_per_approved"].items()))
    kinds = base["by_kind_ms_per_approved"]
    ceilings = {kind: round(1000 / ms) for kind, ms in kinds.items() if ms}
    switch_ms = base["totals_ms_per_approved"]["switch"]
    print(
        "\nPurchases a second one core of each kind carries (1 x 1 way): "
        + ", ".join(f"{kind} {n:,}" for kind, n in ceilings.items())
        + f"; the whole switch {1000 / switch_ms:,.0f} a core, so a machine with N cores for the switch"
        f" (simulators and load elsewhere) carries about N x {1000 / switch_ms:,.0f} while no one process"
        " is full: a front-end process or an actor uses one core at most."
    )
    summary = {**provenance(), "ways": results, "purchases_per_s_per_core_1x1": ceilings}
    if out is not None:
        out.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


def _ratio(value: float, base: float) -> float | None:
    return round(value / base, 3) if base else None
