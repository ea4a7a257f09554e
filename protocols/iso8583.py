"""The ``ascii`` dialect of the wire contract: framing and the field codec.

Fields are exactly pyiso8583's ``default_ascii`` spec (spec section 2). Framing is a 2-byte
big-endian length before each message (spec section 1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import iso8583
from iso8583.specs import default_ascii

SPEC = default_ascii
LENGTH_HEADER = 2
MAX_MESSAGE = 4096

Message = dict[str, str]


class Unparseable(Exception):
    """The frame is not an ISO 8583 message at all: not even its MTI can be read."""


@dataclass(frozen=True, slots=True)
class DecodeFailure:
    """The message could be read only in part. ``partial`` holds what was decoded before the
    failure (at least the MTI), so the switch can still answer ``30`` with what it echoes."""

    partial: Message
    field: str
    reason: str


def decode(frame: bytes) -> Message | DecodeFailure:
    """Decode one message (without its length header)."""
    try:
        doc, _ = iso8583.decode(frame, SPEC)
    except iso8583.DecodeError as exc:
        partial = {k: v for k, v in exc.doc_dec.items() if isinstance(v, str)}
        mti = partial.get("t", "")
        if len(mti) != 4 or not mti.isdigit():
            raise Unparseable(f"no readable MTI: {exc.msg}") from None
        # A field that failed to decode may be in the partial document half-read: drop it.
        partial.pop(exc.field, None)
        return DecodeFailure(partial=partial, field=exc.field, reason=exc.msg)
    except KeyError as exc:  # found by fuzzing: pyiso8583 on a bitmap naming a field past 128
        mti = frame[:4].decode("ascii", "replace")
        if not mti.isdigit():
            raise Unparseable(f"no readable MTI; bitmap names field {exc}") from None
        return DecodeFailure(partial={"t": mti}, field="1", reason=f"bitmap names field {exc}, not in the spec")
    mti = doc.get("t", "")
    if not mti.isdigit():
        return DecodeFailure(partial={"t": "0000"}, field="t", reason="MTI is not numeric")
    return doc


def encode(message: Message) -> bytes:
    """Encode a message and prefix its 2-byte length header."""
    raw, _ = iso8583.encode(dict(message), SPEC)
    return len(raw).to_bytes(LENGTH_HEADER, "big") + bytes(raw)


def encode_body(message: Message) -> bytes:
    """Encode a message without its length header (what the MAC is computed over)."""
    raw, _ = iso8583.encode(dict(message), SPEC)
    return bytes(raw)


MAC_FIELD = "64"
_MAC_HEX = 16


def mac_span(message: Message) -> int:
    """How many bytes of this message's encoding come before field 64's characters. Every field
    is ASCII, so a field takes its length prefix plus its characters."""
    secondary = any(f.isdigit() and int(f) > 64 for f in message)
    span = SPEC["t"]["max_len"] + SPEC["p"]["max_len"] + (SPEC["1"]["max_len"] if secondary else 0)
    for field, value in message.items():
        if field.isdigit() and 1 < int(field) < 64:
            span += SPEC[field]["len_type"] + len(value)
    return span


def mac_input(body: bytes, message: Message) -> bytes:
    """What field 64 is the MAC of (spec section 7): the whole encoded message, from the first
    byte of the MTI to the last of the last field, less the MAC's own 16 characters. Fields past
    64 (a reversal's field 90, a key change's field 70) are covered too, so none of them can be
    changed on the way."""
    span = mac_span(message)
    return body[:span] + body[span + _MAC_HEX :]


def encode_with_mac(message: Message, mac: Callable[[bytes], bytes]) -> bytes:
    """Encode a message whose field 64 is ``mac`` of ``mac_input``; with its length header."""
    raw = bytearray(iso8583.encode({**message, MAC_FIELD: "0" * _MAC_HEX}, SPEC)[0])
    span = mac_span(message)
    raw[span : span + _MAC_HEX] = mac(mac_input(bytes(raw), message)).hex().upper().encode()
    return len(raw).to_bytes(LENGTH_HEADER, "big") + bytes(raw)


class FrameReader:
    """Splits a byte stream into frames. Raises ``FrameTooLarge`` on a length over the limit."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        frames = []
        buf = self._buf
        pos = 0
        while len(buf) - pos >= LENGTH_HEADER:
            size = int.from_bytes(buf[pos : pos + LENGTH_HEADER], "big")
            if size == 0 or size > MAX_MESSAGE:
                raise FrameTooLarge(size)
            end = pos + LENGTH_HEADER + size
            if len(buf) < end:
                break
            frames.append(bytes(buf[pos + LENGTH_HEADER : end]))
            pos = end
        if pos:
            del buf[:pos]
        return frames

    @property
    def partial(self) -> bool:
        """True while part of a frame is buffered."""
        return bool(self._buf)


class FrameTooLarge(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(f"frame length {size} outside 1..{MAX_MESSAGE}")
        self.size = size


def answer_mti(request_mti: str) -> str | None:
    """The answer MTI of a request or advice MTI (0200 -> 0210), None for anything else."""
    if len(request_mti) == 4 and request_mti.isdigit() and request_mti[2] in "02":
        return request_mti[:2] + str(int(request_mti[2]) + 1) + request_mti[3]
    return None
