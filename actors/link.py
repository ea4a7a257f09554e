"""The data path between a front end and a channel actor: a TCP connection the actor listens on.

Ray places, supervises and restarts the actors and carries their control calls (stats, statement
downloads, drills); the payments themselves travel on this link. Why, measured on the 2-core
machine by ``paysw bench link`` (``bench/results/link.json``): a batch of one costs about 1.1 ms
of CPU as a Ray call and 2.4 ms as a streaming Ray call, 35 us on the link; a batch of 64 with
its results streamed back as they come costs 44 ms through Ray, 0.5 ms on the link. On the link
a batch of requests is one frame, and the results of the calls that complete in the same event-loop turn
go back as one frame, so a slow payment never holds back the others.

Frames: a 4-byte big-endian length, then MessagePack (``protocols.messages``). The first frame
from the front end is the token the actor handed out through Ray: the port is reachable on the
node's address (127.0.0.1 for a local Ray), and only a holder of the actor's handle may send it
payments. Across nodes the link is TLS (``LinkTls``): the actor accepts only front ends with a
certificate from the links' CA, and the front end only the actor whose own certificate Ray
announced with its address (so another holder of a certificate of that CA cannot pose as it);
the token check stays.

Nothing here retries: a request whose connection breaks before its result arrives may have
reached the channel, and the front end records it UNKNOWN (the resolver finds out).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import logging
import secrets
import ssl
import struct
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, cast

import msgspec

from actors.settings import LinkTls
from protocols.messages import BATCH_ENCODER, REQUESTS_DECODER, RESULTS_DECODER

log = logging.getLogger("paysw.link")

LENGTH = struct.Struct(">I")
MAX_FRAME = 16 * 2**20  # a batch of a few hundred requests is tens of kilobytes
TOKEN_WAIT_S = 5.0  # a connection that has not shown the token by then is dropped


class LinkAddress(NamedTuple):
    host: str
    port: int
    token: bytes
    cert_sha256: bytes = b""  # over TLS: the actor's own certificate, as it told Ray


class WrongActor(ConnectionError):
    """The TLS peer is not the actor whose address Ray gave (a certificate of the links' CA all
    the same: another actor's, or a front end's posing as one)."""


class FrameError(Exception):
    """The peer sent something that is not a frame of this protocol."""


class FrameReader:
    """Cuts a byte stream into frames of at most ``limit`` bytes."""

    def __init__(self, limit: int = MAX_FRAME) -> None:
        self.limit = limit
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The frames ``data`` completes, one at a time (``limit`` may change between them)."""
        self._buffer += data
        start = 0
        try:
            while len(self._buffer) - start >= LENGTH.size:
                (size,) = LENGTH.unpack_from(self._buffer, start)
                if size > self.limit:
                    raise FrameError(f"frame of {size} bytes")
                end = start + LENGTH.size + size
                if len(self._buffer) < end:
                    return
                payload = bytes(self._buffer[start + LENGTH.size : end])
                start = end
                yield payload
        finally:  # what was read goes in one move, however many frames one read held
            del self._buffer[:start]


def frame(payload: bytes) -> bytes:
    return LENGTH.pack(len(payload)) + payload


def _tls_context(purpose: int, tls: LinkTls) -> ssl.SSLContext:
    context = ssl.SSLContext(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(tls.cert, tls.key)
    context.load_verify_locations(tls.ca)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def server_tls(tls: LinkTls) -> ssl.SSLContext:
    """The actor's side: a front end must show a certificate signed by the links' CA."""
    return _tls_context(ssl.PROTOCOL_TLS_SERVER, tls)


def client_tls(tls: LinkTls) -> ssl.SSLContext:
    """The front end's side: the actor must show a certificate signed by the links' CA. Its
    name is not checked (Ray places actors on any node); ``ActorLink.connect`` checks instead
    that it is the very certificate the actor announced through Ray."""
    context = _tls_context(ssl.PROTOCOL_TLS_CLIENT, tls)
    context.check_hostname = False
    return context


def certificate_sha256(tls: LinkTls) -> bytes:
    """The SHA-256 of the (first) certificate in ``tls.cert``, as a TLS peer presents it."""
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(Path(tls.cert).read_text())).digest()


# -- the actor's side ---------------------------------------------------------------------------


