"""The channel actor: one instance per channel shard, with its own signing threads (if any), HTTP
connection pool and in-flight limit, so one channel's trouble stays in its own actors.

Payments come in over the actor's link (``actors.link``), in batches; each result goes back as
soon as its call completes, so a slow payment never holds back the others of its batch.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import ray

from actors.frames import FramePool
from actors.http import AnswerTimeout, HttpPool, NoAnswer, NotSent, PoolBusy
from actors.link import LinkAddress, LinkServer
from actors.settings import ActorSetup, LinkTls
from hsm import open_hsm
from hsm.algorithms import signs_in_thread
from protocols import response_codes as rc
from protocols.channels import channel_of
from protocols.channels.base import Crypto, HttpAnswer, Link, Notice, StatementRefused, not_sent, unknown
from protocols.masking import scrub
from protocols.messages import ChannelRequest, ChannelResult
from protocols.statements import MAX_DOWNLOAD_BYTES

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger("paysw.actor")


class ChannelWorker:
    """The actor's logic, free of Ray so that it reads (and can be driven) as plain asyncio."""

    def __init__(self, name: str, setup: ActorSetup, shard: int) -> None:
        self.name = name
        self.shard = shard
        self._config = config = setup.settings
        self._channel = channel_of(setup.kind)
        self._account = account = setup.account
        keys = setup.keys
        hsm = open_hsm(keys.hsm, keys.base_dir, demo=keys.demo)
        self._crypto = Crypto(
            hsm.signer(keys.sign, account.keys.sign_algorithm),
            hsm.verifier(keys.verify, account.keys.verify_algorithm),
            hsm.sm4_sealer(keys.seal) if keys.seal is not None else None,
        )
        self._threads = (
            ThreadPoolExecutor(config.sign_threads, thread_name_prefix=f"{name}{shard}-sign")
            if config.sign_threads and signs_in_thread(account.keys.sign_algorithm)
            else None
        )
        self._timeout = config.timeout_ms / 1000
        self._queue_wait = config.queue_wait_ms / 1000
        self._http: HttpPool | None = None  # opened on the actor's event loop
        self._session: aiohttp.ClientSession | None = None  # statement downloads only
        self._in_flight = 0
        self._calls = 0
        self._notices = 0  # notifications read (each a signature checked)

    def _pool(self) -> HttpPool:
        if self._http is None:
            pool = FramePool if self._channel.wire == "iso8583" else HttpPool
            self._http = pool(self._config.endpoint, self._config.pool_size)
        return self._http

    async def call(self, req: ChannelRequest) -> ChannelResult:
        """One channel call. Never raises: every failure becomes a result that says whether the
        request may have reached the channel (UNKNOWN) or certainly did not (DECLINED, 91)."""
        if self._in_flight >= self._config.max_in_flight:
            return not_sent(req, "BUSY", "channel shard at its in-flight limit")
        remaining = req.deadline - time.time()
        if remaining <= 0:
            return not_sent(req, "DEADLINE", "deadline passed before the call")
        self._in_flight += 1
        self._calls += 1
        try:
            # A connection of our own before anything is signed or sent, so a request never waits
            # (and times out) inside the HTTP pool, where a timeout would look like a lost answer.
            # The wait is bounded: calls queue behind a stuck channel only briefly.
            slot = await self._pool().acquire(min(remaining, self._queue_wait))
        except BaseException as exc:
            self._in_flight -= 1
            if isinstance(exc, PoolBusy):
                return not_sent(req, "BUSY", "no connection free in time")
            raise
        sent = False
        try:
            flow = self._channel.flows[req.op]
            if self._threads is not None:  # keeps the event loop (and the other calls) moving meanwhile
                call = await asyncio.get_running_loop().run_in_executor(
                    self._threads, flow.build, req, self._account, self._crypto, time.time()
                )
            else:
                call = flow.build(req, self._account, self._crypto, time.time())
            if req.deadline <= time.time():
                return not_sent(req, "DEADLINE", "deadline passed before the call")
            # Once sent, the answer is awaited up to the channel's timeout even past the terminal's
            # deadline: the front end has answered by then, and a late answer is still worth keeping.
            timeout = self._timeout
            headers = {"Content-Type": call.content_type, **call.headers}
            sent = True  # from here on the channel may have the request
            try:
                answer = await slot.post(call.path, call.body, headers, timeout)
            except NotSent as exc:
                sent = False
                return not_sent(req, "CONNECT", f"cannot connect: {exc}")
            except AnswerTimeout:
                return unknown(req, "TIMEOUT", f"no answer within {timeout:.3f}s")
            except NoAnswer as exc:
                return unknown(req, "IOERROR", f"connection broke: {type(exc).__name__}")
            return flow.parse(req, answer, self._crypto)
        except Exception:
            log.exception("channel call failed inside the switch", extra={"channel": self.name})
            if sent:
                return unknown(req, "INTERNAL", "switch error after sending")
            return not_sent(req, "INTERNAL", "switch error", iso_code=rc.SYSTEM_MALFUNCTION)
        finally:
            self._in_flight -= 1
            slot.release()

    async def statement(self, day: dt.date) -> bytes:
        """The channel's statement file of ``day``, through its download API (signed and
        verified like every call). Raises ``StatementRefused`` with what the channel answered."""
        # Imported here, not at the top: the import (default SSL contexts among it) takes some
        # 0.2 s of CPU, at every actor's start if made there. Made here, it holds this actor's
        # loop that long once in its life, at its first statement (hourly reconciliation's).
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(base_url=self._config.endpoint.rstrip("/") + "/")
        session = self._session
        download = self._channel.statement
        if download is None:
            raise StatementRefused(f"channel {self.name} ({self._channel.kind}) keeps no statement for the switch")
        call = download.build(day, self._account, self._crypto, time.time())
        timeout = aiohttp.ClientTimeout(total=max(self._timeout, 60.0))
        headers = {"Content-Type": call.content_type, **call.headers}
        async with session.post(call.path.lstrip("/"), data=call.body, headers=headers, timeout=timeout) as response:
            answer = HttpAnswer(response.status, await _capped(response), dict(response.headers))
        got = download.parse(answer, self._crypto)
        if isinstance(got, Link):  # the answer says where to fetch the file (https: ``fetchable``)
            async with (
                aiohttp.ClientSession() as plain,
                plain.get(got.url, timeout=timeout, allow_redirects=False) as response,  # not elsewhere
            ):
                if response.status != 200:
                    raise StatementRefused(f"download link answered HTTP {response.status}")
                return await _capped(response)
        return got

    def read_notice(self, body: bytes, headers: dict[str, str]) -> Notice | str:
        """A notification the channel posted, verified with the account's keys: the ``Notice``,
        or why it is refused (it is then answered the channel's own refusal)."""
        self._notices += 1
        reader = self._channel.notice
        if reader is None:
            return f"channel {self.name} sends no notifications"
        try:
            return reader.read(body, headers, self._account, self._crypto)
        except Exception as exc:  # anyone may post one: what cannot be read is refused, not raised
            return f"unreadable: {type(exc).__name__}"

    def stats(self) -> dict[str, int | str]:
        return {
            "channel": self.name,
            "shard": self.shard,
            "in_flight": self._in_flight,
            "calls": self._calls,
            "notices": self._notices,
            "pid": os.getpid(),
        }

    async def close(self) -> None:
        if self._http is not None:
            self._http.close()
        if self._session is not None:
            await self._session.close()
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)


