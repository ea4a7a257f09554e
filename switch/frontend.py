"""The TCP front end: one ``TerminalConnection`` per terminal connection.

Frames are answered as they complete (pipelining). Each connection has a bounded number of
requests under way: past it the switch stops reading that socket until answers drain, which
keeps memory flat. A frame over the size limit, one that is not ISO 8583 at all, or a partial
frame that stalls longer than the timeout closes that connection only.

A peer cannot take the port for itself: connections past the caps (in total, and per peer
address) are closed as soon as they are accepted, a connection that sends no complete frame for
``idle_timeout_s`` is closed, and the warnings bad input causes are rate-limited per peer.

On SIGTERM the front end drains (``TerminalServer.drain``): it stops accepting, stops reading
every connection (a frame not read was never received: its terminal sends it again, elsewhere),
and closes each once every frame it read has its answer written; the terminal then sees the end of
the stream after its last answer. The close is lingering: the end is sent first and what the
terminal still sends is read and dropped until it hangs up, because closing a socket with unread
data sends a reset, which can destroy answers still on their way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter
from typing import NamedTuple

from protocols.iso8583 import FrameReader, FrameTooLarge
from switch.config import SwitchSection, host_port
from switch.intake import Intake
from switch.lifecycle import CloseConnection, Processor
from switch.lograte import RateLimitedLog
from switch.metrics import Metrics
from switch.shedding import peer_of

log = logging.getLogger("paysw.frontend")

WARN_INTERVAL_S = 60.0  # one warning per peer and reason this often, with a count of those held back
LINGER_S = 2.0  # draining: after its last answer and the end, a terminal has this long to hang up
_warnings = RateLimitedLog(WARN_INTERVAL_S)


class ConnectionLimits:
    """Terminal connections open now, in total and per peer, against their caps. A peer is as the
    admission counts it (``peer_of``): an address, an IPv6 one by its /64, so that a network
    cannot take a connection cap per address of its own."""

    def __init__(self, total: int, per_peer: int) -> None:
        self._total = total
        self._per_peer = per_peer
        self._open = 0
        self._by_peer: Counter[str] = Counter()

    def admit(self, host: str) -> str | None:
        """Count one more connection from ``host``; or, over a cap, the name of that cap."""
        peer = peer_of(host)
        if self._open >= self._total:
            return "max_connections"
        if self._by_peer[peer] >= self._per_peer:
            return "max_connections_per_peer"
        self._open += 1
        self._by_peer[peer] += 1
        return None

    def release(self, host: str) -> None:
        peer = peer_of(host)
        self._open -= 1
        self._by_peer[peer] -= 1
        if not self._by_peer[peer]:
            del self._by_peer[peer]


class Drained(NamedTuple):
    connections: int  # closed by the drain (or already closed by their terminal, with requests under way)
    finished: int  # requests under way at its start that ran to their end
    left: int  # requests still under way at the bound: the resolver's, as after a crash


class LiveConnections:
    """The terminal connections not done with: open, or with requests under way (a request whose
    terminal hung up still runs to its end and is journaled)."""

    def __init__(self) -> None:
        self._live: set[TerminalConnection] = set()
        self._none_left: asyncio.Event | None = None  # while draining

    def add(self, connection: TerminalConnection) -> None:
        self._live.add(connection)
        if self._none_left is not None:  # accepted just before the listener closed: never read
            connection.drain()

    def done(self, connection: TerminalConnection) -> None:
        self._live.discard(connection)
        if self._none_left is not None and not self._live:
            self._none_left.set()

    async def drain(self, timeout: float) -> Drained:
        """Drain every connection; at ``timeout`` (seconds), abort those left."""
        self._none_left = asyncio.Event()
        live = list(self._live)
        under_way = sum(c.in_flight for c in live)
        for connection in live:
            connection.drain()
        if self._live:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._none_left.wait(), timeout)
        left = sum(c.in_flight for c in self._live)
        for connection in list(self._live):
            connection.abort()  # no answer is written from now on: a late one could contradict the resolver
        return Drained(len(live), under_way - left, left)


class TerminalServer:
    """The terminals' listening socket and the connections it accepted."""

    def __init__(self, server: asyncio.Server, connections: LiveConnections) -> None:
        self._server = server
        self._connections = connections

    def stop_accepting(self) -> None:
        """Close the listening socket (again: a no-op); connections accepted stay open."""
        self._server.close()

    async def drain(self, timeout: float) -> Drained:
        """Accept no more; answer every request read and close each connection (``LiveConnections.drain``)."""
        self.stop_accepting()
        return await self._connections.drain(timeout)


