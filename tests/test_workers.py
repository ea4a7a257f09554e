"""``paysw run --workers 2``: two front-end processes on one port (SO_REUSEPORT), sharing one Ray
cluster, the channel actors and the journal, behind one admin endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import socket
import ssl
import tempfile
import urllib.request
from collections import Counter
from pathlib import Path

import asyncpg
import msgspec
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.client import IsoClient
from switch.admin_tls import scheme
from switch.config import ConfigError, load_config, worker_share
from switch.journal.embedded import EmbeddedPostgres
from switch.journal.machine import FINAL
from switch.journal.roles import RUNTIME_ROLE
from switch.metrics import merged_exposition
from switch.workers import listen_is_free
from tests.certs import self_signed
from tests.conftest import CHANNELS, DEMO, SwitchProcess, own_simulators, run, switch_with
from tests.support import connected, new_purchase, settle_and_compare

WORKERS = 2
CONNECTIONS = 16  # the kernel spreads them: all on one worker has a chance of 2 in 2**16
TERMINALS = ("T0000001", "T0000002", "T0000003", "T0000004")
RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


@pytest.fixture(scope="module")
def two_workers(config_dir, database_url, simulators, tmp_path_factory):
    folder = tmp_path_factory.mktemp("workers")
    cert, key = self_signed(folder, "paysw admin (test)")  # the supervisor's admin endpoint over https
    settings = f'admin_tls_cert = "{cert}"\nadmin_tls_key = "{key}"\nadmin_tls_ca = "{cert}"\n'
    trust = ssl.create_default_context(cafile=cert)
    edits = [(r"(\[switch\]\n)", rf"\1{settings}")]
    yield from switch_with(config_dir, database_url, folder, "workers", edits, workers=WORKERS, admin_tls=trust)


def requests_by_worker(metrics: str) -> Counter[str]:
    """Purchases (0200) received, by worker, in the one scrape."""
    counts: Counter[str] = Counter()
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == "paysw_requests_total" and sample.labels["mti"] == "0200":
                counts[sample.labels["worker"]] += int(sample.value)
    return counts


async def fetchval(url: str, sql: str) -> object:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def act(switch, channel: str, action: str) -> dict:
    request = urllib.request.Request(
        f"{scheme(switch.admin_tls)}://127.0.0.1:{switch.admin}/channels/{channel}/{action}",
        method="POST",
        headers={"Authorization": f"Bearer {switch.token}"},
    )
    with urllib.request.urlopen(request, timeout=30, context=switch.admin_tls) as answer:
        return json.load(answer)


async def purchases_on_many_connections(switch, channels: tuple[str, ...]) -> list[dict]:
    async def one_connection(n: int) -> list[dict]:
        async with connected(switch) as client:
            terminal = TERMINALS[n % len(TERMINALS)]
            return [await client.request(new_purchase(ch, terminal=terminal)) for ch in channels]

    answers = await asyncio.gather(*(one_connection(n) for n in range(CONNECTIONS)))
    return [a for each in answers for a in each]


def test_two_workers_serve_one_port_share_the_journal_and_answer_as_one(two_workers, database_url):
    switch = two_workers
    approved = run(purchases_on_many_connections(switch, CHANNELS))
    assert [a["39"] for a in approved] == ["00"] * len(approved)

    async def journal_states() -> list[str]:
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch("SELECT state FROM txn WHERE rrn = ANY($1)", [a["37"] for a in approved])
        finally:
            await conn.close()
        return [row["state"] for row in rows]

    states = run(journal_states())
    assert len(states) == len(approved)
    assert all(state in FINAL for state in states), Counter(states)

    # An operator action through the one admin address reaches every worker.
    disabled = act(switch, "wechat", "disable")
    assert [w["enabled"] for w in disabled["workers"]] == [False] * WORKERS
    refused = run(purchases_on_many_connections(switch, ("wechat",)))
    assert [a["39"] for a in refused] == ["91"] * CONNECTIONS
    assert act(switch, "wechat", "enable")["enabled"]

    status, metrics = switch.get("/metrics")
    assert status == 200
    served = requests_by_worker(metrics)
    assert sorted(served) == [str(i) for i in range(WORKERS)] and all(served.values()), served
    assert sum(served.values()) == len(approved) + len(refused)
    status, body = switch.get("/channels")
    frontend_in_flight = 2048  # the test configuration's, in each worker
    assert json.loads(body)["alipay"]["max_in_flight"] == WORKERS * frontend_in_flight
    assert switch.get("/readyz")[0] == 200


def test_a_rolling_restart_under_steady_load_answers_every_request_and_loses_nothing(config_dir, ports, tmp_path):
    """SIGHUP to the switch: each worker gets a replacement on the port, then drains and stops.
    Terminals keep paying throughout; one whose connection closes before its request was read
    sends it again on a new connection (the same STAN and field 7: a retransmission, answered once).
    Every request gets its answer, the 91s are counted, and the journal ends equal to every
    channel's ledger (the test's own simulators), with nothing open.

    The journal is the switch's embedded one, as ``make demo`` runs: a replacement is new code, so
    it migrates and grants the switch's role its part before it starts, as its supervisor did for
    the first workers, while they serve. Here a grant is taken away before the SIGHUP: a
    replacement that did not give it back would refuse to start (its check of its role's part)."""
    # The workers' admin sockets live under the data folder, and a unix socket's path has 107
    # bytes at most: pytest's folder for this test is too deep for that.
    short = Path(tempfile.mkdtemp(prefix="paysw-rr-"))
    # Started before the switch (which joins it) for the simulators, which read the journal to
    # check each pay request was written ahead.
    embedded = EmbeddedPostgres(short / "data" / "pg")
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, short, ignore_errors=True)
        stack.callback(embedded.stop)
        journal = embedded.start()
        simulators = stack.enter_context(own_simulators(config_dir, ports, tmp_path, journal)).channels
        switch = SwitchProcess(
            tmp_path / "switch.toml", None, tmp_path / "rolling.log", workers=WORKERS, data_dir=short / "data"
        )
        switch.start()
        stack.callback(switch.stop)  # should the test fail
        run(fetchval(journal, f"REVOKE UPDATE (url) ON merchant_endpoint FROM {RUNTIME_ROLE}"))

        async def terminal(n: int, done: asyncio.Event) -> list[dict]:
            answers, client = [], None
            while not done.is_set():
                request = new_purchase(CHANNELS[1 + n % (len(CHANNELS) - 1)], terminal=TERMINALS[n % len(TERMINALS)])
                for _ in range(20):  # its connection may close under it: the same request again
                    try:
                        client = client or await IsoClient.connect(switch.host, switch.port)
                        answers.append(await client.request(request, timeout=10))
                        break
                    except (TimeoutError, ConnectionError, OSError, asyncio.IncompleteReadError):
                        client = None
                        await asyncio.sleep(0.05)
                else:
                    raise AssertionError(f"request {request['11']} of terminal {request['41']} never answered")
            return answers

        async def rolling_restart_under_load() -> list[dict]:
            done = asyncio.Event()
            terminals = [asyncio.ensure_future(terminal(n, done)) for n in range(8)]
            await asyncio.sleep(1)
            switch.process.send_signal(signal.SIGHUP)
            for _ in range(900):
                said = switch.log_path.read_text()
                if "rolling restart done" in said:
                    break
                if "rolling restart stopped" in said:
                    raise AssertionError(f"a replacement did not get ready; see {switch.log_path}")
                await asyncio.sleep(0.2)
            else:
                raise AssertionError(f"no rolling restart done; see {switch.log_path}")
            await asyncio.sleep(1)
            done.set()
            return [a for each in await asyncio.gather(*terminals) for a in each]

        answers = run(rolling_restart_under_load())
        codes = Counter(a["39"] for a in answers)
        print(f"rolling restart under load: {len(answers)} purchases answered, response codes {dict(codes)}")
        assert set(codes) <= {"00", "91"} and codes["00"] > 0, codes
        replaced = [line for line in switch.log_path.read_text().splitlines() if "worker replaced" in line]
        assert len(replaced) == WORKERS, replaced
        assert len({a["37"] for a in answers}) == len(answers)  # each request journaled once, a resend answered once
        run(settle_and_compare(journal, simulators, {a["37"]: a["39"] for a in answers}, set(), set(), "rolling"))
        assert switch.get("/readyz")[0] == 200
        given_back = f"SELECT has_column_privilege('{RUNTIME_ROLE}', 'merchant_endpoint', 'url', 'UPDATE')"
        assert run(fetchval(journal, given_back)) is True
        assert switch.stop() == 0, f"the switch did not stop cleanly; see {switch.log_path}"


