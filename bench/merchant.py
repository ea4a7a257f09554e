"""A merchant's side of the merchant API, for the demo and the tests: a client that signs its
requests as ``switch.merchant.signing`` says, and a receiver of the switch's notifications that
verifies their signature, keeps what it received, answers ``SUCCESS`` (or, on demand, stays
down or slow), and can be run alone (``python -m bench.merchant --key FILE --listen ADDR``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiohttp import web

from hsm import algorithms
from switch.merchant.signing import SIGN_TYPES, request_signing_input, signing_input


def signed(
    method: str, path: str, params: dict[str, Any], key: bytes, sign_type: str = "HMAC-SHA256"
) -> dict[str, Any]:
    """``params`` of the request ``method path`` with a fresh timestamp and nonce, signed with the
    merchant's key."""
    params = {**params, "timestamp": int(time.time() * 1000), "nonce": secrets.token_hex(16), "sign_type": sign_type}
    params["sign"] = algorithms.signer(SIGN_TYPES[sign_type], key)(request_signing_input(method, path, params))
    return params


class MerchantClient:
    """The merchant's calls to the switch's merchant API (blocking: for the demo and tests)."""

    def __init__(self, base_url: str, merchant_id: str, key: bytes) -> None:
        self.base_url, self.merchant_id, self.key = base_url.rstrip("/"), merchant_id, key

    def create_qr(self, order_no: str, amount_fen: int, subject: str = "Demo order", **extra: Any) -> tuple[int, dict]:
        params = {"merchant_id": self.merchant_id, "order_no": order_no, "scene": "qr", "amount_fen": amount_fen,
                  "subject": subject, **extra}  # fmt: skip
        return self.post("/v1/orders", signed("POST", "/v1/orders", params, self.key))

    def pay_code(self, order_no: str, amount_fen: int, auth_code: str, subject: str = "Demo order") -> tuple[int, dict]:
        params = {"merchant_id": self.merchant_id, "order_no": order_no, "scene": "code", "amount_fen": amount_fen,
                  "subject": subject, "auth_code": auth_code}  # fmt: skip
        return self.post("/v1/orders", signed("POST", "/v1/orders", params, self.key))

    def refund(self, order_no: str, refund_no: str, amount_fen: int) -> tuple[int, dict]:
        path = f"/v1/orders/{order_no}/refunds"
        params = signed(
            "POST", path,
            {"merchant_id": self.merchant_id, "order_no": order_no, "refund_no": refund_no, "amount_fen": amount_fen},
            self.key,
        )  # fmt: skip
        del params["order_no"]  # named by the path, and signed as order_no
        return self.post(path, params)

    def get_refund(self, order_no: str, refund_no: str) -> tuple[int, dict]:
        path = f"/v1/orders/{order_no}/refunds/{refund_no}"
        params = signed(
            "GET", path, {"merchant_id": self.merchant_id, "order_no": order_no, "refund_no": refund_no}, self.key
        )
        query = "&".join(f"{k}={v}" for k, v in params.items() if k not in ("order_no", "refund_no"))
        return self.call("GET", f"{path}?{query}", None)

    def get(self, order_no: str) -> tuple[int, dict]:
        path = f"/v1/orders/{order_no}"
        params = signed("GET", path, {"merchant_id": self.merchant_id, "order_no": order_no}, self.key)
        query = "&".join(f"{k}={v}" for k, v in params.items() if k != "order_no")
        return self.call("GET", f"{path}?{query}", None)

    def close(self, order_no: str) -> tuple[int, dict]:
        path = f"/v1/orders/{order_no}/close"
        params = signed("POST", path, {"merchant_id": self.merchant_id, "order_no": order_no}, self.key)
        del params["order_no"]  # named by the path, and signed as order_no
        return self.post(path, params)

    def post(self, path: str, params: dict[str, Any]) -> tuple[int, dict]:
        return self.call("POST", path, json.dumps(params).encode())

    def call(self, method: str, path: str, body: bytes | None) -> tuple[int, dict]:
        request = urllib.request.Request(
            self.base_url + path, data=body, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")


class Receiver:
    """The merchant's notification endpoint: ``received`` holds each verified body, in order of
    arrival (duplicates included); ``down`` answers 503, ``slow_s`` answers that much later."""

    def __init__(self, key: bytes) -> None:
        self._verify = algorithms.verifier("hmac-sha256", key)
        self.received: list[dict[str, Any]] = []
        self.arrivals: list[float] = []  # epoch seconds each of ``received`` arrived
        self.refused = 0
        self.down = False
        self.slow_s = 0.0
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int) -> None:
        app = web.Application()
        app.router.add_post("/notify", self._notify)
        app.router.add_get("/_received", self._received)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _received(self, _: web.Request) -> web.Response:
        return web.json_response({"received": self.received, "arrivals": self.arrivals})

    async def _notify(self, request: web.Request) -> web.Response:
        if self.slow_s:
            await asyncio.sleep(self.slow_s)
        if self.down:
            return web.Response(status=503, text="down")
        body = json.loads(await request.read())
        if not self._verify(signing_input(body), body.get("sign", "")):
            self.refused += 1
            return web.Response(status=400, text="FAIL: signature")
        self.received.append(body)
        self.arrivals.append(time.time())
        return web.Response(text="SUCCESS")

    def paid(self) -> list[dict[str, Any]]:
        """The payments credited (purchases APPROVED), first notification of each."""
        seen: dict[str, dict[str, Any]] = {}
        for body in self.received:
            if body["txn_type"] == "purchase" and body["state"] == "APPROVED":
                seen.setdefault(body["notify_id"], body)
        return list(seen.values())


@contextlib.contextmanager
def receiver_thread(key: bytes, host: str, port: int) -> Iterator[Receiver]:
    """A ``Receiver`` serving on an event loop of its own, in a thread: the merchant is another
    party, and its work stays off the loop of whoever runs it (the demo's switch, a test)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="merchant-receiver", daemon=True)
    thread.start()
    receiver = Receiver(key)
    try:
        asyncio.run_coroutine_threadsafe(receiver.start(host, port), loop).result(10)
        yield receiver
    finally:
        asyncio.run_coroutine_threadsafe(receiver.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def describe(body: dict[str, Any]) -> str:
    """One line for a notification received, as a till speaker would say it."""
    return (
        f"notified: {body['state']} {body['txn_type']} order {body['order_no'] or '-'} rrn {body['rrn']} "
        f"{body['amount_fen'] / 100:.2f} yuan via {body['channel']}"
    )


async def _serve(key: bytes, listen: str, quiet: bool) -> None:
    receiver = Receiver(key)
    host, _, port = listen.rpartition(":")
    await receiver.start(host, int(port))
    print(f"merchant receiver on http://{listen}/notify (what it received: GET /_received)", flush=True)
    shown = 0
    while True:
        await asyncio.sleep(0.2)
        for body in [] if quiet else receiver.received[shown:]:
            print(describe(body), flush=True)
        shown = len(receiver.received)


def main() -> None:
    parser = argparse.ArgumentParser(description="A merchant's receiver of the switch's notifications (demo, tests)")
    parser.add_argument("--key", required=True, help="the merchant's API key file (hex)")
    parser.add_argument("--listen", default="127.0.0.1:9590", help="address to serve /notify on")
    parser.add_argument("--quiet", action="store_true", help="print nothing for each notification")
    args = parser.parse_args()
    asyncio.run(_serve(Path(args.key).read_bytes(), args.listen, args.quiet))


if __name__ == "__main__":
    main()
