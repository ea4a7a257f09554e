"""The throughput baseline: a bare uvloop server that answers ISO 8583 purchases with ``00``,
through the switch's own framing, codec and answer building, and nothing else (no validation,
journal, actors or channels). What the switch reaches is measured against what this reaches in
the same run on the same machine.

    python -m bench.baseline_server --listen 127.0.0.1:8590
"""

from __future__ import annotations

import argparse
import asyncio
import itertools

import uvloop

from protocols.iso8583 import FrameReader, decode, encode
from switch.answers import answer
from switch.config import host_port


class BaselineConnection(asyncio.Protocol):
    rrns = itertools.count(1)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._reader = FrameReader()

    def data_received(self, data: bytes) -> None:
        out = []
        for frame in self._reader.feed(data):
            message = decode(frame)
            if isinstance(message, dict):
                out.append(encode(answer(message, "00", rrn=f"{next(self.rrns):012d}")))
        self._transport.write(b"".join(out))  # type: ignore[attr-defined]


async def serve(listen: str) -> None:
    host, port = host_port(listen)
    server = await asyncio.get_running_loop().create_server(BaselineConnection, host, port, reuse_address=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:8590")
    uvloop.run(serve(parser.parse_args().listen))


if __name__ == "__main__":
    main()
