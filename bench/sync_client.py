"""A gevent ISO 8583 client of the wire contract, for locust (whose users are greenlets).

Pipelined like ``bench.client.IsoClient``: a reader greenlet hands each answer to the request
waiting for it (terminal + STAN + answer MTI), so a user may keep several requests out at once.
"""

from __future__ import annotations

import socket

import gevent
from gevent.event import AsyncResult

from protocols.iso8583 import LENGTH_HEADER, Message, answer_mti, decode, encode


class SyncIsoClient:
    def __init__(self, host: str, port: int, timeout: float = 60.0) -> None:
        self._sock = socket.create_connection((host, port), timeout=10)
        self._sock.settimeout(None)
        self._timeout = timeout
        self._waiting: dict[tuple[str, str, str], AsyncResult] = {}
        self._reader = gevent.spawn(self._read_loop)

    def request(self, message: Message) -> Message:
        mti = answer_mti(message["t"])
        assert mti is not None, "only requests get answers"
        key = (message.get("41", ""), message.get("11", ""), mti)
        waiter = self._waiting[key] = AsyncResult()
        try:
            self._sock.sendall(encode(message))
            return waiter.get(timeout=self._timeout)
        finally:
            self._waiting.pop(key, None)

    def _read_exactly(self, size: int) -> bytes:
        chunks, left = [], size
        while left:
            chunk = self._sock.recv(left)
            if not chunk:
                raise ConnectionError("connection closed by the switch")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def _read_loop(self) -> None:
        try:
            while True:
                length = int.from_bytes(self._read_exactly(LENGTH_HEADER), "big")
                message = decode(self._read_exactly(length))
                if not isinstance(message, dict):
                    continue  # not ours to judge here: the request times out and is reported
                waiter = self._waiting.get((message.get("41", ""), message.get("11", ""), message["t"]))
                if waiter is not None:
                    waiter.set(message)
        except (OSError, ConnectionError) as exc:
            for waiter in self._waiting.values():
                waiter.set_exception(ConnectionError(str(exc)))

    def close(self) -> None:
        self._reader.kill()
        self._sock.close()
