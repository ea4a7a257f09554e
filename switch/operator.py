"""``paysw channel``: an operator's view of the channels of a running switch, and its controls
(through the admin endpoint, ``switch.admin``)."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request

from switch.admin_tls import scheme
from switch.config import host_port, is_loopback


class InClear(Exception):
    """A token would cross a network in clear: refused before anything is sent."""


def request(
    address: str, path: str, token: str = "", post: bool = False, body: bytes = b"", tls: ssl.SSLContext | None = None
) -> dict:
    """A JSON answer from an admin or control endpoint (POST when ``post``; over https with
    ``tls``). ``InClear`` for a token to a host off loopback over plain http. The environment's
    proxies are not used: a token goes to the endpoint, never to a proxy."""
    if token and tls is None and not is_loopback(host_port(address)[0]):
        raise InClear(f"the admin token would go to {address} in clear: use https://{address} (with --ca FILE)")
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    url = f"{scheme(tls)}://{address}{path}"
    req = urllib.request.Request(url, data=body if post else None, headers=headers, method="POST" if post else "GET")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=tls))
    with opener.open(req, timeout=70) as response:  # a restart waits for the new actor
        return json.load(response)


def error_of(exc: urllib.error.HTTPError) -> str:
    """The ``error`` of a JSON error answer, else the HTTP status."""
    try:
        return json.loads(exc.read()).get("error", exc.reason)
    except ValueError:
        return f"HTTP {exc.code} {exc.reason}"


def table(channels: dict[str, dict]) -> str:
    lines = [
        f"{'channel':10s} {'on':3s} {'circuit':9s} {'in flight':>11s} {'rate/s':>7s} {'merchant/s':>10s}  shards",
        "-" * 78,
    ]
    for name, ch in channels.items():
        shards = " ".join(
            f"{s['shard']}:{s['actor']}/{s['circuit']['state']}"
            + (f"/restarts={s['restarts']}" if s["restarts"] else "")
            for s in ch["shards"]
        )
        lines.append(
            f"{name:10s} {'yes' if ch['enabled'] else 'NO':3s} {ch['circuit']:9s}"
            f" {ch['in_flight']:>5d}/{ch['max_in_flight']:<5d} {ch['rate_per_s'] or '-':>7} "
            f"{ch['merchant_rate_per_s'] or '-':>10}  {shards}"
        )
    return "\n".join(lines)


def main(
    admin: str, action: str, channel: str, token: str = "", shard: int = 0, tls: ssl.SSLContext | None = None
) -> int:
    try:
        if action == "list":
            print(table(request(admin, "/channels", tls=tls)))
            return 0
        path = f"/channels/{channel}/{action}" + (f"?shard={shard}" if action == "crash" else "")
        answer = request(admin, path, token, post=True, tls=tls)
    except urllib.error.HTTPError as exc:
        print(f"paysw channel: {error_of(exc)}")
        return 1
    except InClear as exc:
        print(f"paysw channel: refused: {exc}")
        return 2
    except OSError as exc:
        hint = "" if tls is not None else " (if it serves https: --admin https://HOST:PORT)"
        print(f"paysw channel: cannot reach the switch's admin endpoint at {admin}: {exc}{hint}")
        return 1
    detail = f" ({answer['detail']})" if answer.get("detail") else ""
    print(f"{channel}: {action} done{detail}")
    print(table({channel: answer}))
    return 0