def test_the_merged_scrape_labels_each_workers_series_and_gives_shared_ones_once():
    def scrape(requests: int, open_pending: int) -> str:
        return (
            "# TYPE paysw_requests_total counter\n"
            f'paysw_requests_total{{mti="0200"}} {requests}\n'
            "# TYPE paysw_open_transactions gauge\n"
            f'paysw_open_transactions{{channel="wechat",queue="PENDING"}} {open_pending}\n'
        )

    merged = merged_exposition([scrape(3, 7), None, scrape(5, 7)]).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(merged)
        for s in family.samples
    }
    assert samples == {
        ("paysw_requests_total", (("mti", "0200"), ("worker", "0"))): 3,
        ("paysw_requests_total", (("mti", "0200"), ("worker", "2"))): 5,
        ("paysw_open_transactions", (("channel", "wechat"), ("queue", "PENDING"))): 7,
        ("paysw_worker_up", (("worker", "0"),)): 1,
        ("paysw_worker_up", (("worker", "1"),)): 0,
        ("paysw_worker_up", (("worker", "2"),)): 1,
    }


def test_each_worker_enforces_an_even_share_of_the_rate_quotas_and_every_other_limit_whole():
    config = load_config(DEMO / "switch.toml")
    share = worker_share(config, 4)
    kiosk = next(m for m in share.merchants if m.rate_per_s)
    assert kiosk.rate_per_s == {"alipay": 5 / 4}
    wechat = msgspec.structs.replace(config.channels["wechat"], rate_per_s=100, merchant_rate_per_s=8, notices_per_s=60)
    shared = worker_share(msgspec.structs.replace(config, channels={"wechat": wechat}), 4).channels["wechat"]
    assert (shared.rate_per_s, shared.merchant_rate_per_s, shared.notices_per_s) == (25, 2, 15)
    assert (shared.frontend_in_flight, share.switch) == (wechat.frontend_in_flight, config.switch)


