"""A legacy switch stand-in (test equipment): the switch the new one replaces, as gray routing
(``[[routing.gray]]``) passes it the purchases of merchants not yet cut over, over the ISO 8583
link of ``protocols.channels.legacy``. It checks each request's MAC, keeps its orders in memory,
and answers as an old switch would:

- a purchase (0200, 000000): 00 with an authorisation id, unless its amount ends in 51 (51,
  insufficient funds) or 05 (05); the same order again gets the same answer;
- a status inquiry (0100, 330000): 00 paid, its refusal if declined (05 once reversed), 25 unknown;
- a reversal (0400): 00 reversed; 25 when it never had the purchase, which it then refuses (05)
  should it come after (docs/iso8583.md section 8);
- a refund (0200, 200000): 00 while what is refunded stays within the purchase, else 13;
- a bad MAC: A0, and the order is not touched.

``python -m bench.legacy_switch --listen 127.0.0.1:9591 --key FILE`` runs it until SIGTERM;
``--ledger FILE`` writes each purchase it approved, one JSON line each (merchant, terminal,
order, amount)."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from hsm.algorithms import signer
from protocols.channels.legacy.flows import INQUIRY_CODE, ORDER, ORIGINAL, PURCHASE_CODE, REFUND_CODE, mac_ok, sealed
from protocols.iso8583 import DecodeFailure, FrameReader, FrameTooLarge, Message, Unparseable, decode


@dataclass
class Order:
    amount_fen: int
    code: str
    auth_id: str
    reversed: bool = False
    refunded_fen: int = 0


class LegacySwitch:
    def __init__(self, key: bytes, ledger: TextIO | None = None) -> None:
        self._sign = signer("hmac-sha256", key)
        self._orders: dict[str, Order] = {}
        self._refunds: dict[str, str] = {}  # refund number -> its answer code
        self._ledger = ledger
        self._auth = 0

    def answer(self, body: bytes) -> bytes | None:
        """The answer to one message (None: not a message; the connection closes)."""
        try:
            message = decode(body)
        except Unparseable:
            return None
        if isinstance(message, DecodeFailure):
            return self._reply(message.partial, "30")
        if not mac_ok(body, message, self._sign):
            return self._reply(message, "A0")
        mti, code = message.get("t"), message.get("3")
        if mti == "0200" and code == PURCHASE_CODE:
            return self._purchase(message)
        if mti == "0200" and code == REFUND_CODE:
            return self._refund(message)
        if mti == "0100" and code == INQUIRY_CODE:
            order = self._orders.get(message.get(ORDER, ""))
            if order is None:
                return self._reply(message, "25")
            return self._reply(message, "05" if order.reversed else order.code, order.auth_id)
        if mti == "0400":
            number = message.get(ORDER, "")
            order = self._orders.get(number)
            if order is None:  # kept: the purchase, should it come after, is refused
                self._orders[number] = Order(int(message.get("4", "0")), "05", "", reversed=True)
                return self._reply(message, "25")
            order.reversed = True
            return self._reply(message, "00")
        return self._reply(message, "12")

    def _purchase(self, message: Message) -> bytes:
        number = message.get(ORDER, "")
        order = self._orders.get(number)
        if order is None:
            amount = int(message.get("4", "0"))
            code = {"51": "51", "05": "05"}.get(f"{amount % 100:02d}", "00")
            self._auth += 1
            order = self._orders[number] = Order(amount, code, f"{self._auth:06d}" if code == "00" else "")
            if code == "00" and self._ledger is not None:
                seen = {"order": number, "amount_fen": amount, "terminal": message.get("41", "").strip(),
                        "merchant": message.get("42", "").strip()}  # fmt: skip
                self._ledger.write(json.dumps(seen) + "\n")
                self._ledger.flush()
        return self._reply(message, "05" if order.reversed else order.code, order.auth_id)

    def _refund(self, message: Message) -> bytes:
        number = message.get(ORDER, "")
        if number not in self._refunds:
            original = self._orders.get(message.get(ORIGINAL, ""))
            amount = int(message.get("4", "0"))
            if original is None or original.code != "00" or original.reversed:  # nothing paid to refund
                self._refunds[number] = "25"
            elif original.refunded_fen + amount > original.amount_fen:
                self._refunds[number] = "13"
            else:
                original.refunded_fen += amount
                self._refunds[number] = "00"
        return self._reply(message, self._refunds[number])

    def _reply(self, message: Message, code: str, auth_id: str = "") -> bytes:
        mti = message.get("t", "0200")
        answer = {k: v for k, v in message.items() if k in ("3", "4", "11", "37", "41", "42", ORDER)}
        answer |= {"t": f"{mti[:2]}{int(mti[2]) + 1}{mti[3]}", "39": code}
        if auth_id:
            answer["38"] = auth_id
        return sealed(answer, self._sign)

    async def serve(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(self._connection, host, port)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frames = FrameReader()
        try:
            while data := await reader.read(65536):
                for frame in frames.feed(data):
                    answer = self.answer(frame)
                    if answer is None:
                        return
                    writer.write(len(answer).to_bytes(2, "big") + answer)
                await writer.drain()
        except (ConnectionError, FrameTooLarge):
            pass
        finally:
            writer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.legacy_switch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="host:port")
    parser.add_argument("--key", required=True, type=Path, help="the MAC key shared with the switch (hex file)")
    parser.add_argument("--ledger", type=Path, help="append each approved purchase here as a JSON line")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    ledger = args.ledger.open("a") if args.ledger else None
    legacy = LegacySwitch(args.key.read_bytes().strip(), ledger)

    async def run() -> None:
        server = await legacy.serve(host, int(port))
        print(f"legacy switch stand-in on {args.listen}", flush=True)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()
        server.close()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
