"""A lean HTTP/1.1 server for a simulator's channel address, on an ``asyncio.Protocol`` with
``httptools`` (llhttp) parsing.

Why not aiohttp there: under load a simulator spent more CPU in aiohttp's request, routing and
response objects than in its channel's own work (``bench/sim_speed.py`` measures both). This
serves what a channel address needs and no more: keep-alive, pipelined requests answered in
the order they came, Content-Length and chunked request bodies, ``Connection: close``, a cap on
a request's size (413), and 400 for a request that does not parse; both refusals close the
connection.

The application is a callable taking a ``Request`` and returning a ``Reply``, or an awaitable of
one for the rare requests that must wait (an audit look-up, a hang). A reply may ask to be sent
after a delay (a timer, not a sleeping coroutine), or to end the connection instead of answering
(``CUT``) or part-way through its body (``HALF``): the faults a simulator plays. The delay counts
from the request's arrival, as a channel's latency includes its own work (its signatures): a
reply whose work took longer than its delay goes at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus

import httptools

log = logging.getLogger("paysw.simulator")

MAX_REQUEST_BYTES = 1 << 20  # head and body; channel requests are a few hundred bytes
MAX_UNANSWERED = 64  # pipelined requests held before reading from the connection pauses

SEND, CUT, HALF = "send", "cut", "half"  # how a reply ends: whole, no answer at all, half the body
_REASONS = {s.value: s.phrase for s in HTTPStatus}


class Headers(dict[str, str]):
    """A request's headers by lower-cased name; looked up in any case, as HTTP names are."""

    def __getitem__(self, name: str) -> str:
        return dict.__getitem__(self, name.lower())

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return dict.get(self, name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and dict.__contains__(self, name.lower())


class Request:
    __slots__ = ("body", "headers", "method", "path")

    def __init__(self, method: str, path: str, headers: Headers, body: bytes) -> None:
        self.method, self.path, self.headers, self.body = method, path, headers, body


class Reply:
    __slots__ = ("body", "delay", "ending", "headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        delay: float = 0.0,
        ending: str = SEND,
    ) -> None:
        self.status, self.body, self.headers, self.delay, self.ending = status, body, headers or {}, delay, ending


App = Callable[[Request], "Reply | Awaitable[Reply]"]

TEXT = {"Content-Type": "text/plain; charset=utf-8"}
JSON = {"Content-Type": "application/json"}


class _TooLarge(Exception):
    pass


class _Slot:
    """One request's place in a connection's answer order; ``reply`` is set when it is ready."""

    __slots__ = ("arrived", "keep_alive", "reply")

    def __init__(self, keep_alive: bool, arrived: float) -> None:
        self.reply: Reply | None = None
        self.keep_alive = keep_alive
        self.arrived = arrived  # the loop's clock when the request was read whole (pipelined: after those before it)


class HttpConnection(asyncio.Protocol):
    def __init__(self, app: App) -> None:
        self._app = app
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._slots: deque[_Slot] = deque()
        self._unfinished = 0  # bytes received of the request being read
        self._done_reading = False  # after a refused request
        self._paused = False
        self._url = b""
        self._headers = Headers()
        self._body: list[bytes] = []

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None  # replies still on their way are dropped

    def data_received(self, data: bytes) -> None:
        if self._done_reading:
            return
        self._unfinished += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _TooLarge):
                raise
            self._refuse(413, "request too large")
        except httptools.HttpParserUpgrade:
            self._refuse(400, "protocol upgrades are not served")
        except httptools.HttpParserError as exc:
            self._refuse(400, f"malformed request: {exc}")
        else:
            if self._unfinished > MAX_REQUEST_BYTES:
                self._refuse(413, "request too large")

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._url, self._headers, self._body = b"", Headers(), []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        length = self._headers.get("content-length", "0")
        if length.isdigit() and int(length) > MAX_REQUEST_BYTES:
            raise _TooLarge

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._unfinished = 0
        parser = self._parser
        path = self._url.partition(b"?")[0].decode("latin-1")
        request = Request(parser.get_method().decode("ascii"), path, self._headers, b"".join(self._body))
        # llhttp refuses data after a request that closes
        slot = _Slot(parser.should_keep_alive(), self._loop.time())
        self._slots.append(slot)
        if len(self._slots) >= MAX_UNANSWERED and self._transport is not None:
            self._transport.pause_reading()
            self._paused = True
        try:
            reply = self._app(request)
        except Exception:
            log.exception("simulator: %s %s failed", request.method, path)
            reply = Reply(500, b"Internal Server Error", TEXT)
        if isinstance(reply, Reply):
            self._ready(slot, reply)
        else:
            self._loop.create_task(reply).add_done_callback(lambda task: self._awaited(slot, task))

    # answering, in order

    def _awaited(self, slot: _Slot, task: asyncio.Task[Reply]) -> None:
        if task.cancelled() or task.exception() is not None:
            if not task.cancelled():
                log.error("simulator: a request failed", exc_info=task.exception())
            self._ready(slot, Reply(500, b"Internal Server Error", TEXT))
        else:
            self._ready(slot, task.result())

    def _ready(self, slot: _Slot, reply: Reply) -> None:
        wait = reply.delay - (self._loop.time() - slot.arrived)
        if wait > 0:  # a timer, cheaper than a coroutine sleeping
            self._loop.call_later(wait, self._due, slot, reply)
        else:
            self._due(slot, reply)

    def _due(self, slot: _Slot, reply: Reply) -> None:
        slot.reply = reply
        if self._slots and self._slots[0] is slot:
            self._flush()

    def _flush(self) -> None:
        slots = self._slots
        while slots and slots[0].reply is not None:
            slot = slots.popleft()
            if not self._send(slot.reply, slot.keep_alive):
                slots.clear()
                return
        if self._paused and len(slots) < MAX_UNANSWERED // 2 and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()

    def _send(self, reply: Reply, keep_alive: bool) -> bool:
        """Write ``reply``; False when the connection is closed after it."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return False
        if reply.ending == CUT:
            transport.close()
            return False
        body = reply.body
        head = [f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, '')}\r\nContent-Length: {len(body)}\r\n"]
        head.extend(f"{name}: {value}\r\n" for name, value in reply.headers.items())
        if not keep_alive:
            head.append("Connection: close\r\n")
        head.append("\r\n")
        if reply.ending == HALF:
            body = body[: len(body) // 2]
        transport.write("".join(head).encode() + body)
        if reply.ending == HALF or not keep_alive:
            transport.close()
            return False
        return True

    def _refuse(self, status: int, reason: str) -> None:
        """Answer a request that cannot be read, after those before it, and close."""
        self._done_reading = True
        slot = _Slot(keep_alive=False, arrived=self._loop.time())
        self._slots.append(slot)
        self._ready(slot, Reply(status, reason.encode(), TEXT))


async def listen(app: App, host: str, port: int) -> asyncio.Server:
    """Serve ``app`` on ``host:port`` until the returned server is closed."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: HttpConnection(app), host, port, reuse_address=True)
