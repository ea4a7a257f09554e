"""Whose lease is a claimed transaction under: a resolver's claims carry the backend pid of a
PostgreSQL session its journal holds open for nothing else (``txn.leased_by``). While that
session lives, the lease stands until it lapses; once the session is gone (its front end
stopped, or was killed and the kernel closed its sockets) any resolver takes the transaction
back at once, rather than after the lease (``Journal.take_back_abandoned``)."""

from __future__ import annotations

import asyncio

import asyncpg


class LeaseHolder:
    """The journal's lease session, opened at its first use and again whenever it was lost
    (claims made meanwhile under the old pid are taken back by others: the lapse of a stuck
    resolver's lease, sooner). The resolver's sweep runs on it, so it is never idle for long
    (a server's ``idle_session_timeout`` would end it) and a lost one is found within a sweep."""

    def __init__(self, url: str, server_settings: dict[str, str]) -> None:
        self._url = url
        self._settings = server_settings
        self._conn: asyncpg.Connection | None = None
        self._opening = asyncio.Lock()

    async def pid(self) -> int:
        """The backend pid the journal's claims carry: its session is open when this returns."""
        return (await self._session()).get_server_pid()

    async def execute(self, sql: str, *args: object) -> str:
        """Run ``sql`` on the lease session (one caller at a time: the resolver's sweep)."""
        return await (await self._session()).execute(sql, *args, timeout=30)

    async def _session(self) -> asyncpg.Connection:
        async with self._opening:
            if self._conn is None or self._conn.is_closed():
                self._conn = await asyncpg.connect(self._url, timeout=10, server_settings=self._settings)
            return self._conn

    async def close(self) -> None:
        """End the session: this journal's leases are anyone's to take back."""
        if self._conn is not None:
            await self._conn.close(timeout=5)
            self._conn = None
