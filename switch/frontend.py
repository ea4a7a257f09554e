"""The TCP front end: one ``TerminalConnection`` per terminal connection.

Frames are answered as they complete (pipelining). Each connection has a bounded number of
requests under way: past it the switch stops reading that socket until answers drain, which
keeps memory flat. A frame over the size limit, one that is not ISO 8583 at all, or a partial
frame that stalls longer than the timeout closes that connection only.
"""

from __future__ import annotations

import asyncio
import logging

from protocols.iso8583 import FrameReader, FrameTooLarge
from switch.lifecycle import CloseConnection, Processor
from switch.metrics import Metrics

log = logging.getLogger("paysw.frontend")


class TerminalConnection(asyncio.Protocol):
    def __init__(self, processor: Processor, metrics: Metrics, max_in_flight: int, stall_timeout: float) -> None:
        self._processor = processor
        self._metrics = metrics
        self._max_in_flight = max_in_flight
        self._stall_timeout = stall_timeout
        self._reader = FrameReader()
        self._transport: asyncio.Transport | None = None
        self._peer = "?"
        self._in_flight = 0
        self._reading_paused = False
        self._writing_paused = False
        self._stall_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        peer = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self._metrics.connections.inc()

    def connection_lost(self, exc: Exception | None) -> None:
        self._metrics.connections.dec()
        self._cancel_stall_timer()
        self._transport = None  # transactions under way still complete and are journaled

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._reader.feed(data)
        except FrameTooLarge as exc:
            self._close("frame_size", str(exc))
            return
        for frame in frames:
            self._start(frame)
        self._cancel_stall_timer()
        if self._reader.partial and self._transport is not None:
            self._stall_timer = asyncio.get_running_loop().call_later(self._stall_timeout, self._stalled)

    def _start(self, frame: bytes) -> None:
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(self._processor.handle_frame(frame))
        task.add_done_callback(self._finished)
        self._update_reading()

    def _finished(self, task: asyncio.Task[bytes | None]) -> None:
        self._in_flight -= 1
        self._update_reading()
        if task.cancelled() or self._transport is None:
            return
        exc = task.exception()
        if isinstance(exc, CloseConnection):
            self._close("unparseable", str(exc))
        elif exc is not None:  # handle_frame answers 96 itself; this is a last resort
            log.error("frame handling failed", exc_info=exc, extra={"peer": self._peer})
            self._close("internal", type(exc).__name__)
        elif (out := task.result()) is not None:
            self._transport.write(out)

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._update_reading()

    def _update_reading(self) -> None:
        if self._transport is None:
            return
        should_pause = self._writing_paused or self._in_flight >= self._max_in_flight
        if should_pause and not self._reading_paused:
            self._transport.pause_reading()
            self._reading_paused = True
        elif not should_pause and self._reading_paused:
            self._transport.resume_reading()
            self._reading_paused = False

    def _stalled(self) -> None:
        self._close("stalled_frame", f"partial frame stalled over {self._stall_timeout:g}s")

    def _cancel_stall_timer(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def _close(self, reason: str, detail: str) -> None:
        log.warning("closing connection", extra={"peer": self._peer, "reason": reason, "detail": detail})
        self._metrics.closed.labels(reason).inc()
        if self._transport is not None:
            self._transport.close()
