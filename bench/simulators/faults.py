"""Faults a simulator can be told to show, at run time, to rehearse a channel's incidents:

- ``hang``: take requests and never answer (released, unanswered, when the fault is cleared);
- ``latency_ms``: answer this much later (added to the channel's own latency);
- ``error_rate``: answer this share of requests with HTTP 500, without acting on them;
- ``refuse``: stop listening (connections refused); open connections are closed on their next request;
- ``reset``: accept, then close the connection without answering;
- ``partial``: act on the request, then cut the answer off in the middle of its body;
- ``unread``: refuse every request unread with the channel's own "not processed" error, acting on
  nothing (as when the channel no longer accepts our signature);
- ``notice_drop``: lose the first this many attempts of each QR order's notification on the way
  (more than its schedule has: the notification never arrives);
- ``notice_twice``: send each notification attempt twice.

The notification faults are those in force when the order is paid.

Set with ``POST /_sim/fault`` on the simulator's control address (a JSON object of these fields;
it replaces the previous fault), read with ``GET /_sim/fault``, or with ``paysw sim fault``.
"""

from __future__ import annotations

import re
from typing import Annotated

import msgspec
from msgspec import Meta, Struct


class Fault(Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    hang: bool = False
    latency_ms: Annotated[float, Meta(ge=0)] = 0.0
    error_rate: Annotated[float, Meta(ge=0, le=1)] = 0.0
    refuse: bool = False
    reset: bool = False
    partial: bool = False
    unread: bool = False
    notice_drop: Annotated[int, Meta(ge=0)] = 0
    notice_twice: bool = False

    def describe(self) -> str:
        active = [name for name, value in msgspec.structs.asdict(self).items() if value]
        valued = ("latency_ms", "error_rate", "notice_drop")
        return ", ".join(f"{n}={getattr(self, n)}" if n in valued else n for n in active) or "none"


NO_FAULT = Fault()
FAULT_DECODER = msgspec.json.Decoder(Fault)


def duration_ms(text: str) -> float:
    """``2s``, ``250ms``, ``1.5s`` or a bare number of milliseconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*", text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (e.g. 2s, 250ms)")
    value = float(match.group(1))
    return value * 1000 if match.group(2) == "s" else value
