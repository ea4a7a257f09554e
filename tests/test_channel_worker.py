"""The channel actor's logic on real sockets: what a failed call establishes about the money.

A refused connection certainly sent nothing (DECLINED 91, sent=False); a hung or broken channel
may have the request (UNKNOWN); nothing is sent after the deadline or past the in-flight limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from collections.abc import AsyncIterator, Callable

import msgspec
import pytest
from aiohttp import web

from actors.channel_actor import ChannelWorker
from actors.link import ActorLink, LinkAddress, LinkServer
from actors.settings import ActorSetup, LinkTls
from protocols import response_codes as rc
from protocols.messages import ChannelRequest, Outcome
from tests.conftest import demo_actor_setup, free_port, run

WECHAT = demo_actor_setup("wechat")


def worker_for(endpoint: str, setup: ActorSetup = WECHAT, **changes) -> ChannelWorker:
    """A worker (WeChat's unless ``setup`` says) on ``endpoint`` with its actor settings changed
    by ``changes``."""
    settings = msgspec.structs.replace(setup.settings, endpoint=endpoint, **changes)
    return ChannelWorker(setup.kind, msgspec.structs.replace(setup, settings=settings), 0)


def slow_channel() -> tuple[list[None], Callable]:
    """A channel that answers each call after a second; the list grows by one per call."""
    calls: list[None] = []

    async def slow(_):
        calls.append(None)
        await asyncio.sleep(1)
        return web.Response(text="<xml></xml>")

    return calls, slow


def request(key: int = 1, deadline_in: float = 5.0) -> ChannelRequest:
    return ChannelRequest(
        key,
        "pay",
        f"2026112300000000{key:04d}",
        100,
        "134567890123456700",
        "SUB",
        "T0000001",
        time.time() + deadline_in,
    )


async def serve(handler) -> tuple[web.AppRunner, int]:
    """A channel that answers every path with ``handler``."""
    app = web.Application()
    app.router.add_route("*", "/{path:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


def test_refused_connection_is_certainly_not_sent():
    async def scenario():
        worker = worker_for(f"http://127.0.0.1:{free_port()}")
        result = await worker.call(request())
        await worker.close()
        assert (result.outcome, result.response_code, result.sent) == (Outcome.DECLINED, rc.CHANNEL_UNAVAILABLE, False)

    run(scenario())


def test_hung_channel_is_unknown_after_the_timeout():
    async def hang(_):
        await asyncio.sleep(3)  # far past the 300 ms timeout; the server waits it out on cleanup

    async def scenario():
        runner, port = await serve(hang)
        worker = worker_for(f"http://127.0.0.1:{port}", timeout_ms=300)
        started = time.monotonic()
        result = await worker.call(request())
        elapsed = time.monotonic() - started
        await worker.close()
        await runner.cleanup()
        assert (result.outcome, result.channel_code, result.sent) == (Outcome.UNKNOWN, "TIMEOUT", True)
        assert elapsed < 2

    run(scenario())


def test_connection_cut_mid_answer_is_unknown():
    async def cut(request):
        response = web.StreamResponse(headers={"Content-Length": "500"})
        await response.prepare(request)
        await response.write(b"<xml><return_code>")
        request.transport.close()
        return response

    async def scenario():
        runner, port = await serve(cut)
        worker = worker_for(f"http://127.0.0.1:{port}")
        result = await worker.call(request())
        await worker.close()
        await runner.cleanup()
        assert (result.outcome, result.response_code) == (Outcome.UNKNOWN, rc.CHANNEL_UNAVAILABLE)

    run(scenario())


def test_nothing_is_sent_after_the_deadline_or_past_the_in_flight_limit():
    calls, slow = slow_channel()

    async def scenario():
        runner, port = await serve(slow)
        worker = worker_for(
            f"http://127.0.0.1:{port}", max_in_flight=2, pool_size=1, timeout_ms=3000, queue_wait_ms=3000
        )
        expired = await worker.call(request(deadline_in=-1))
        results = await asyncio.gather(*(worker.call(request(key)) for key in range(2, 6)))
        await worker.close()
        await runner.cleanup()
        assert (expired.outcome, expired.sent, expired.channel_code) == (Outcome.DECLINED, False, "DEADLINE")
        busy = [r for r in results if r.channel_code == "BUSY"]
        assert len(busy) == 2 and all(not r.sent and r.response_code == rc.CHANNEL_UNAVAILABLE for r in busy)
        assert len(calls) == 2  # one connection: the second admitted call waited for it, then went out

    run(scenario())


@pytest.mark.parametrize(
    ("kind", "sign_threads", "in_thread"), [("alipay", 0, False), ("alipay", 1, True), ("wechat", 2, False)]
)
def test_signing_runs_in_a_thread_only_when_asked_and_worth_it(kind, sign_threads, in_thread):
    """``sign_threads`` 0 (the default) signs on the actor's loop; N signs in threads, but only a
    scheme that lets go of the GIL (RSA): an HMAC never pays the hop."""

    async def anything(_):
        return web.Response(text="not an answer")

    async def scenario():
        runner, port = await serve(anything)
        worker = worker_for(f"http://127.0.0.1:{port}", demo_actor_setup(kind), sign_threads=sign_threads)
        try:
            result = await worker.call(request())
            assert result.sent  # built, signed and sent; what came back is no answer
            signers = [t.name for t in threading.enumerate() if t.name.startswith(f"{kind}0-sign")]
            assert bool(signers) is in_thread, signers
        finally:
            await worker.close()
            await runner.cleanup()

    run(scenario())


@pytest.mark.parametrize("sign_threads", [0, 1])
def test_a_signature_that_fails_sends_nothing_and_says_so(sign_threads):
    """On the loop or in a thread, a call whose signing raises (an HSM gone, say) is certainly not
    sent: DECLINED 96, INTERNAL, and the channel never hears of it."""
    calls: list[None] = []

    async def anything(_):
        calls.append(None)
        return web.Response(text="not an answer")

    def broken_hsm(_: bytes) -> str:
        raise OSError("HSM unreachable")

    async def scenario():
        runner, port = await serve(anything)
        worker = worker_for(f"http://127.0.0.1:{port}", demo_actor_setup("alipay"), sign_threads=sign_threads)
        worker._crypto = dataclasses.replace(worker._crypto, sign=broken_hsm)
        try:
            result = await worker.call(request())
        finally:
            await worker.close()
            await runner.cleanup()
        assert (result.outcome, result.sent, result.channel_code) == (Outcome.DECLINED, False, "INTERNAL")
        assert result.response_code == rc.SYSTEM_MALFUNCTION and not calls

    run(scenario())


def test_a_call_waits_for_a_connection_only_briefly():
    calls, slow = slow_channel()

    async def scenario():
        runner, port = await serve(slow)
        worker = worker_for(f"http://127.0.0.1:{port}", pool_size=1, timeout_ms=3000, queue_wait_ms=200)
        first, second = await asyncio.gather(worker.call(request(1)), worker.call(request(2)))
        await worker.close()
        await runner.cleanup()
        assert first.sent and first.channel_code != "BUSY"
        assert (second.outcome, second.sent, second.channel_code) == (Outcome.DECLINED, False, "BUSY")
        assert len(calls) == 1

    run(scenario())


@contextlib.asynccontextmanager
async def actor_link_to(handler, tls: LinkTls | None = None) -> AsyncIterator[LinkAddress]:
    """A channel answering with ``handler``, and the address of a worker's link server for it
    (over TLS with ``tls``)."""
    runner, port = await serve(handler)
    worker = worker_for(f"http://127.0.0.1:{port}")
    server = LinkServer(worker.call, tls)
    try:
        yield await server.open("127.0.0.1")
    finally:
        await server.close()
        await worker.close()
        await runner.cleanup()


def test_batch_results_come_back_over_the_link_as_they_complete():
    """A batch goes to the actor as one frame on its link; each result comes back as soon as its
    call completes, over a real TCP connection, so a slow payment holds back nobody."""

    async def by_amount(request):
        body = await request.read()
        await asyncio.sleep(2 if b"<total_fee><![CDATA[999]]>" in body else 0)
        return web.Response(text="<xml><return_code>FAIL</return_code></xml>")

    async def scenario():
        async with actor_link_to(by_amount) as address:
            await send_and_collect(address)

    async def send_and_collect(address: LinkAddress) -> None:
        slow = ChannelRequest(
            1, "pay", "20261123000000000001", 999, "134567890123456700", "S", "T0000001", time.time() + 10
        )
        fast = [request(key) for key in range(2, 6)]
        started = time.monotonic()
        arrivals: list[tuple[float, list[int]]] = []
        everything = asyncio.Event()

        def on_results(results):
            arrivals.append((time.monotonic() - started, [r.key for r in results]))
            if sum(len(keys) for _, keys in arrivals) == 5:
                everything.set()

        link = await ActorLink.connect(address, on_results, lambda: None)
        link.send([slow, *fast])
        await asyncio.wait_for(everything.wait(), 10)
        link.close()
        fast_keys = {k for t, keys in arrivals if t < 1 for k in keys}
        assert fast_keys == {2, 3, 4, 5}, arrivals  # not held back by the slow one
        assert arrivals[-1][1] == [1] and arrivals[-1][0] >= 2

    run(scenario())


def test_a_link_without_the_actors_token_is_dropped_and_runs_nothing():
    calls = []

    async def record(request):
        calls.append(await request.read())
        return web.Response(text="<xml><return_code>FAIL</return_code></xml>")

    async def scenario():
        async with actor_link_to(record) as address:
            lost = asyncio.Event()
            link = await ActorLink.connect(address._replace(token=b"x" * 32), lambda results: None, lost.set)
            link.send([request(1)])
            await asyncio.wait_for(lost.wait(), 5)  # the actor hung up
            await asyncio.sleep(0.2)
        assert calls == []

    run(scenario())


def test_link_frames_are_cut_from_any_chunking_and_a_strangers_big_frame_is_refused():
    from actors.link import FrameError, FrameReader, frame

    stream = frame(b"t" * 32) + frame(b"batch one") + frame(b"") + frame(b"x" * 1000)
    for chunk in (1, 7, 33, len(stream)):
        reader = FrameReader(limit=32)  # the token first, then anything up to MAX_FRAME
        frames = []
        for start in range(0, len(stream), chunk):
            for payload in reader.feed(stream[start : start + chunk]):
                frames.append(payload)
                reader.limit = 2**20
        assert frames == [b"t" * 32, b"batch one", b"", b"x" * 1000], chunk
    stranger = FrameReader(limit=32)
    with pytest.raises(FrameError):
        list(stranger.feed(frame(b"y" * 33)[:8]))  # refused from its length alone


def test_a_silent_connection_to_an_actors_link_is_dropped():
    from actors.link import TOKEN_WAIT_S

    async def never(_):
        raise AssertionError("nothing may reach the channel")

    async def scenario() -> float:
        async with actor_link_to(never) as address:
            reader, writer = await asyncio.open_connection(address.host, address.port)
            started = time.monotonic()
            assert await asyncio.wait_for(reader.read(1), TOKEN_WAIT_S + 5) == b""  # closed by the actor
            writer.close()
            return time.monotonic() - started

    assert run(scenario()) >= TOKEN_WAIT_S - 0.5


def test_a_front_end_hangs_up_on_a_link_that_answers_garbage():
    """Results it cannot read are no results: the link ends, so the gateway settles what it sent
    on it UNKNOWN (``on_lost``) instead of waiting for answers that will not come."""
    from actors.link import LinkAddress, frame

    async def scenario():
        async def garbage(reader, writer):
            await reader.read(100)  # the token
            writer.write(frame(b"\xc1 not MessagePack"))
            await writer.drain()
            await asyncio.sleep(5)

        server = await asyncio.start_server(garbage, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        lost, results = asyncio.Event(), []
        link = await ActorLink.connect(LinkAddress("127.0.0.1", port, b"t" * 32), results.append, lost.set)
        link.send([request(1)])
        await asyncio.wait_for(lost.wait(), 5)
        server.close()
        return results, link.is_open

    assert run(scenario()) == ([], False)
