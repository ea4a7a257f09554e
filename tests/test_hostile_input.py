"""Hostile input on the real front end: fuzzed frames over TCP (truncated, zero / oversized
length prefixes, bad bitmaps, fields of the wrong kind or length, invalid UTF-8, huge LLLVARs).
Every frame that parses is answered with a spec code, a connection sending garbage is closed
without touching the others, nothing hangs and the switch does not grow. The decoder alone is
fuzzed coverage-guided with atheris on the committed corpus (``bench/fuzz``)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import subprocess
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.client import IsoClient
from bench.traffic import network, purchase
from protocols import response_codes as rc
from protocols.iso8583 import LENGTH_HEADER, decode, encode
from tests.conftest import ROOT, run
from tests.support import MERCHANT, STANS, connected, new_purchase

FUZZ_RUNS = int(os.environ.get("PAYSW_FUZZ_RUNS", "200000"))
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


async def _answers_or_close(switch, data: bytes) -> list[dict[str, str]]:
    """What the switch does with ``data``: its answers, until the answer to an echo sent after
    it, the connection closed, or a quiet spell (the echo is swallowed by a truncated frame, which
    the switch waits to see completed)."""
    reader, writer = await asyncio.open_connection(switch.host, switch.port)
    answers = []
    try:
        writer.write(data + SENTINEL)
        await writer.drain()
        while True:
            try:
                header = await asyncio.wait_for(reader.readexactly(LENGTH_HEADER), 0.5)
                body = await asyncio.wait_for(reader.readexactly(int.from_bytes(header, "big")), 5.0)
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                return answers
            answer = decode(body)
            assert isinstance(answer, dict), "an answer the switch sent does not decode"
            if answer.get("11") == "999999" and answer.get("41") == "T0000002":
                return answers
            answers.append(answer)
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
            seen: list[str] = []

            @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            @given(hostile_streams())
            def one(data: bytes) -> None:
                answers = asyncio.run_coroutine_threadsafe(_answers_or_close(switch, data), loop).result(30)
                for answer in answers:
                    assert answer.get("39") in rc.ALL, answer
                    seen.append(answer["39"])

            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, one)
            # The well-behaved connection opened before all that still works, and so does a new one.
            assert await bystander_purchase(bystander) == "00"
            assert (await bystander.request(network("T0000001", STANS.next("T0000001"))))["39"] == "00"
            assert "30" in seen  # garbage that still parsed as a request was answered "format error"
            assert _switch_rss_mb(switch) - rss_before < 64, "the switch grew under hostile input"

    run(scenario())


def test_atheris_fuzzes_the_decoder_on_the_committed_corpus(tmp_path: Path):
    """At least 100,000 inputs (``PAYSW_FUZZ_RUNS``), on a copy of the corpus so that CI does not
    write into the repository; ``bench/fuzz/iso8583_target.py`` says how to run longer."""
    corpus = tmp_path / "corpus"
    shutil.copytree(ROOT / "bench" / "fuzz" / "corpus", corpus)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.fuzz.iso8583_target",
            f"-runs={FUZZ_RUNS}",
            "-max_len=4200",
            "-timeout=5",
            "-rss_limit_mb=2048",
            f"-artifact_prefix={tmp_path}/",
            str(corpus),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Done {FUZZ_RUNS} runs" in result.stderr
