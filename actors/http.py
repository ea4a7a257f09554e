"""A lean HTTP/1.1 client for the channel actors: a bounded pool of keep-alive connections to one
endpoint, on an ``asyncio.Protocol`` (so uvloop's, where it runs) parsed by httptools (llhttp).

Its errors say what matters for money:

- ``PoolBusy``: no connection slot came free in time; nothing was signed or sent;
- ``NotSent``: the pool could not connect (refused, DNS, connect timeout, TLS handshake failed):
  the channel certainly does not have the request;
- ``NoAnswer`` and its kinds (``AnswerTimeout``, ``ConnectionBroke``, ``BadAnswer``): the request
  was written, so the channel may have it, and no whole answer came back.

A connection that timed out, broke or answered out of turn is closed, never reused: whatever it
still carries belongs to a request already given up on.
"""

from __future__ import annotations

import asyncio
import ssl as _ssl
from collections import deque
from collections.abc import Mapping
from urllib.parse import urlsplit

import httptools

from protocols.channels.base import HttpAnswer


class PoolBusy(Exception):
    """No connection slot came free in time: nothing was sent."""


class NotSent(Exception):
    """No connection could be made (refused, DNS, connect timeout, TLS handshake): nothing was sent."""


class NoAnswer(Exception):
    """The request was written, so the server may have it, but no whole answer came back."""


class AnswerTimeout(NoAnswer, TimeoutError):
    """No whole answer within the timeout."""


class ConnectionBroke(NoAnswer):
    """The connection was closed or reset before a whole answer. On a reused keep-alive
    connection that the server closed as the request went out, nothing proves it was not read."""


class BadAnswer(NoAnswer):
    """The answer was not HTTP/1.1, or was larger than the pool accepts."""


class _Connection(asyncio.Protocol):
    """One connection, one request at a time (no pipelining). The parser calls its ``on_*``."""

    def __init__(self, open_set: set[_Connection]) -> None:
        self._open_set = open_set  # the pool's open connections, kept up to date here
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._answer: asyncio.Future[HttpAnswer] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._limit = 0
        self._received = 0
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._delimited = False  # the answer says where its body ends (Content-Length or chunked)
        self._until_close = False  # else, once its head is read, the body ends where the connection does
        self.server_keepalive_s: float | None = None  # the server's Keep-Alive: timeout=N, if it said
        self.idle_timer: asyncio.TimerHandle | None = None
        self.closed = False

    @property
    def reusable(self) -> bool:
        return not self.closed and self._answer is None and not self._transport.is_closing()

    def send(self, request: bytes, timeout: float, limit: int) -> asyncio.Future[HttpAnswer]:
        loop = asyncio.get_running_loop()
        self._answer = loop.create_future()
        self._timer = loop.call_later(timeout, self._time_out, timeout)
        self._limit, self._received = limit, 0
        # Nothing of the last answer carries over: a close now, before this answer's head, is a
        # broken connection, not a close-delimited body (the last one's, a 204's, say).
        self._headers, self._body, self._delimited, self._until_close = {}, [], False, False
        self._transport.write(request)
        return self._answer

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _time_out(self, timeout: float) -> None:
        self._fail(AnswerTimeout(f"no whole answer within {timeout:.3f}s"))

    def _fail(self, error: NoAnswer) -> None:
        self.abort()
        self._resolve(None, error)

    def _resolve(self, answer: HttpAnswer | None, error: NoAnswer | None) -> None:
        future, self._answer = self._answer, None
        if self._timer is not None:
            self._timer.cancel()
        if future is not None and not future.done():
            if error is None:
                future.set_result(answer)
            else:
                future.set_exception(error)

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._open_set.add(self)

    def data_received(self, data: bytes) -> None:
        if self._answer is None:  # a server speaking out of turn is not trusted with the next request
            self.abort()
            return
        self._received += len(data)
        if self._received > self._limit:
            self._fail(BadAnswer(f"answer larger than {self._limit} bytes"))
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:  # (101: we never ask to switch)
            self._fail(BadAnswer(f"malformed answer: {exc}"))

    def eof_received(self) -> None:
        if self._until_close and self._answer is not None:
            self.on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._open_set.discard(self)
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        if self._answer is not None:
            why = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
            self._resolve(None, ConnectionBroke(f"connection closed before a whole answer{why}"))

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self._answer is None:  # more than the one answer asked for
            self.abort()
        self._headers, self._body, self._delimited, self._until_close = {}, [], False, False

    def on_header(self, name: bytes, value: bytes) -> None:
        text = name.decode("latin-1")
        self._headers[text] = value.decode("latin-1")
        lower = text.lower()
        if lower == "content-length" or lower == "transfer-encoding":
            self._delimited = True
        elif lower == "keep-alive":  # e.g. "timeout=5, max=100": close before the server does
            for part in value.split(b","):
                key, _, seconds = part.strip().partition(b"=")
                if key.lower() == b"timeout" and seconds.isdigit():
                    self.server_keepalive_s = float(seconds)

    def on_headers_complete(self) -> None:
        self._until_close = not self._delimited

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (100 Continue, 103 Early Hints): the real one follows
            return
        if not self._parser.should_keep_alive():  # Connection: close, or HTTP/1.0
            self.close()
        self._resolve(HttpAnswer(status, b"".join(self._body), self._headers), None)