class LinkServer:
    """Listens for front ends and runs ``call`` for every request they send (a coroutine function,
    whose calls run side by side, or a plain one, answered at once unless it returns None: a
    message told, not asked); over TLS when ``tls`` is given."""

    def __init__(
        self,
        call: Callable[[Any], Any],
        tls: LinkTls | None = None,
        requests: msgspec.msgpack.Decoder = REQUESTS_DECODER,
    ) -> None:
        self._call = call
        self._requests = requests  # what a batch holds (channel calls by default; risk.messages)
        self._token = secrets.token_bytes(32)
        self._tls = server_tls(tls) if tls is not None else None
        self._cert_sha256 = certificate_sha256(tls) if tls is not None else b""
        self._server: asyncio.Server | None = None
        self._address: LinkAddress | None = None

    async def open(self, host: str) -> LinkAddress:
        """Start listening on ``host`` (once); where and with which token to connect."""
        if host in ("", "0.0.0.0", "::"):
            raise ValueError(f"a link listens on its node's own address, not on {host!r} (every interface)")
        if self._address is None:
            self._server = await asyncio.get_running_loop().create_server(
                lambda: _ActorSide(self._call, self._token, self._requests),
                host,
                0,
                ssl=self._tls,
                ssl_handshake_timeout=TOKEN_WAIT_S if self._tls is not None else None,
            )
            port = self._server.sockets[0].getsockname()[1]
            self._address = LinkAddress(host, port, self._token, self._cert_sha256)
        return self._address

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()


class _ActorSide(asyncio.Protocol):
    def __init__(self, call: Callable[[Any], Any], token: bytes, requests: msgspec.msgpack.Decoder) -> None:
        self._call = call
        self._token = token
        self._requests = requests
        self._reader = FrameReader(limit=len(token))  # a stranger cannot make us buffer much
        self._transport: asyncio.Transport | None = None
        self._trusted = False
        self._done: list[Any] = []
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # (uvloop's are not subclasses)
        asyncio.get_running_loop().call_later(TOKEN_WAIT_S, self._drop_if_untrusted)

    def _drop_if_untrusted(self) -> None:
        """A stranger holding connections open without a word gets none of them kept."""
        if not self._trusted and self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        try:
            for payload in self._reader.feed(data):
                if not self._trusted:
                    if not secrets.compare_digest(payload, self._token):
                        raise FrameError("wrong token")
                    self._trusted = True
                    self._reader.limit = MAX_FRAME
                    continue
                for request in self._requests.decode(payload):
                    result = self._call(request)
                    if inspect.isawaitable(result):  # a channel call: it runs alongside the others
                        task = asyncio.ensure_future(self._run(result))
                        self._tasks.add(task)
                        task.add_done_callback(self._tasks.discard)
                    elif result is not None:  # answered at once (the risk actors' counters)
                        self._done_one(result)
        except Exception as exc:  # a peer that does not speak the protocol: drop it
            log.warning("link closed: bad input", extra={"error": f"{type(exc).__name__}: {exc}"})
            self._transport.close()

    async def _run(self, call: Awaitable[Any]) -> None:
        self._done_one(await call)

    def _done_one(self, result: Any) -> None:
        self._done.append(result)
        if not self._flush_scheduled:  # results of one loop turn leave as one frame
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        done, self._done = self._done, []
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(frame(BATCH_ENCODER.encode(done)))

    def connection_lost(self, exc: Exception | None) -> None:
        # Calls under way go on to their end at the channel; their results have nowhere to go,
        # and the front end has recorded them UNKNOWN.
        self._transport = None


# -- the front end's side -----------------------------------------------------------------------


class ActorLink(asyncio.Protocol):
    """A front end's connection to one actor. ``on_results`` gets each frame of results;
    ``on_lost`` is called once when the connection ends, for whatever reason."""

    def __init__(
        self,
        on_results: Callable[[list[Any]], None],
        on_lost: Callable[[], None],
        results: msgspec.msgpack.Decoder = RESULTS_DECODER,
    ) -> None:
        self._on_results = on_results
        self._on_lost = on_lost
        self._results = results  # what a batch of answers holds (channel results by default)
        self._reader = FrameReader()
        self._transport: asyncio.Transport | None = None

    @classmethod
    async def connect(
        cls,
        address: LinkAddress,
        on_results: Callable[[list[Any]], None],
        on_lost: Callable[[], None],
        tls: ssl.SSLContext | None = None,
        results: msgspec.msgpack.Decoder = RESULTS_DECODER,
    ) -> ActorLink:
        """A link to the actor at ``address``; over TLS with ``tls`` (``client_tls``), to that
        actor's own certificate only (``WrongActor`` otherwise, before the token is sent)."""
        loop = asyncio.get_running_loop()
        transport, link = await loop.create_connection(
            lambda: cls(on_results, on_lost, results), address.host, address.port, ssl=tls
        )
        if tls is not None:
            peer = transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
            if not address.cert_sha256 or not hmac.compare_digest(hashlib.sha256(peer).digest(), address.cert_sha256):
                transport.abort()
                raise WrongActor(f"the link at {address.host}:{address.port} shows another certificate")
        assert link._transport is not None
        link._transport.write(frame(address.token))
        return link

    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def send(self, batch: list[Any]) -> None:
        assert self._transport is not None
        self._transport.write(frame(BATCH_ENCODER.encode(batch)))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # (uvloop's are not subclasses)

    def data_received(self, data: bytes) -> None:
        try:
            for payload in self._reader.feed(data):
                self._on_results(self._results.decode(payload))
        except Exception as exc:
            log.error("link to actor broken: bad frame", extra={"error": type(exc).__name__})
            assert self._transport is not None
            self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._on_lost()