def test_workers_refuse_a_port_another_process_listens_on_even_with_so_reuseport(tmp_path):
    with socket.socket() as old_switch:
        old_switch.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # it would share with the workers
        old_switch.bind(("127.0.0.1", 0))
        old_switch.listen()
        listen = f"127.0.0.1:{old_switch.getsockname()[1]}"
        with pytest.raises(ConfigError, match=r"switch\.toml: \$\.switch\.listen: 127\.0\.0\.1:\d+ is not free"):
            listen_is_free(tmp_path / "switch.toml", listen)


def test_killing_the_supervisor_outright_stops_its_workers_and_its_ray(two_workers):
    """Last of the module: it ends the module's switch. ``kill -9`` of the supervisor leaves nothing
    serving the port: each worker gets SIGTERM from the kernel (the parent-death signal) and
    drains, and Ray's processes share the supervisor's fate."""
    switch = two_workers
    supervisor = psutil.Process(switch.process.pid)
    workers = [p for p in supervisor.children() if "--worker" in p.cmdline()]
    everything = supervisor.children(recursive=True)
    assert len(workers) == WORKERS and len(everything) > WORKERS  # the workers and the local Ray
    # Ray's per-node agents notice their raylet gone within seconds, then try to report it to the
    # (dead) GCS for its 60 s reconnect timeout before they exit: Ray's own lag, not the switch's.
    agents = [p for p in everything if p.name() in RAY_AGENTS]
    log_lines = len(switch.log_path.read_text().splitlines())
    switch.kill()
    _, alive = psutil.wait_procs([p for p in everything if p not in agents], timeout=90)
    assert not alive, [(p.pid, p.name()) for p in alive]
    for agent in agents:  # their raylet (waited for above) is gone: ended here rather than waited for
        with contextlib.suppress(psutil.NoSuchProcess):
            agent.kill()
    # Drained, not merely gone with their Ray (which would take a worker on another cluster along).
    lines = [json.loads(line) for line in switch.log_path.read_text().splitlines()[log_lines:] if line.startswith("{")]
    assert sorted(line["worker"] for line in lines if line["msg"] == "drained") == list(range(WORKERS)), lines
    with socket.socket() as probe:
        assert probe.connect_ex((switch.host, switch.port)) != 0, "something still serves the terminals' port"