async def serve_terminals(
    processor: Processor, metrics: Metrics, settings: SwitchSection, reuse_port: bool = False
) -> TerminalServer:
    """The terminals' port (``settings.listen``), open. With ``reuse_port`` (``paysw run
    --workers``), other processes of this user may listen on the same port (SO_REUSEPORT) and the
    kernel spreads new connections among them."""
    limits = ConnectionLimits(settings.max_connections, settings.max_connections_per_peer)
    connections, intake = LiveConnections(), Intake()
    host, port = host_port(settings.listen)
    server = await asyncio.get_running_loop().create_server(
        lambda: TerminalConnection(processor, metrics, settings, limits, connections, intake),
        host,
        port,
        backlog=1024,
        reuse_address=True,
        reuse_port=reuse_port,
    )
    return TerminalServer(server, connections)


class TerminalConnection(asyncio.Protocol):
    def __init__(
        self,
        processor: Processor,
        metrics: Metrics,
        settings: SwitchSection,
        limits: ConnectionLimits,
        connections: LiveConnections,
        intake: Intake,
    ) -> None:
        self._processor = processor
        self._intake = intake
        self._metrics = metrics
        self._max_in_flight = settings.max_in_flight_per_connection
        self._stall_timeout = settings.stalled_frame_timeout_s
        self._idle_timeout = settings.idle_timeout_s
        self._limits = limits
        self._connections = connections
        self._reader = FrameReader()
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._host = "?"
        self._peer = "?"
        self._share = "?"  # whose share of the admission its requests take (switch.shedding.peer_of)
        self._admitted = False
        self._in_flight = 0
        self._reading_paused = False
        self._writing_paused = False
        self._stall_timer: asyncio.TimerHandle | None = None
        self._last_frame = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._answers: list[bytes] = []
        # No new frames: what arrives is dropped, never received, and so are whole frames held in
        # the reader past max_in_flight_per_connection (the terminal sends them again, elsewhere).
        self._draining = False
        self._holding = False  # draining, with answers still owed: reading paused

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        peer = transport.get_extra_info("peername")
        self._host, self._peer = (peer[0], f"{peer[0]}:{peer[1]}") if peer else ("?", "?")
        self._share = peer_of(self._host)
        over = self._limits.admit(self._host)
        if over is not None:
            self._close(over, "over the cap on connections")
            return
        self._admitted = True
        self._metrics.connections.inc()
        self._last_frame = self._loop.time()
        self._idle_timer = self._loop.call_later(self._idle_timeout, self._check_idle)
        self._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._admitted:
            self._limits.release(self._host)
            self._metrics.connections.dec()
        self._cancel_stall_timer()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._transport = None  # transactions under way still complete and are journaled
        if not self._in_flight:
            self._connections.done(self)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def drain(self) -> None:
        """Read no more frames, and close once every frame read has its answer written."""
        self._draining = self._holding = True
        self._cancel_stall_timer()  # a partial frame will never be completed: it was not received
        self._update_reading()
        self._end_if_answered()

    def _connected(self) -> bool:
        """Whether an answer written now would still go out (``Processor.handle_frame``)."""
        return self._transport is not None and not self._transport.is_closing()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _end_if_answered(self) -> None:
        """Draining, once nothing is under way or waiting to be written: send the end after the
        answers, then read and drop until the terminal hangs up (or ``LINGER_S`` passes)."""
        if not self._holding or self._in_flight or self._answers or self._transport is None:
            return
        if self._transport.is_closing():  # closed for a reason of its own: connection_lost follows
            return
        self._holding = False
        self._transport.write_eof()
        self._update_reading()
        self._loop.call_later(LINGER_S, self._linger_over)

    def _linger_over(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        if self._draining:
            return
        self._take(data)

    def _take(self, data: bytes) -> None:
        """Start the frames ``data`` completes, as many as the connection may have under way: the
        others wait in the reader for places to free (one read may hold thousands of small ones),
        their time counted from their start (only a peer with more under way than that waits)."""
        try:
            frames = self._reader.feed(data, max(0, self._max_in_flight - self._in_flight))
        except FrameTooLarge as exc:
            self._close("frame_size", str(exc))
            return
        if frames:
            self._last_frame = self._loop.time()
            arrived = time.monotonic()  # the frames' wait in the event loop counts (deadline, admission)
        for frame in frames:
            self._in_flight += 1
            overload = self._processor.overloaded(self._share)
            if overload is not None:  # shed, after the transactions under way (switch.intake)
                self._intake.later(functools.partial(self._start, frame, arrived, overload))
            else:
                self._start(frame, arrived)
        if frames:
            self._update_reading()
        self._cancel_stall_timer()
        if self._reader.partial and self._transport is not None:
            self._stall_timer = asyncio.get_running_loop().call_later(self._stall_timeout, self._stalled)

    def _start(self, frame: bytes, arrived: float, overload: str | None = None) -> None:
        task = self._loop.create_task(
            self._processor.handle_frame(frame, arrived, overload, self._share, self._connected)
        )
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[bytes | None]) -> None:
        self._in_flight -= 1
        self._take_held()
        self._update_reading()
        if self._transport is None:
            if not self._in_flight:
                self._connections.done(self)
            return
        if task.cancelled():  # the loop is shutting down
            return
        exc = task.exception()
        if isinstance(exc, CloseConnection):
            self._close("unparseable", str(exc))
        elif exc is not None:  # handle_frame answers 96 itself; this is a last resort
            log.error("frame handling failed", exc_info=exc, extra={"peer": self._peer})
            self._close("internal", type(exc).__name__)
        elif (out := task.result()) is not None:
            if not self._answers:  # the answers of one loop turn leave in one write
                self._loop.call_soon(self._write_answers)
            self._answers.append(out)
        if self._holding:
            self._end_if_answered()

    def _write_answers(self) -> None:
        answers, self._answers = self._answers, []
        if self._transport is not None:
            self._transport.writelines(answers)
            if self._holding:
                self._end_if_answered()

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._take_held()
        self._update_reading()

    def _take_held(self) -> None:
        """Start frames held in the reader as places free, while the peer reads its answers."""
        if self._reader.ready and not (self._writing_paused or self._draining) and self._transport is not None:
            self._take(b"")

    def _update_reading(self) -> None:
        if self._transport is None:
            return
        should_pause = self._writing_paused or self._in_flight >= self._max_in_flight or self._holding
        if should_pause and not self._reading_paused:
            self._transport.pause_reading()
            self._reading_paused = True
        elif not should_pause and self._reading_paused:
            self._transport.resume_reading()
            self._reading_paused = False

    def _check_idle(self) -> None:
        """Closes the connection once it has gone ``idle_timeout_s`` without a complete frame
        (one timer a connection, moved on lazily: frames only note their time)."""
        self._idle_timer = None
        if self._transport is None:
            return
        quiet_for = self._loop.time() - self._last_frame
        if quiet_for >= self._idle_timeout and not self._in_flight:
            self._close("idle", f"no complete frame for {self._idle_timeout:g}s")
            return
        wait = self._idle_timeout - quiet_for if quiet_for < self._idle_timeout else self._idle_timeout
        self._idle_timer = self._loop.call_later(wait, self._check_idle)

    def _stalled(self) -> None:
        self._close("stalled_frame", f"partial frame stalled over {self._stall_timeout:g}s")

    def _cancel_stall_timer(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def _close(self, reason: str, detail: str) -> None:
        _warnings.warn(log, (reason, self._share), "closing connection", peer=self._peer, reason=reason, detail=detail)
        self._metrics.closed.labels(reason).inc()
        if self._transport is not None:
            self._transport.close()
