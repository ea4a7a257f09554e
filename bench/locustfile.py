"""Locust load for a running switch, over TCP with ISO 8583 per the spec.

    locust -f bench/locustfile.py --host 127.0.0.1:8583                  # web UI on :8089
    locust -f bench/locustfile.py --host 127.0.0.1:8583 --headless -u 50 -r 10 -t 60s

Each simulated terminal has its own connection (the client is pipelined: answers are matched by
terminal + STAN + MTI). The mix: channels by share (WeChat Pay 40 %, Alipay 35 %, UnionPay 10 %, e-CNY 10 %,
in-bank 5 %); purchases, some declined or pending by the payment code's suffix (see the
simulators' table in the README), voids and refunds of earlier approvals, status inquiries.

Every answer is reported to locust under ``<kind> <channel> <code>``; an answer other than the
one the request was built to get (a ``96``, a ``91`` where ``00`` was due, no answer) is a
failure. Terminals and merchant are the demo configuration's (``PAYSW_LOCUST_MERCHANT``,
``PAYSW_LOCUST_TERMINALS`` to change them).
"""

from __future__ import annotations

import os
import random
import time

import gevent
from locust import User, between, events, task

from bench.sync_client import SyncIsoClient
from bench.traffic import CHANNEL_SHARES, DEMO_MERCHANT, Stans, inquiry, payment_code, purchase, refund, void

MERCHANT = os.environ.get("PAYSW_LOCUST_MERCHANT", DEMO_MERCHANT)
TERMINALS = os.environ.get("PAYSW_LOCUST_TERMINALS", "T0000001,T0000002,T0000003,T0000004").split(",")
# The payment code's suffix chooses the outcome; the code a purchase should get back.
SUFFIX_EXPECTED = {"00": {"00"}, "51": {"51"}, "05": {"05"}, "54": {"54"}, "09": {"00", "09"}}
SUFFIX_SHARES = {"00": 90, "51": 3, "05": 3, "54": 2, "09": 2}
STANS = Stans(start=random.Random(os.getpid()).randrange(1, 900_000))  # one sequence per process


@events.init.add_listener
def _clock_from_now(**_: object) -> None:
    """gevent's timers count from its loop's cached clock, and locust sets the ``--run-time`` timer
    before that loop has first run: a slow start (imports on a busy machine) was taken off the run,
    and an 8 s run once ended 0.25 s after it began. Read the clock afresh before that timer."""
    gevent.get_hub().loop.update_now()


def _host_port(host: str) -> tuple[str, int]:
    name, _, port = host.replace("tcp://", "").rpartition(":")
    return name or "127.0.0.1", int(port)


class TerminalUser(User):
    """One POS terminal: its own connection, purchases and what follows them."""

    wait_time = between(0, 0.01)
    host = "127.0.0.1:8583"

    def on_start(self) -> None:
        self.rng = random.Random()
        self.terminal = self.rng.choice(TERMINALS)
        self.client = SyncIsoClient(*_host_port(self.host))
        self.approved: list[tuple[str, str, dict]] = []  # (rrn, channel, message) of approvals: voids, refunds

    def on_stop(self) -> None:
        self.client.close()

    def _send(self, kind: str, channel: str, message: dict, expected: set[str]) -> dict | None:
        started = time.perf_counter()
        answer, error = None, None
        try:
            answer = self.client.request(message)
        except Exception as exc:  # no answer: a failure, reported, never raised into locust
            error = exc
        elapsed_ms = (time.perf_counter() - started) * 1000
        code = answer.get("39", "??") if answer else "none"
        if error is None and code not in expected:
            error = AssertionError(f"response code {code}, expected {'/'.join(sorted(expected))}")
        events.request.fire(
            request_type=message["t"],
            name=f"{kind} {channel} {code}",
            response_time=elapsed_ms,
            response_length=0,
            exception=error,
            context={"terminal": self.terminal},
        )
        return answer if error is None else None

    @task(80)
    def purchase(self) -> None:
        channel = self.rng.choices(list(CHANNEL_SHARES), weights=list(CHANNEL_SHARES.values()))[0]
        suffix = self.rng.choices(list(SUFFIX_SHARES), weights=list(SUFFIX_SHARES.values()))[0]
        amount = self.rng.randrange(100, 50_000)
        message = purchase(
            self.terminal, MERCHANT, payment_code(channel, suffix, self.rng), amount, STANS.next(self.terminal)
        )
        answer = self._send("purchase", channel, message, SUFFIX_EXPECTED[suffix])
        if answer is not None and answer["39"] == "00":
            self.approved = [*self.approved[-50:], (answer["37"], channel, message)]

    @task(5)
    def void(self) -> None:
        if not self.approved:
            return
        rrn, channel, original = self.approved.pop(self.rng.randrange(len(self.approved)))
        self._send("void", channel, void(original, rrn, STANS.next(self.terminal)), {"00"})

    @task(5)
    def refund(self) -> None:
        if not self.approved:
            return
        rrn, channel, original = self.approved.pop(self.rng.randrange(len(self.approved)))
        part = max(1, int(original["4"]) // 2)
        self._send("refund", channel, refund(original, rrn, part, STANS.next(self.terminal)), {"00"})

    @task(10)
    def inquiry(self) -> None:
        if not self.approved:
            return
        rrn, channel, _ = self.rng.choice(self.approved)
        self._send("inquiry", channel, inquiry(self.terminal, MERCHANT, rrn, STANS.next(self.terminal)), {"00"})
