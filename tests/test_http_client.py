"""The channel actors' HTTP client (``actors.http``) against small real servers on loopback,
some of them misbehaving: what it reuses, what it bounds, and above all which failures it calls
``NotSent`` (the channel certainly does not have the request) and which ``NoAnswer`` (it may)."""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from collections.abc import Awaitable, Callable

import pytest
import uvloop

from actors.http import AnswerTimeout, BadAnswer, ConnectionBroke, HttpPool, NoAnswer, NotSent, PoolBusy
from tests.certs import self_signed as certificate
from tests.conftest import refusing_port

Handler = Callable[["Server", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
LOOPS = pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])


class Server:
    """A loopback server running ``handler`` on each connection, counting what it saw."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self._handler = handler
        self._tls = tls
        self.connections = 0
        self.open = 0  # connections open now
        self.most_open = 0
        self.requests: list[bytes] = []
        self.closed_by_client = 0  # connections where the client closed first

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()

    def endpoint(self, base: str = "") -> str:
        return f"{'https' if self._tls else 'http'}://127.0.0.1:{self.port}{base}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            await self._handler(self, reader, writer)
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            self.open -= 1
            writer.close()

    async def request(self, reader: asyncio.StreamReader) -> bytes | None:
        """The next request on this connection, or None once the client closed it."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            self.closed_by_client += 1
            return None
        length = re.search(rb"\r\ncontent-length: *(\d+)\r\n", head, re.IGNORECASE)
        request = head + await reader.readexactly(int(length[1]))
        self.requests.append(request)
        return request


def answer(body: bytes, *extra: str) -> bytes:
    head = "".join(f"{line}\r\n" for line in ("HTTP/1.1 200 OK", f"Content-Length: {len(body)}", *extra))
    return head.encode() + b"\r\n" + body


