"""The ``ascii`` dialect of the wire contract: framing and the field codec.

Fields are exactly pyiso8583's ``default_ascii`` spec (spec section 2). Framing is a 2-byte
big-endian length before each message (spec section 1).
"""

from __future__ import annotations

import functools
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
    doc = _decode_ascii(frame)
    return doc if doc is not None else _decode_reference(frame)


def _decode_reference(frame: bytes) -> Message | DecodeFailure:
    """``decode`` through pyiso8583: what decides every frame the fast path is not sure of, and so
    every ``DecodeFailure`` and ``Unparseable``."""
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
    raw = encode_body(message)
    return len(raw).to_bytes(LENGTH_HEADER, "big") + raw


def encode_body(message: Message) -> bytes:
    """Encode a message without its length header (what the MAC is computed over)."""
    raw = _encode_ascii(message)
    return raw if raw is not None else _encode_reference(message)


def _encode_reference(message: Message) -> bytes:
    """``encode_body`` through pyiso8583: what encodes (or refuses) every message the fast path
    is not sure of. (pyiso8583 writes the bitmaps into the dict it is given: hence the copy.)"""
    raw, _ = iso8583.encode(dict(message), SPEC)
    return bytes(raw)


# The fast codec. pyiso8583 spends most of its time on generality this dialect does not use
# (binary and BCD encodings, nibble lengths, tertiary bitmaps, the encoded twin of every field).
# Every field of SPEC is ASCII data with an ASCII length of 0 (fixed), 2 or 3 digits, so one
# pass over the frame's text does. The fast path answers only what it is sure pyiso8583 answers
# the same way and returns None on anything else, for pyiso8583 to decide (and word the error).

_MTI_LEN = 4
_BITMAP_LEN = 16
_TERTIARY = 0x80  # field 1 of the primary bitmap, field 65 of the secondary: one more bitmap


@dataclass(frozen=True, slots=True)
class _Field:
    key: str
    len_type: int
    max_len: int
    prefixes: tuple[str, ...]  # a variable field's length prefix by length; () for a fixed one


def _dialect_field(key: str) -> _Field:
    spec = SPEC[key]
    if (
        spec["data_enc"] != "ascii"
        or spec["len_enc"] != "ascii"
        or spec["len_type"] not in (0, 2, 3)
        or spec.get("len_count", "bytes") != "bytes"
        or (spec["len_type"] and spec["max_len"] >= 10 ** spec["len_type"])  # its length would not fit
    ):
        raise ValueError(f"SPEC field {key!r} is not in the ascii dialect the fast codec reads: {spec}")
    len_type = spec["len_type"]
    return _Field(key, len_type, spec["max_len"], _prefixes(len_type, spec["max_len"]) if len_type else ())


@functools.cache
def _prefixes(len_type: int, max_len: int) -> tuple[str, ...]:
    """The length prefixes of a variable field, by length: one table for the fields that share
    its size (every process that speaks ISO 8583 builds them at import, an actor's among them)."""
    return tuple(map(f"%0{len_type}d".__mod__, range(max_len + 1)))


def _framing_is_ascii() -> bool:
    return (
        SPEC["h"]["max_len"] == 0
        and SPEC["t"]["data_enc"] == "ascii"
        and all(SPEC[b]["data_enc"] == "ascii" and SPEC[b]["max_len"] == _BITMAP_LEN for b in ("p", "1"))
    )


if not _framing_is_ascii():
    raise ValueError("SPEC's header, MTI or bitmaps are not the ascii dialect the fast codec reads")

# Data fields by number: 2-64 (primary bitmap) and 66-128 (secondary); 1 and 65 are bitmaps.
_FIELDS = {n: _dialect_field(str(n)) for n in range(2, 129) if n != 65}


# The fields a bitmap byte names, by the byte's place in the bitmaps (0-7 primary, 8-15
# secondary) and its value, in ascending order: bit 7 of byte 0 is field 1.
def _fields_by_value(place: int) -> tuple[tuple[_Field, ...], ...]:
    """Each value's fields from the one with its top bit cleared, which comes before it: one
    tuple a value, not a pass over its eight bits (this runs at every import)."""
    named: list[tuple[_Field, ...]] = [()]
    for value in range(1, 256):
        bit = 7 - (value.bit_length() - 1)  # the top set bit, the lowest field number
        number = place * 8 + bit + 1
        first = (_FIELDS[number],) if number in _FIELDS else ()  # (the bitmaps are not in it)
        named.append(first + named[value & ~(0x80 >> bit)])
    return tuple(named)


_FIELDS_BY_BYTE = tuple(_fields_by_value(place) for place in range(16))


def _decode_ascii(frame: bytes) -> Message | None:
    """pyiso8583's document for a well-formed frame with a numeric MTI; None for anything else."""
    try:
        text = frame.decode("ascii")
    except (AttributeError, UnicodeDecodeError):
        return None
    mti = text[:_MTI_LEN]
    if len(mti) != _MTI_LEN or not mti.isdigit():
        return None
    pos = _MTI_LEN + _BITMAP_LEN
    primary = text[_MTI_LEN:pos]
    try:
        bitmap = bytes.fromhex(primary)  # as pyiso8583 reads it (spaces, which it skips, make it short)
    except ValueError:
        return None
    if len(bitmap) != _BITMAP_LEN // 2:
        return None
    doc = {"t": mti, "p": primary}
    if bitmap[0] & _TERTIARY:
        secondary = text[pos : pos + _BITMAP_LEN]
        pos += _BITMAP_LEN
        try:
            extension = bytes.fromhex(secondary)
        except ValueError:
            return None
        if len(extension) != _BITMAP_LEN // 2 or extension[0] & _TERTIARY:
            return None
        doc["1"] = secondary
        bitmap += extension
    size = len(text)
    for place, value in enumerate(bitmap):
        for field in _FIELDS_BY_BYTE[place][value]:
            if field.len_type:
                prefix = text[pos : pos + field.len_type]
                if not prefix.isdigit():  # ASCII text: only 0-9 (int() would take " 7" or "+7")
                    return None
                length = int(prefix)
                if length > field.max_len:
                    return None
                pos += field.len_type
            else:
                length = field.max_len
            end = pos + length
            if end > size:
                return None
            doc[field.key] = text[pos:end]
            pos = end
    return doc if pos == size else None


