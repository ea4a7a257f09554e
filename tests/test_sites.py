"""Two active sites on one journal: two switches, each with its own Ray cluster (a local one each)
and its own front end, share the journal, and terminals configured with both sites' addresses
split the traffic between them. Site A is killed whole (``kill -9`` of every one of its processes:
the front end, Ray's GCS, raylet and workers, the channel actors) under load. Its terminals move to
site B and reverse there what A left unanswered (the terminal's rule for a request without an
answer); B's resolver settles A's orphans, and the journal agrees with every channel's ledger."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import asyncpg
import psutil

from bench.failover import FailoverTerminal, NoAnswer
from bench.traffic import CODE_SHAPES, Stans, payment_code, purchase, reversal
from tests.conftest import SwitchProcess, run
from tests.support import MERCHANT, OPEN, SUFFIXES, settle_and_compare

TERMINALS = ("T0000001", "T0000002", "T0000003", "T0000004")
OUTSTANDING = 6  # per terminal


def kill_site(site: SwitchProcess) -> int:
    """``kill -9`` of the site's every process at once; how many there were."""
    root = psutil.Process(site.process.pid)
    processes = [root, *root.children(recursive=True)]
    for process in processes:
        process.kill()
    _, alive = psutil.wait_procs(processes, timeout=30)
    assert not alive, f"still alive after kill -9: {[(p.pid, p.name()) for p in alive]}"
    site.process.wait(timeout=10)
    site.killed = True
    return len(processes)


async def terminal_traffic(
    terminal: str, sites: list[tuple[str, int]], stop: asyncio.Event, rng: random.Random, tally: dict
) -> None:
    """Purchases on every channel, ``OUTSTANDING`` at a time, on one connection to the first site
    that answers; one left unanswered is reversed (on whichever site answers by then)."""
    device = FailoverTerminal(sites)
    stans = Stans(start=rng.randrange(1, 900_000))

    async def one() -> None:
        while not stop.is_set():
            code = payment_code(rng.choice(list(CODE_SHAPES)), rng.choice(SUFFIXES), rng)
            request = purchase(terminal, MERCHANT, code, rng.randrange(1, 100_000), stans.next(terminal))
            site = device.address
            try:
                answer = await device.send(request, timeout=30)
            except NoAnswer:
                tally["reversed_unanswered"] += 1
                await device.send_until_answered(reversal(request, stans.next(terminal)))
                continue
            tally["answers"][answer["37"]] = answer["39"]
            tally["by_site"][site] += 1

    try:
        await asyncio.gather(*(one() for _ in range(OUTSTANDING)))
    finally:
        tally["failovers"] += device.failovers
        await device.close()


def test_a_site_killed_whole_fails_over_to_the_other_which_settles_its_orphans(own_stack, seed, tmp_path):
    config, database_url, simulators = own_stack
    rng = random.Random(seed)
    replay = f"replay with PAYSW_TEST_SEED={seed}"
    site_a = SwitchProcess(config, database_url, tmp_path / "site-a.log")
    site_b = SwitchProcess(config, database_url, tmp_path / "site-b.log")
    for site in (site_a, site_b):
        site.start()
    a, b = (site_a.host, site_a.port), (site_b.host, site_b.port)
    try:

        async def scenario() -> tuple[dict, int, int]:
            tally = {"answers": {}, "by_site": Counter(), "reversed_unanswered": 0, "failovers": 0}
            stop = asyncio.Event()
            terminals = [
                asyncio.create_task(terminal_traffic(t, [a, b] if i % 2 == 0 else [b, a], stop, rng, tally))
                for i, t in enumerate(TERMINALS)
            ]
            await asyncio.sleep(rng.uniform(2.0, 3.0))
            # Killed while serving: on a busy host a site's first answers can take longer than that.
            for _ in range(300):
                if tally["by_site"][a] and tally["by_site"][b]:
                    break
                await asyncio.sleep(0.1)
            processes = await asyncio.to_thread(kill_site, site_a)
            conn = await asyncpg.connect(database_url)
            try:
                orphans = await conn.fetchval("SELECT count(*) FROM txn WHERE state = ANY($1)", list(OPEN))
            finally:
                await conn.close()
            await asyncio.sleep(3)  # the terminals that were on A go on at B
            stop.set()
            await asyncio.gather(*terminals)
            return tally, processes, orphans

        tally, processes, orphans = run(scenario())
        by_site = {("A" if site == a else "B"): n for site, n in tally["by_site"].items()}
        print(
            f"\nsite A killed ({processes} processes) with {orphans} transactions open; answered by site {by_site},"
            f" {tally['failovers']} failovers, {tally['reversed_unanswered']} unanswered purchases reversed at B,"
            f" response codes {dict(Counter(tally['answers'].values()))} ({replay})"
        )
        assert by_site.get("A") and by_site.get("B"), "the traffic was not split between the sites"
        assert tally["failovers"] >= len(TERMINALS) // 2  # every terminal that was on A moved
        # B alone settles what A left open: A is gone for good.
        run(settle_and_compare(database_url, simulators, tally["answers"], set(), set(), replay))
    finally:
        for site in (site_a, site_b):
            assert site.stop() == 0, f"a site did not stop cleanly; see {site.log_path}"