async def _capped(response: aiohttp.ClientResponse) -> bytes:
    """A statement download's body, refused past ``MAX_DOWNLOAD_BYTES`` (read as it comes: a
    length header may lie)."""
    body = bytearray()
    async for chunk in response.content.iter_chunked(1 << 16):
        body += chunk
        if len(body) > MAX_DOWNLOAD_BYTES:
            raise StatementRefused(f"a statement download over {MAX_DOWNLOAD_BYTES} bytes")
    return bytes(body)


class _ScrubbingFormatter(logging.Formatter):
    """This process holds full payment codes: its log lines and tracebacks are scrubbed too."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


@ray.remote(num_cpus=0, max_task_retries=0, max_concurrency=1000)
class ChannelActor:
    """Ray shell around ``ChannelWorker``. ``max_task_retries=0``: a call that moves money is
    never replayed by Ray; an actor that dies leaves its calls UNKNOWN for the resolver (and is
    restarted, see ``actors.runtime.channel_actor``)."""

    def __init__(self, name: str, setup: ActorSetup, shard: int, link_tls: LinkTls | None = None) -> None:
        handler = logging.StreamHandler()
        handler.setFormatter(_ScrubbingFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
        self._worker = ChannelWorker(name, setup, shard)
        self._link = LinkServer(self._worker.call, link_tls)

    async def open_link(self) -> LinkAddress:
        """Where a front end connects to send this actor payments (``actors.link``)."""
        return await self._link.open(ray.util.get_node_ip_address())

    async def stats(self) -> dict[str, int | str]:
        return self._worker.stats()

    async def ping(self) -> str:
        return "pong"

    async def statement(self, day: dt.date) -> bytes:
        return await self._worker.statement(day)

    async def read_notice(self, body: bytes, headers: dict[str, str]) -> Notice | str:
        return self._worker.read_notice(body, headers)

    def crash(self) -> None:
        """Incident drill (``paysw channel crash``): exit as a crashed process would; Ray restarts it."""
        os._exit(70)
