"""The simulators' lean HTTP/1.1 server (``bench.simulators.http``) over real sockets: keep-alive,
pipelined requests answered in order, chunked bodies, Connection: close, and the refusals of a
request that does not parse (400) or is too large (413), each closing the connection."""

import asyncio
import time

import uvloop

from bench.simulators import http
from bench.simulators.http import CUT, TEXT, Reply, Request

SEEN: list[bytes] = []  # the bodies of the requests served


def _echo(request: Request) -> Reply:
    """Answers with the method, path and body it got; ``/slow`` 50 ms later; ``/cut`` not at all."""
    SEEN.append(request.body)
    delay = 0.05 if request.path == "/slow" else 0.0
    ending = CUT if request.path == "/cut" else http.SEND
    return Reply(200, f"{request.method} {request.path} ".encode() + request.body, TEXT, delay, ending)


async def _exchange(data: bytes) -> bytes:
    """Send ``data`` on one connection and read until the server closes it (or 2 s pass)."""
    server = await http.listen(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        received = b""
        try:
            async with asyncio.timeout(2):
                while chunk := await reader.read(65536):
                    received += chunk
        except TimeoutError:
            received += b"<still open>"
        return received
    finally:
        writer.close()
        server.close()


def exchange(data: bytes) -> bytes:
    return uvloop.run(_exchange(data))


def post(path: str, body: bytes = b"", extra: str = "") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: sim\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def test_keep_alive_answers_one_request_after_another_and_stays_open():
    async def two_in_turn() -> list[bytes]:
        server = await http.listen(_echo, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        answers = []
        for body in (b"one", b"two"):
            writer.write(post("/pay", body))
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            answers.append(head + await reader.readexactly(length))
        writer.close()
        server.close()
        return answers

    first, second = uvloop.run(two_in_turn())
    assert first.startswith(b"HTTP/1.1 200 OK\r\n") and first.endswith(b"POST /pay one")
    assert second.startswith(b"HTTP/1.1 200 OK\r\n") and second.endswith(b"POST /pay two")
    assert b"Connection: close" not in first + second


def test_pipelined_requests_are_answered_in_the_order_they_came():
    received = exchange(post("/slow", b"1") + post("/fast", b"2") + post("/fast", b"3", "Connection: close\r\n"))
    bodies = [part for part in received.split(b"HTTP/1.1 200 OK") if part]
    assert [body.rsplit(b"\r\n\r\n", 1)[1] for body in bodies] == [b"POST /slow 1", b"POST /fast 2", b"POST /fast 3"]


def test_a_chunked_request_body_arrives_whole():
    chunked = (
        b"POST /pay HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    assert exchange(chunked).endswith(b"\r\n\r\nPOST /pay abcde")


def test_connection_close_is_answered_then_closed():
    SEEN.clear()
    received = exchange(post("/pay", b"x", "Connection: close\r\n") + post("/pay", b"never"))
    assert received.count(b"HTTP/1.1 200 OK") == 1
    assert b"Connection: close\r\n" in received
    assert received.endswith(b"POST /pay x")  # closed: no "<still open>", the next request unanswered
    assert SEEN == [b"x"]  # nor acted on


def test_a_malformed_request_gets_400_and_the_connection_closes():
    received = exchange(post("/pay", b"ok") + b"NOT HTTP AT ALL\r\n\r\n")
    answers = received.split(b"HTTP/1.1 ")
    assert answers[1].startswith(b"200 OK") and answers[2].startswith(b"400 Bad Request")
    assert b"malformed request" in answers[2] and not received.endswith(b"<still open>")


def test_a_request_over_the_size_cap_gets_413_and_the_connection_closes():
    declared = f"POST /pay HTTP/1.1\r\nContent-Length: {http.MAX_REQUEST_BYTES + 1}\r\n\r\n".encode()
    received = exchange(declared + b"x" * 1000)
    assert received.startswith(b"HTTP/1.1 413 Request Entity Too Large\r\n")
    assert not received.endswith(b"<still open>")
    huge_head = b"GET /x HTTP/1.1\r\nX-Padding: " + b"p" * (http.MAX_REQUEST_BYTES + 10)
    assert exchange(huge_head).startswith(b"HTTP/1.1 413 ")


def test_a_cut_answer_closes_the_connection_after_the_answers_before_it():
    received = exchange(post("/pay", b"1") + post("/cut") + post("/pay", b"3"))
    assert received.count(b"HTTP/1.1 200 OK") == 1 and received.endswith(b"POST /pay 1")


def _answer_after(work_s: float, delay_s: float) -> float:
    """Seconds from sending one request to its answer, from an app that works ``work_s`` (blocking,
    as signing does) and asks for ``delay_s``."""

    def working(request: Request) -> Reply:
        time.sleep(work_s)
        return Reply(200, b"done", TEXT, delay_s)

    async def timed() -> float:
        server = await http.listen(working, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        started = time.monotonic()
        writer.write(post("/pay", b"x"))
        await reader.readuntil(b"\r\n\r\n")
        took = time.monotonic() - started
        writer.close()
        server.close()
        await server.wait_closed()
        return took

    return uvloop.run(timed())


def test_a_replys_delay_counts_from_the_requests_arrival_so_the_work_is_inside_it():
    # A channel's latency includes its own work: 0.5 s of work inside a 1 s delay answers at 1 s,
    # not 1.5; work past the delay answers as soon as it is done. (The timers count whole
    # milliseconds, on a clock read before the request was: a hair under 1 s may come.)
    assert 0.98 <= _answer_after(0.5, 1.0) < 1.3
    assert 0.5 <= _answer_after(0.5, 0.45) < 0.8
