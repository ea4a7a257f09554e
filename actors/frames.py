"""The channel actors' pool for a switch reached over ISO 8583 (a channel of wire ``iso8583``,
such as a legacy switch upstream): the HTTP pool's contract and its money-minded errors
(``actors.http``), on connections that carry ISO 8583 frames, a 2-byte big-endian length and the
message (spec section 1), one request at a time. The answer comes back as an ``HttpAnswer`` of
status 200 whose body is the message, so a channel's flows stay the same pure build and parse."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from urllib.parse import urlsplit

from actors.http import BadAnswer, HttpPool, _Connection
from protocols.channels.base import HttpAnswer
from protocols.iso8583 import LENGTH_HEADER

_MAX_FRAME = (1 << (8 * LENGTH_HEADER)) - 1


class _FrameConnection(_Connection):
    def __init__(self, open_set: set[_Connection]) -> None:
        super().__init__(open_set)
        self._buffer = bytearray()

    def send(self, request: bytes, timeout: float, limit: int) -> asyncio.Future[HttpAnswer]:
        self._buffer.clear()
        return super().send(request, timeout, limit)

    def data_received(self, data: bytes) -> None:
        if self._answer is None:  # a switch speaking out of turn is not trusted with the next request
            self.abort()
            return
        buffer = self._buffer
        buffer += data
        if len(buffer) > self._limit:
            self._fail(BadAnswer(f"answer larger than {self._limit} bytes"))
            return
        if len(buffer) < LENGTH_HEADER:
            return
        end = LENGTH_HEADER + int.from_bytes(buffer[:LENGTH_HEADER], "big")
        if len(buffer) > end:
            self._fail(BadAnswer("more than the one answer asked for"))
        elif len(buffer) == end:
            self._resolve(HttpAnswer(200, bytes(buffer[LENGTH_HEADER:])), None)

    def eof_received(self) -> bool | None:
        return None  # the connection closes: an answer under way is a broken connection


class FramePool(HttpPool):
    """Up to ``size`` connections to ``tcp://host:port`` (or ``tls://host:port``: TLS, the host
    name checked against the system's trusted CAs unless ``ssl`` says otherwise)."""

    _connection = _FrameConnection

    def __init__(self, endpoint: str, size: int, **options) -> None:
        url = urlsplit(endpoint)
        if url.scheme not in ("tcp", "tls") or not url.hostname or not url.port or url.path.strip("/") or url.query:
            raise ValueError(f"not an ISO 8583 endpoint (tcp://host:port or tls://host:port): {endpoint!r}")
        super().__init__(f"{'https' if url.scheme == 'tls' else 'http'}://{url.netloc}", size, **options)

    def _request(self, path: str, body: bytes, headers: Mapping[str, str]) -> bytes:
        if len(body) > _MAX_FRAME:
            raise ValueError(f"a message of {len(body)} bytes does not fit a frame")
        return len(body).to_bytes(LENGTH_HEADER, "big") + body