def echoing(*extra: str) -> Handler:
    """Answers each request with its own body and the path it asked for (and ``extra`` headers)."""

    async def echo(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (request := await server.request(reader)) is not None:
            path = request.split(b" ", 2)[1].decode()
            writer.write(answer(request.partition(b"\r\n\r\n")[2], f"X-Path: {path}", *extra))

    return echo


echo = echoing()


async def post(pool: HttpPool, body: bytes = b"hello", timeout: float = 5.0, path: str = "/pay"):
    slot = await pool.acquire(1.0)
    try:
        return await slot.post(path, body, {"Content-Type": "application/json"}, timeout)
    finally:
        slot.release()


@LOOPS
def test_keep_alive_one_connection_for_many_posts(run) -> None:
    async def scenario() -> None:
        async with Server(echo) as server:
            pool = HttpPool(server.endpoint("/gateway/"), size=4)
            answers = [await post(pool, f"body {i}".encode()) for i in range(20)]
            pool.close()
        assert [a.body for a in answers] == [f"body {i}".encode() for i in range(20)]
        assert {(a.status, a.headers["X-Path"]) for a in answers} == {(200, "/gateway/pay")}
        assert server.connections == 1
        assert (
            b"\r\nUser-Agent: paysw\r\nContent-Type: application/json\r\nContent-Length: 6\r\n\r\n"
            in server.requests[0]
        )

    run(scenario())


def test_pool_bounds_connections_and_busy_after_wait() -> None:
    async def slow_echo(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (request := await server.request(reader)) is not None:
            await asyncio.sleep(0.05)
            writer.write(answer(request.partition(b"\r\n\r\n")[2]))

    async def scenario() -> None:
        async with Server(slow_echo) as server:
            pool = HttpPool(server.endpoint(), size=3)
            answers = await asyncio.gather(*(post(pool, b"%d" % i) for i in range(12)))
            assert [a.body for a in answers] == [b"%d" % i for i in range(12)]
            assert server.most_open == 3

            held = [await pool.acquire(0) for _ in range(3)]
            with pytest.raises(PoolBusy):
                await pool.acquire(0.1)
            waiting = asyncio.ensure_future(pool.acquire(5.0))  # gets the slot released next
            await asyncio.sleep(0.01)
            held.pop().release()
            held.append(await asyncio.wait_for(waiting, 1.0))
            with pytest.raises(PoolBusy):
                await pool.acquire(0)
            for slot in held:
                slot.release()
            pool.close()

    asyncio.run(scenario())


def test_a_cancelled_wait_keeps_no_slot() -> None:
    async def scenario() -> None:
        pool = HttpPool("http://127.0.0.1:9/", size=1)
        held = await pool.acquire(0)
        waiting = asyncio.ensure_future(pool.acquire(5.0))
        await asyncio.sleep(0.01)
        waiting.cancel()
        await asyncio.sleep(0)
        held.release()
        held.release()  # a second release gives nothing back
        held = await pool.acquire(0)
        with pytest.raises(PoolBusy):
            await pool.acquire(0)

        waiting = asyncio.ensure_future(pool.acquire(5.0))
        await asyncio.sleep(0.01)
        held.release()  # handed to the waiter...
        waiting.cancel()  # ...cancelled before it could take it: it goes back to the pool
        with pytest.raises(asyncio.CancelledError):
            await waiting
        held = await pool.acquire(0)
        with pytest.raises(PoolBusy):
            await pool.acquire(0)

    asyncio.run(scenario())


def test_a_released_slot_posts_nothing() -> None:
    async def scenario() -> None:
        async with Server(echo) as server:
            pool = HttpPool(server.endpoint(), size=1)
            slot = await pool.acquire(0)
            slot.release()
            with pytest.raises(RuntimeError, match="released"):
                await slot.post("/pay", b"", {}, 1.0)
            pool.close()
        assert server.connections == 0

    asyncio.run(scenario())


def test_refused_is_not_sent() -> None:
    async def scenario() -> None:
        pool = HttpPool(f"http://127.0.0.1:{refusing_port()}", size=1)
        with pytest.raises(NotSent, match="ConnectionRefusedError"):
            await post(pool)

    asyncio.run(scenario())


def test_connect_timeout_is_not_sent() -> None:
    async def scenario() -> None:
        with socket.socket() as listener:  # a backlog of one, filled: further connects hang unanswered
            listener.bind(("127.0.0.1", 0))
            listener.listen(0)
            port = listener.getsockname()[1]
            fillers = [socket.socket() for _ in range(2)]
            for filler in fillers:
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
            await asyncio.sleep(0.05)
            pool = HttpPool(f"http://127.0.0.1:{port}", size=1)
            with pytest.raises(NotSent, match=r"no connection within 0\.300s"):
                await post(pool, timeout=0.3)
            for filler in fillers:
                filler.close()

    asyncio.run(scenario())


@LOOPS
def test_answer_timeout_is_no_answer_and_the_connection_is_dropped(run) -> None:
    async def first_hangs(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if server.connections == 1:  # reads the request and never answers
            await server.request(reader)
            await server.request(reader)  # returns when the client gives up on the connection
            return
        await echo(server, reader, writer)

    async def scenario() -> None:
        async with Server(first_hangs) as server:
            pool = HttpPool(server.endpoint(), size=1)
            with pytest.raises(AnswerTimeout) as lost:
                await post(pool, timeout=0.2)
            assert isinstance(lost.value, NoAnswer) and isinstance(lost.value, TimeoutError)
            assert (await post(pool, b"next")).body == b"next"
            await asyncio.sleep(0.05)
            pool.close()
        assert server.connections == 2  # the one that timed out was not reused...
        assert len(server.requests) == 2 and server.closed_by_client >= 1  # ...and was closed

    run(scenario())


@LOOPS
def test_server_closing_mid_answer_is_no_answer(run) -> None:
    async def half_answer(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        await writer.drain()

    async def scenario() -> None:
        async with Server(half_answer) as server:
            pool = HttpPool(server.endpoint(), size=1)
            with pytest.raises(ConnectionBroke):
                await post(pool)
            pool.close()
        assert len(server.requests) == 1

    run(scenario())


def test_closed_after_reading_is_no_answer_even_on_a_reused_connection() -> None:
    async def answers_once(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(answer((await server.request(reader))[-5:]))
        await server.request(reader)  # the second request is read, then the connection dropped

    async def scenario() -> None:
        async with Server(answers_once) as server:
            pool = HttpPool(server.endpoint(), size=1)
            await post(pool)
            with pytest.raises(ConnectionBroke):
                await post(pool)
            pool.close()
        assert server.connections == 1 and len(server.requests) == 2

    asyncio.run(scenario())


def test_a_close_after_a_bodiless_answer_is_no_answer_to_the_next_request() -> None:
    """A 204 has no body and no length: the close that follows the next request is a broken
    connection, not the end of a close-delimited answer (the 204 replayed as the next answer)."""

    async def no_content_once(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.request(reader)
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await server.request(reader)  # the second request is read, then the connection dropped

    async def scenario() -> None:
        async with Server(no_content_once) as server:
            pool = HttpPool(server.endpoint(), size=1)
            assert (await post(pool)).status == 204
            with pytest.raises(ConnectionBroke):
                await post(pool)
            pool.close()
        assert server.connections == 1

    asyncio.run(scenario())


def test_a_connection_known_closed_is_not_written_to() -> None:
    """Closed by the server, or spoken on out of turn, while idle: the post goes on a new connection."""

    async def misbehaves(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answered = answer((await server.request(reader))[-5:])
        late = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n"
        if server.connections == 1:  # closes once idle
            writer.write(answered)
            return
        if server.connections == 2:  # speaks out of turn once idle
            writer.write(answered)
            await writer.drain()
            await asyncio.sleep(0.01)
            writer.write(late)
        else:  # answers twice
            writer.write(answered + late)
        await server.request(reader)  # until the client drops it

    async def scenario() -> None:
        async with Server(misbehaves) as server:
            pool = HttpPool(server.endpoint(), size=1)
            for body in (b"first", b"secnd", b"third", b"forth"):
                assert (await post(pool, body)).body == body
                await asyncio.sleep(0.05)
            pool.close()
        assert server.connections == 4 and len(server.requests) == 4

    asyncio.run(scenario())


def test_connection_close_is_honoured() -> None:
    async def scenario() -> None:
        async with Server(echoing("Connection: close")) as server:  # says close, but keeps it open
            pool = HttpPool(server.endpoint(), size=1)
            assert (await post(pool, b"one")).body == b"one"
            assert (await post(pool, b"two")).body == b"two"
            await asyncio.sleep(0.05)
            pool.close()
        assert server.connections == 2 and server.closed_by_client == 2

    asyncio.run(scenario())


def test_idle_connections_are_closed_after_the_keep_alive_time() -> None:
    async def scenario() -> None:
        async with Server(echo) as server:
            pool = HttpPool(server.endpoint(), size=1, keepalive_s=0.1)
            await post(pool)
            await asyncio.sleep(0.3)
            assert server.closed_by_client == 1
            await post(pool)
            pool.close()
        assert server.connections == 2

    asyncio.run(scenario())


def test_idle_connections_are_closed_before_the_server_would() -> None:
    async def scenario() -> None:
        async with Server(echoing("Keep-Alive: timeout=1, max=100")) as server:
            pool = HttpPool(server.endpoint(), size=1)  # would keep it 30 s
            await post(pool)
            await asyncio.sleep(0.1)
            assert server.closed_by_client == 1
            pool.close()

    asyncio.run(scenario())


def test_chunked_answer() -> None:
    async def chunked(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Sign: abc\r\n\r\n5\r\nhello\r\n")
            await writer.drain()
            await asyncio.sleep(0.01)
            writer.write(b"7\r\n, world\r\n0\r\n\r\n")

    async def scenario() -> None:
        async with Server(chunked) as server:
            pool = HttpPool(server.endpoint(), size=1)
            answers = [await post(pool) for _ in range(2)]
            pool.close()
        assert [(a.status, a.body, a.headers["X-Sign"]) for a in answers] == [(200, b"hello, world", "abc")] * 2
        assert server.connections == 1

    asyncio.run(scenario())


def test_interim_answers_are_skipped_and_a_body_may_end_with_the_connection() -> None:
    async def old_style(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nX-Sign: abc\r\n\r\nall of ")
        await writer.drain()
        await asyncio.sleep(0.01)
        writer.write(b"it")
        await writer.drain()

    async def scenario() -> None:
        async with Server(old_style) as server:
            pool = HttpPool(server.endpoint(), size=1)
            got = await post(pool)
            pool.close()
        assert (got.status, got.body, got.headers) == (200, b"all of it", {"X-Sign": "abc"})

    asyncio.run(scenario())


def test_oversize_and_malformed_answers_are_no_answer() -> None:
    async def big_then_garbage(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.request(reader)
        writer.write(answer(b"x" * 5000) if server.connections == 1 else b"HELLO THERE\r\n\r\n")
        await server.request(reader)

    async def scenario() -> None:
        async with Server(big_then_garbage) as server:
            pool = HttpPool(server.endpoint(), size=1, max_answer_bytes=4096)
            with pytest.raises(BadAnswer, match="larger than 4096"):
                await post(pool)
            with pytest.raises(BadAnswer, match="malformed"):
                await post(pool)
            await asyncio.sleep(0.05)
            pool.close()
        assert server.connections == 2 and server.closed_by_client == 2

    asyncio.run(scenario())


def test_a_line_break_in_a_header_is_refused_before_sending() -> None:
    async def scenario() -> None:
        async with Server(echo) as server:
            pool = HttpPool(server.endpoint(), size=1)
            slot = await pool.acquire(0)
            with pytest.raises(ValueError, match="line break"):
                await slot.post("/pay", b"", {"X-Sign": "abc\r\nX-Evil: 1"}, 1.0)
            slot.release()
            pool.close()
        assert server.connections == 0

    asyncio.run(scenario())


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, str]:
    """A server context with a self-signed certificate for 127.0.0.1, and that certificate (PEM)."""
    cert, key = certificate(tmp_path_factory.mktemp("channel-tls"), "test channel")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    return server, cert.read_text()


@LOOPS
def test_tls_verifies_the_server(run, self_signed) -> None:
    server_tls, pem = self_signed

    async def scenario() -> None:
        async with Server(echo, tls=server_tls) as server:
            untrusting = HttpPool(server.endpoint(), size=1)  # the system's CAs: not this one
            with pytest.raises(NotSent, match="CERTIFICATE_VERIFY_FAILED"):
                await post(untrusting)
            assert server.requests == []
            trusting = HttpPool(server.endpoint(), size=1, ssl=ssl.create_default_context(cadata=pem))
            answers = [await post(trusting, b"secret %d" % i) for i in range(3)]
            trusting.close()
            await asyncio.sleep(0.05)
        assert [a.body for a in answers] == [b"secret %d" % i for i in range(3)]
        assert len(server.requests) == 3

    run(scenario())
