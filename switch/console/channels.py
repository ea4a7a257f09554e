"""The channels as the console sees and controls them: through the switch's admin endpoints
(``switch.admin``), each front end's (or each ``paysw run --workers`` supervisor's), with the
switch's admin token, so that an action reaches every front end and the switch keeps one way in."""

from __future__ import annotations

import ssl
from typing import Any

import aiohttp

from switch.admin_tls import scheme

TIMEOUT = aiohttp.ClientTimeout(total=15)


class Channels:
    ACTIONS = ("disable", "enable", "close-circuit")

    def __init__(self, endpoints: list[str], token: str, tls: ssl.SSLContext | None = None) -> None:
        self._endpoints = endpoints
        self._scheme = scheme(tls)
        self._token = token
        self._tls = tls
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self._tls if self._tls is not None else True)
            self._session = aiohttp.ClientSession(timeout=TIMEOUT, connector=connector)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def status(self) -> list[tuple[str, dict[str, Any] | str]]:
        """Each endpoint's channels (its ``/channels``), or why it could not be read."""
        out: list[tuple[str, dict[str, Any] | str]] = []
        for endpoint in self._endpoints:
            try:
                async with self._client().get(f"{self._scheme}://{endpoint}/channels") as response:
                    response.raise_for_status()
                    out.append((endpoint, await response.json()))
            except (aiohttp.ClientError, TimeoutError) as exc:
                out.append((endpoint, f"unreachable: {type(exc).__name__}: {exc}"))
        return out

    async def act(self, name: str, action: str) -> tuple[Any, Any, str]:
        """``action`` on channel ``name`` at every endpoint: its state before and after (per
        endpoint), and ``ok`` or what failed where."""
        if not self._token:
            return None, None, "refused: the console has no admin token (the switch's admin_token_file)"
        before = {e: _summary(s, name) for e, s in await self.status()}
        failed = []
        for endpoint in self._endpoints:
            url = f"{self._scheme}://{endpoint}/channels/{name}/{action}"
            try:
                async with self._client().post(url, headers={"Authorization": f"Bearer {self._token}"}) as response:
                    if response.status != 200:
                        failed.append(f"{endpoint}: HTTP {response.status} {(await response.text())[:200]}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                failed.append(f"{endpoint}: {type(exc).__name__}: {exc}")
        after = {e: _summary(s, name) for e, s in await self.status()}
        return before, after, "ok" if not failed else "failed at " + "; ".join(failed)


def _summary(status: dict[str, Any] | str, name: str) -> Any:
    if isinstance(status, str) or name not in status:
        return status if isinstance(status, str) else "no such channel"
    channel = status[name]
    return {"enabled": channel["enabled"], "circuit": channel["circuit"], "in_flight": channel["in_flight"]}
