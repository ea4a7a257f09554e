"""Hostile input on the real front end: fuzzed frames over TCP (truncated, zero / oversized
length prefixes, bad bitmaps, fields of the wrong kind or length, invalid UTF-8, huge LLLVARs).
Every request frame that parses, in whole or in part, is answered with a spec code, and so is a
valid request sent after it on the same connection; a connection sending garbage is closed without
touching the others, nothing hangs and the switch does not grow. The decoder alone is
fuzzed coverage-guided with atheris on the committed corpus (``bench/fuzz``)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.client import IsoClient
from bench.traffic import network, purchase
from protocols import response_codes as rc
from protocols.iso8583 import (
    LENGTH_HEADER,
    DecodeFailure,
    FrameReader,
    FrameTooLarge,
    Unparseable,
    answer_mti,
    decode,
    encode,
)
from switch.config import SwitchSection
from switch.frontend import serve_terminals
from switch.metrics import Metrics
from tests.conftest import ROOT, free_port, run
from tests.support import MERCHANT, STANS, connected, new_purchase

FUZZ_RUNS = int(os.environ.get("PAYSW_FUZZ_RUNS", "200000"))
FUZZ_TEST_TIMEOUT_S = 300  # the suite's (pyproject.toml), stated here so that the bounds below follow it
FUZZ_MAX_S = FUZZ_TEST_TIMEOUT_S - 120  # atheris stops itself; the subprocess gets 30 s more, pytest 90 s more
WHEN = dt.datetime(2026, 11, 23, 10, 0, 0)
VALID = encode(purchase("T0000001", MERCHANT, "134567890123456700", 1234, "000001", WHEN))[LENGTH_HEADER:]


def framed(body: bytes) -> bytes:
    return len(body).to_bytes(LENGTH_HEADER, "big") + body


@st.composite
def hostile_streams(draw) -> bytes:
    """Bytes a hostile or broken terminal might send on one connection."""
    choice = draw(st.sampled_from(["random", "mutated", "length", "truncated", "lllvar", "utf8", "bitmap"]))
    if choice == "random":
        return framed(draw(st.binary(min_size=1, max_size=300)))
    if choice == "mutated":
        body = bytearray(VALID)
        for _ in range(draw(st.integers(1, 8))):
            body[draw(st.integers(0, len(body) - 1))] = draw(st.integers(0, 255))
        return framed(bytes(body))
    if choice == "length":  # zero or oversized length prefixes, with or without a body
        return draw(st.sampled_from([0, 4097, 65535])).to_bytes(2, "big") + draw(st.binary(max_size=64))
    if choice == "truncated":  # the prefix promises more than comes
        return len(VALID).to_bytes(2, "big") + VALID[: draw(st.integers(0, len(VALID) - 1))]
    if choice == "lllvar":  # field 62 declaring up to 999 characters, more or fewer than sent
        declared = draw(st.integers(0, 999))
        return framed(b"0200" + b"0000000000000004" + b"%03d" % declared + b"x" * draw(st.integers(0, 1200)))
    if choice == "utf8":  # invalid UTF-8 where ASCII text is expected
        cut = draw(st.integers(4, len(VALID) - 1))
        return framed(VALID[:cut] + b"\xff\xfe\xc3" + VALID[cut + 3 :])
    bitmap = draw(st.binary(min_size=8, max_size=8)).hex().upper().encode()
    return framed(b"0200" + bitmap + VALID[20:])


SENTINEL = encode(network("T0000002", "999999", "301", WHEN))


@dataclass(frozen=True)
class Expected:
    """What the switch must do with a hostile stream followed by the sentinel, by the protocol's own
    framing and decoding rules (the front end's ``FrameReader`` and ``decode``)."""

    closes: bool  # refused (a length out of range, a frame not ISO 8583 at all): the connection is closed
    requests: int  # frames with a request MTI (parsed in whole or in part) to answer, the sentinel aside
    sentinel: bool  # the sentinel stands as a frame of its own (not swallowed by a short one): answered too


def expected(data: bytes) -> Expected:
    reader = FrameReader()
    try:
        frames = reader.feed(data + SENTINEL)
    except FrameTooLarge:
        return Expected(closes=True, requests=0, sentinel=False)
    requests = 0
    for frame in frames:
        try:
            decoded = decode(frame)
        except Unparseable:
            return Expected(closes=True, requests=0, sentinel=False)
        message = decoded.partial if isinstance(decoded, DecodeFailure) else decoded
        requests += answer_mti(message.get("t", "")) is not None
    sentinel = not reader.partial and frames[-1:] == [SENTINEL[LENGTH_HEADER:]]
    return Expected(closes=False, requests=requests - sentinel, sentinel=sentinel)


@dataclass
class Seen:
    answers: list[dict[str, str]] = field(default_factory=list)  # the sentinel's aside
    sentinel_answered: bool = False
    closed: bool = False


async def _exchange(switch, data: bytes, wanted: Expected) -> Seen:
    """What the switch sends back for ``data`` and the sentinel after it: read until every answer
    ``wanted`` has come (for a refused stream: until the connection is closed), 15 s at most."""
    reader, writer = await asyncio.open_connection(switch.host, switch.port)
    seen = Seen()
    answers_due = wanted.requests + wanted.sentinel
    deadline = asyncio.get_running_loop().time() + 15
    try:
        writer.write(data + SENTINEL)
        await writer.drain()
        while wanted.closes or len(seen.answers) + seen.sentinel_answered < answers_due:
            try:
                async with asyncio.timeout_at(deadline):
                    header = await reader.readexactly(LENGTH_HEADER)
                    body = await reader.readexactly(int.from_bytes(header, "big"))
            except (asyncio.IncompleteReadError, ConnectionError):
                seen.closed = True
                return seen
            except TimeoutError:
                return seen
            answer = decode(body)
            assert isinstance(answer, dict), "an answer the switch sent does not decode"
            if answer.get("11") == "999999" and answer.get("41") == "T0000002":
                seen.sentinel_answered = True
            else:
                seen.answers.append(answer)
        return seen
    finally:
        writer.close()


def _switch_rss_mb(switch) -> float:
    with open(f"/proc/{switch.process.pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def test_fuzzed_frames_over_tcp_get_spec_answers_or_a_closed_connection(switch):
    async def bystander_purchase(client: IsoClient) -> str:
        return (await client.request(new_purchase("inbank"), timeout=10))["39"]

    async def scenario():
        async with connected(switch) as bystander:
            assert await bystander_purchase(bystander) == "00"
            rss_before = _switch_rss_mb(switch)
            codes: list[str] = []
            outcomes: Counter[str] = Counter()

            @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            @given(hostile_streams())
            def one(data: bytes) -> None:
                wanted = expected(data)
                seen = asyncio.run_coroutine_threadsafe(_exchange(switch, data, wanted), loop).result(30)
                for answer in seen.answers:
                    assert answer.get("39") in rc.ALL, answer
                    codes.append(answer["39"])
                if wanted.closes:
                    assert seen.closed, f"the connection of a refused stream was left open: {data[:80]!r}"
                    outcomes["closed"] += 1
                    return
                assert len(seen.answers) == wanted.requests, (
                    f"{wanted.requests} request frames, {len(seen.answers)} answered: {data[:80]!r}"
                )
                assert seen.sentinel_answered == wanted.sentinel, (
                    f"the sentinel after {data[:80]!r} {'went unanswered' if wanted.sentinel else 'was answered'}"
                )
                outcomes["sentinel answered" if wanted.sentinel else "sentinel swallowed"] += 1

            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, one)
            # The well-behaved connection opened before all that still works, and so does a new one.
            assert await bystander_purchase(bystander) == "00"
            assert (await bystander.request(network("T0000001", STANS.next("T0000001"))))["39"] == "00"
            assert "30" in codes  # garbage that still parsed as a request was answered "format error"
            assert outcomes["closed"] and outcomes["sentinel answered"] > 50, outcomes
            assert _switch_rss_mb(switch) - rss_before < 64, "the switch grew under hostile input"

    run(scenario())


@pytest.mark.timeout(FUZZ_TEST_TIMEOUT_S)
def test_atheris_fuzzes_the_decoder_on_the_committed_corpus(tmp_path: Path):
    """``PAYSW_FUZZ_RUNS`` inputs (200,000: about 20 s here), on a copy of the corpus so that CI
    does not write into the repository; ``bench/fuzz/iso8583_target.py`` says how to run longer.
    The run is bounded well inside the test's timeout, so a slow one fails with its own message."""
    corpus = tmp_path / "corpus"
    shutil.copytree(ROOT / "bench" / "fuzz" / "corpus", corpus)
    command = [
        sys.executable,
        "-m",
        "bench.fuzz.iso8583_target",
        f"-runs={FUZZ_RUNS}",
        f"-max_total_time={FUZZ_MAX_S}",
        "-max_len=4200",
        "-timeout=5",
        "-rss_limit_mb=2048",
        f"-artifact_prefix={tmp_path}/",
        str(corpus),
    ]
    limit = FUZZ_MAX_S + 30
    try:
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the fuzzer did not stop within {limit} s, though told -max_total_time={FUZZ_MAX_S}")
    assert result.returncode == 0, result.stderr[-3000:]
    done = re.search(r"Done (\d+) runs in (\d+) second", result.stderr)
    assert done is not None, f"the fuzzer did not say how many runs it did: {result.stderr[-3000:]}"
    assert int(done[1]) == FUZZ_RUNS, (
        f"only {done[1]} of {FUZZ_RUNS} runs in -max_total_time={FUZZ_MAX_S} s: PAYSW_FUZZ_RUNS too high here"
    )


class Holding:
    """A processor whose requests wait until let go, counting the most under way at once."""

    def __init__(self) -> None:
        self.under_way = self.most = 0
        self.go = asyncio.Event()

    def overloaded(self, share: str) -> None:
        return None

    async def handle_frame(self, frame: bytes, arrived: float, overload: str | None, share: str, connected) -> bytes:
        self.under_way += 1
        self.most = max(self.most, self.under_way)
        try:
            await self.go.wait()
        finally:
            self.under_way -= 1
        message = decode(frame)
        return encode({"t": "0810", "7": message["7"], "11": message["11"], "39": "00", "41": message["41"]})


def test_one_read_of_many_frames_starts_no_more_than_a_connection_may_have_under_way():
    """Thousands of small frames in one write arrive in few reads: each read's frames were all
    started at once, far past ``max_in_flight_per_connection`` (found in review). Now the others
    wait, whole, in the connection's reader, each started as a place frees; every one is answered."""
    cap, sent = 8, 200

    async def scenario() -> tuple[int, int]:
        processor = Holding()
        settings = SwitchSection(listen=f"127.0.0.1:{free_port()}", max_in_flight_per_connection=cap)
        server = await serve_terminals(processor, Metrics(), settings)
        try:
            reader, writer = await asyncio.open_connection(*settings.listen.split(":"))
            writer.write(b"".join(encode(network("T0000001", f"{n:06d}")) for n in range(1, sent + 1)))
            await writer.drain()
            for _ in range(100):
                await asyncio.sleep(0.01)
            most_held = processor.most
            processor.go.set()
            answers = FrameReader()
            got: list[bytes] = []
            while len(got) < sent:
                got += answers.feed(await asyncio.wait_for(reader.read(65536), 10))
            writer.close()
            return most_held, len(got)
        finally:
            await server.drain(1)

    most_held, answered = run(scenario())
    assert (most_held, answered) == (cap, sent)
