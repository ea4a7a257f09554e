"""An asyncio ISO 8583 client of the wire contract, for the demo, the tests and benchmarks.

Pipelined: any number of requests may be outstanding; answers are matched by terminal (41) +
STAN (11) + answer MTI, as spec section 1 says clients do. Terminals whose keys it is given
(``keys``) MAC their requests once signed on, and the MAC of their answers is checked: answers
that fail are counted in ``bad_macs``.
"""

from __future__ import annotations

import asyncio
import contextlib

from bench.terminal import TerminalKeys
from protocols.iso8583 import LENGTH_HEADER, Message, answer_mti, decode, encode

AnswerKey = tuple[str, str, str]


class IsoClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.keys: dict[str, TerminalKeys] = {}
        self.bad_macs = 0
        self._reader = reader
        self._writer = writer
        self._waiting: dict[AnswerKey, asyncio.Future[Message]] = {}
        self.unmatched: asyncio.Queue[Message] = asyncio.Queue()
        self.closed = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def connect(cls, host: str, port: int, source: str | None = None) -> IsoClient:
        """``source``: the local address to connect from (another peer of the switch's, such as
        127.0.0.2 on loopback); by default the system's choice."""
        reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0) if source else None)
        return cls(reader, writer)

    async def request(self, message: Message, timeout: float = 60.0) -> Message:
        mti = answer_mti(message["t"])
        assert mti is not None
        key = (message.get("41", ""), message.get("11", ""), mti)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiting[key] = future
        keys = self.keys.get(message.get("41", ""))
        self._writer.write(keys.seal(message) if keys is not None and keys.needs_mac(message) else encode(message))
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self._waiting.pop(key, None)

    async def send_raw(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def next_unmatched(self, timeout: float = 10.0) -> Message:
        return await asyncio.wait_for(self.unmatched.get(), timeout)

    async def _read_loop(self) -> None:
        try:
            while True:
                header = await self._reader.readexactly(LENGTH_HEADER)
                body = await self._reader.readexactly(int.from_bytes(header, "big"))
                message = decode(body)
                assert isinstance(message, dict), "the switch sent an undecodable answer"
                key = (message.get("41", ""), message.get("11", ""), message["t"])
                keys = self.keys.get(key[0])
                if "64" in message and (keys is None or keys.mak is None or not keys.answer_mac_ok(body, message)):
                    self.bad_macs += 1
                future = self._waiting.get(key)
                if future is not None and not future.done():
                    future.set_result(message)
                else:
                    self.unmatched.put_nowait(message)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed.set()
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(ConnectionError("connection closed by the switch"))
                    future.exception()  # the requester sees it; no "never retrieved" warning if it left

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task