class Slot:
    """A place in the pool, taken before the request is signed: ``post`` on it, then ``release``."""

    __slots__ = ("_held", "_pool", "_posting")

    def __init__(self, pool: HttpPool) -> None:
        self._pool = pool
        self._held = True
        self._posting = False

    async def post(self, path: str, body: bytes, headers: Mapping[str, str], timeout: float) -> HttpAnswer:
        """POST ``body`` to the endpoint's base path + ``path``; ``timeout`` covers connecting and
        the whole answer. The pool writes Host, User-Agent and Content-Length; ``headers`` the rest.
        Raises ``NotSent`` or a ``NoAnswer``; any HTTP status is an answer."""
        if not self._held or self._posting:
            raise RuntimeError("a slot posts once at a time, and only until it is released")
        self._posting = True
        try:
            return await self._pool._post(path, body, headers, timeout)
        finally:
            self._posting = False

    def release(self) -> None:
        if self._held:
            self._held = False
            self._pool._release()


class HttpPool:
    """Up to ``size`` connections to ``endpoint`` (``http://host:port/base`` or ``https://...``);
    idle ones are reused newest first and closed after ``keepalive_s`` (or sooner if the server
    says so). ``ssl`` defaults to the system's trusted CAs with the host name checked."""

    def __init__(
        self,
        endpoint: str,
        size: int,
        *,
        ssl: _ssl.SSLContext | None = None,
        keepalive_s: float = 30.0,
        max_answer_bytes: int = 1 << 20,
    ) -> None:
        url = urlsplit(endpoint)
        if url.scheme not in ("http", "https") or not url.hostname or url.query or url.fragment or url.username:
            raise ValueError(f"not an endpoint (http[s]://host[:port][/base]): {endpoint!r}")
        if size < 1:
            raise ValueError(f"a pool needs at least one connection, not {size}")
        if url.scheme == "http" and ssl is not None:
            raise ValueError(f"an SSL context for a plain http endpoint: {endpoint!r}")
        self._host = url.hostname
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._ssl = (ssl or _ssl.create_default_context()) if url.scheme == "https" else None
        self._base = url.path.rstrip("/") + "/"
        # Some channels refuse a request without a User-Agent (WeChat Pay's v3 API among them).
        self._fixed_headers = f"Host: {url.netloc}\r\nUser-Agent: paysw\r\n"
        self._where = f"{self._host}:{self._port}"
        self._keepalive_s = keepalive_s
        self._max_answer = max_answer_bytes
        self._free = size
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self._closed = False

    _connection: type[_Connection] = _Connection  # what speaks on each connection (actors.frames: ISO 8583)

    async def acquire(self, wait_s: float) -> Slot:
        """A slot within ``wait_s`` seconds, else ``PoolBusy``. First come, first served."""
        if self._closed:
            raise RuntimeError(f"the HTTP pool to {self._where} is closed")
        if self._free:  # (a free slot means nobody is waiting: release hands slots to waiters first)
            self._free -= 1
            return Slot(self)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        timer = asyncio.get_running_loop().call_later(wait_s, _give_up, waiter, wait_s)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._release()  # handed a slot just as we were cancelled: hand it on
            raise
        finally:
            timer.cancel()
        return Slot(self)

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():  # (not timed out or cancelled)
                waiter.set_result(None)
                return
        self._free += 1

    async def _post(self, path: str, body: bytes, headers: Mapping[str, str], timeout: float) -> HttpAnswer:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        request = self._request(path, body, headers)
        conn = self._take_idle()
        if conn is None:
            conn = await self._connect(timeout)
        remaining = deadline - loop.time()
        if remaining <= 0:
            self._park(conn)
            raise NotSent(f"no time left to send after connecting to {self._where}")
        try:
            answer = await conn.send(request, remaining, self._max_answer)
        except BaseException:  # (cancelled too: whatever comes on it now answers nobody)
            conn.abort()
            raise
        self._park(conn)
        return answer

    def _request(self, path: str, body: bytes, headers: Mapping[str, str]) -> bytes:
        lines = [f"POST {self._base}{path.lstrip('/')} HTTP/1.1\r\n", self._fixed_headers]
        lines += [f"{name}: {value}\r\n" for name, value in headers.items()]
        lines.append(f"Content-Length: {len(body)}\r\n\r\n")
        head = "".join(lines)
        line_ends = len(lines) + 2  # a CRLF a line, two in the fixed headers, one more to end the head
        if head.count("\n") != line_ends or head.count("\r") != line_ends:
            raise ValueError("a line break inside the request path or a header: refused (header injection)")
        return head.encode() + body

    def _take_idle(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            conn.idle_timer.cancel()
            if conn.reusable:
                return conn
            # Closed while idle, which we knew before writing anything: not sent; try the next.
        return None

    def _park(self, conn: _Connection) -> None:
        if not conn.reusable or self._closed:
            conn.close()
            return
        keepalive = self._keepalive_s
        if conn.server_keepalive_s is not None:  # a second early, so the server never closes it under us
            keepalive = min(keepalive, conn.server_keepalive_s - 1)
        conn.idle_timer = asyncio.get_running_loop().call_later(keepalive, conn.close)
        self._idle.append(conn)

    async def _connect(self, timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: self._connection(self._open),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                )
        except OSError as exc:  # refused, unreachable, DNS, TLS (SSLError), timeout: nothing was sent
            detail = str(exc) or f"no connection within {timeout:.3f}s"
            raise NotSent(f"cannot connect to {self._where}: {type(exc).__name__}: {detail}") from exc
        return conn

    def close(self) -> None:
        """Close every connection; posts still waiting for an answer get ``ConnectionBroke``."""
        self._closed = True
        for conn in list(self._open):
            conn.close()
        self._idle.clear()


def _give_up(waiter: asyncio.Future[None], wait_s: float) -> None:
    if not waiter.done():
        waiter.set_exception(PoolBusy(f"no connection free within {wait_s:.3f}s"))