# Keys pyiso8583's encoder ignores (the bitmaps, which it computes) and the MTI.
_NOT_FIELDS = frozenset(("t", "p", "1", "65"))
_FIELDS_BY_KEY = {field.key: (number, field) for number, field in _FIELDS.items()}
_SECONDARY = 1 << 127  # field 1's bit in the 128-bit bitmap (field n is bit 128 - n)
_SECONDARY_FIELDS = (1 << 64) - 1  # fields 65-128


def _encode_ascii(message: Message) -> bytes | None:
    """pyiso8583's encoding of a message whose values all fit the spec; None for anything else."""
    try:
        mti = message["t"]
        if len(mti) != _MTI_LEN:  # (and a non-str MTI fails its concatenation below)
            return None
        bits = 0
        fields = []
        for key, value in message.items():
            known = _FIELDS_BY_KEY.get(key)
            if known is None:
                if key in _NOT_FIELDS:
                    continue
                return None
            number, field = known
            length = len(value)
            if field.len_type:
                if length > field.max_len:
                    return None
                fields.append((number, field.prefixes[length], value))
            else:
                if length != field.max_len:
                    return None
                fields.append((number, "", value))
            bits |= 1 << (128 - number)
        fields.sort()
        bitmap = f"{bits | _SECONDARY:032X}" if bits & _SECONDARY_FIELDS else f"{bits >> 64:016X}"
        return (mti + bitmap + "".join([prefix + value for _, prefix, value in fields])).encode("ascii")
    except (KeyError, TypeError, UnicodeEncodeError):
        return None


MAC_FIELD = "64"
_MAC_HEX = 16


_WITH_SECONDARY = frozenset(b"89ABCDEFabcdef")  # a bitmap's first hex digit with bit 1 set


def mac_span(body: bytes, message: Message) -> int:
    """How many bytes of ``body`` (``message`` encoded) come before field 64's characters. Every
    field is ASCII, so a field takes its length prefix plus its characters; the secondary bitmap
    counts when the primary's bit 1 says it is there, as sent (even empty)."""
    mti_len = SPEC["t"]["max_len"]
    # (as decoded too: pyiso8583 reads a bitmap with spaces, " 8..." among them, as hex)
    secondary = "1" in message or (len(body) > mti_len and body[mti_len] in _WITH_SECONDARY)
    span = mti_len + SPEC["p"]["max_len"] + (SPEC["1"]["max_len"] if secondary else 0)
    for field, value in message.items():
        if field.isdigit() and 1 < int(field) < 64:
            span += SPEC[field]["len_type"] + len(value)
    return span


def mac_input(body: bytes, message: Message) -> bytes:
    """What field 64 is the MAC of (spec section 7): the whole encoded message, from the first
    byte of the MTI to the last of the last field, less the MAC's own 16 characters. Fields past
    64 (a reversal's field 90, a key change's field 70) are covered too, so none of them can be
    changed on the way."""
    span = mac_span(body, message)
    return body[:span] + body[span + _MAC_HEX :]


def encode_with_mac(message: Message, mac: Callable[[bytes], bytes]) -> bytes:
    """Encode a message whose field 64 is ``mac`` of ``mac_input``; with its length header."""
    raw = bytearray(encode_body({**message, MAC_FIELD: "0" * _MAC_HEX}))
    span = mac_span(raw, message)
    raw[span : span + _MAC_HEX] = mac(mac_input(bytes(raw), message)).hex().upper().encode()
    return len(raw).to_bytes(LENGTH_HEADER, "big") + bytes(raw)


class FrameReader:
    """Splits a byte stream into frames. Raises ``FrameTooLarge`` on a length over the limit."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes, limit: int | None = None) -> list[bytes]:
        """The whole frames buffered once ``data`` is added, at most ``limit`` of them: the others
        stay buffered (``ready``) for a later call."""
        self._buf += data
        frames: list[bytes] = []
        buf = self._buf
        pos = 0
        room = len(buf) if limit is None else limit  # (a frame is at least 3 bytes)
        while len(frames) < room and len(buf) - pos >= LENGTH_HEADER:
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
        """True while part of a frame is buffered, and no whole one."""
        return bool(self._buf) and not self.ready

    @property
    def ready(self) -> bool:
        """True while a whole frame is buffered (one ``feed``'s limit left)."""
        buf = self._buf
        return len(buf) >= LENGTH_HEADER and len(buf) >= LENGTH_HEADER + int.from_bytes(buf[:LENGTH_HEADER], "big")


class FrameTooLarge(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(f"frame length {size} outside 1..{MAX_MESSAGE}")
        self.size = size


def answer_mti(request_mti: str) -> str | None:
    """The answer MTI of a request or advice MTI (0200 -> 0210), None for anything else."""
    if len(request_mti) == 4 and request_mti.isdigit() and request_mti[2] in "02":
        return request_mti[:2] + str(int(request_mti[2]) + 1) + request_mti[3]
    return None
