"""Framing and codec of the wire contract (spec sections 1 and 2)."""

from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import iso8583
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.traffic import purchase
from protocols.iso8583 import (
    MAX_MESSAGE,
    SPEC,
    DecodeFailure,
    FrameReader,
    FrameTooLarge,
    Unparseable,
    _decode_ascii,
    _decode_reference,
    _encode_ascii,
    _encode_reference,
    answer_mti,
    decode,
    encode,
    encode_body,
    encode_with_mac,
    mac_input,
)

ROOT = Path(__file__).resolve().parent.parent
PURCHASE = purchase("T0000001", "898310048990001", "134567890123456700", 1234, "000123")


def test_encode_prefixes_two_byte_big_endian_length_and_round_trips():
    frame = encode(PURCHASE)
    body = encode_body(PURCHASE)
    assert frame[:2] == len(body).to_bytes(2, "big")
    assert frame[2:] == body
    assert body.startswith(b"0200")  # no message header; MTI first, then the ASCII hex bitmap
    decoded = decode(body)
    assert {k: v for k, v in decoded.items() if k != "p"} == PURCHASE


def test_bitmap_is_sixteen_ascii_hex_characters():
    body = encode_body(PURCHASE)
    bitmap = body[4:20].decode()
    assert len(bitmap) == 16 and all(c in "0123456789ABCDEF" for c in bitmap)
    # fields 2, 3, 4, 7, 11, 12, 13, 22, 25, 41, 42, 49 set, and no secondary bitmap
    bits = bin(int(bitmap, 16))[2:].zfill(64)
    assert [i + 1 for i, b in enumerate(bits) if b == "1"] == [2, 3, 4, 7, 11, 12, 13, 22, 25, 41, 42, 49]


def test_the_mac_input_leaves_out_field_64_alone_with_an_empty_secondary_bitmap_as_sent():
    """Bit 1 set and no field past 64 (a terminal that always sends the secondary bitmap): the MAC
    covers the bitmaps as sent, and field 64, the last field here, is all it leaves out. (Counted
    from the fields alone, the secondary bitmap was missed, and a good MAC answered A0.)"""
    body = encode_with_mac(PURCHASE, lambda data: bytes(8))[2:]
    primary = int(body[4:20], 16) | 1 << 63
    sent = body[:4] + f"{primary:016X}".encode() + b"0" * 16 + body[20:]
    message = decode(sent)
    assert isinstance(message, dict) and message["64"] == "0" * 16
    assert mac_input(sent, message) == sent[:-16]
    assert mac_input(body, decode(body)) == body[:-16]


def test_frame_reader_handles_split_and_coalesced_frames():
    frame = encode(PURCHASE)
    reader = FrameReader()
    assert reader.feed(frame[:1]) == []
    assert reader.partial
    assert reader.feed(frame[1:30]) == []
    assert reader.feed(frame[30:] + frame + frame[:5]) == [frame[2:], frame[2:]]
    assert reader.partial
    assert reader.feed(frame[5:]) == [frame[2:]]
    assert not reader.partial



def test_frame_reader_gives_at_most_its_limit_and_keeps_the_others_whole():
    frame = encode(PURCHASE)
    reader = FrameReader()
    assert reader.feed(frame * 3 + frame[:5], limit=2) == [frame[2:]] * 2
    assert reader.ready and not reader.partial  # a whole frame waits: no stalled sender
    assert reader.feed(b"", limit=0) == []
    assert reader.feed(b"", limit=5) == [frame[2:]]
    assert reader.partial and not reader.ready
    assert reader.feed(frame[5:]) == [frame[2:]]


@pytest.mark.parametrize("size", [0, MAX_MESSAGE + 1, 65535])
def test_frame_reader_refuses_lengths_outside_the_limit(size):
    with pytest.raises(FrameTooLarge):
        FrameReader().feed(size.to_bytes(2, "big") + b"0")


def test_largest_message_is_accepted():
    reader = FrameReader()
    assert reader.feed(MAX_MESSAGE.to_bytes(2, "big") + b"x" * MAX_MESSAGE) == [b"x" * MAX_MESSAGE]


def test_partial_decode_keeps_the_mti_and_names_the_field():
    body = encode_body(PURCHASE)
    broken = body[:-10]  # field 49 and part of 42 cut off
    failure = decode(broken)
    assert isinstance(failure, DecodeFailure)
    assert failure.partial["t"] == "0200"
    assert failure.partial["41"] == "T0000001"
    assert failure.field == "42"
    assert "42" not in failure.partial


def test_a_bitmap_naming_fields_past_128_is_a_format_error_not_a_crash():
    # Found by the atheris run (bench/fuzz/corpus/regression-tertiary-bitmap): field 65 set in the
    # secondary bitmap made pyiso8583 look for field 129 and raise KeyError.
    frame = (ROOT / "bench/fuzz/corpus/regression-tertiary-bitmap").read_bytes()[2:]
    failure = decode(frame)
    assert isinstance(failure, DecodeFailure) and failure.partial == {"t": "0400"}
    with pytest.raises(Unparseable):
        decode(b"04X0" + frame[4:])


def test_garbage_is_unparseable():
    with pytest.raises(Unparseable):
        decode(b"\x00\x01garbage")
    with pytest.raises(Unparseable):
        decode(b"02")


@pytest.mark.parametrize(
    ("request_mti", "answer"),
    [
        ("0200", "0210"),
        ("0100", "0110"),
        ("0400", "0410"),
        ("0800", "0810"),
        ("0220", "0230"),
        ("0210", None),
        ("0110", None),
        ("abcd", None),
    ],
)
def test_answer_mti(request_mti, answer):
    assert answer_mti(request_mti) == answer


# The fast codec against pyiso8583 (the reference): the same bytes, the same documents, and on
# anything irregular the same failure.

PRIMARY_FIELDS = [str(n) for n in range(2, 65)]
ALL_FIELDS = PRIMARY_FIELDS + [str(n) for n in range(66, 129)]
ASCII = st.characters(max_codepoint=127)
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)


def field_value(key: str) -> st.SearchStrategy[str]:
    spec = SPEC[key]
    fixed = spec["len_type"] == 0
    return st.text(ASCII, min_size=spec["max_len"] if fixed else 0, max_size=spec["max_len"])


@st.composite
def valid_messages(draw: st.DrawFn) -> dict[str, str]:
    """Any fields of the spec (in any order, with or without the secondary bitmap), any values
    that fit them, and sometimes a stale bitmap, which the encoder recomputes."""
    keys = draw(st.lists(st.sampled_from(draw(st.sampled_from([PRIMARY_FIELDS, ALL_FIELDS]))), unique=True))
    message = {"t": draw(st.text("0123456789", min_size=4, max_size=4))}
    message.update({key: draw(field_value(key)) for key in keys})
    if draw(st.booleans()):
        message["p"] = "FFFFFFFFFFFFFFFF"
    return message


@PROPERTY
@given(valid_messages())
def test_fast_encode_and_decode_give_what_pyiso8583_gives(message):
    body = _encode_ascii(message)
    assert body is not None, "the fast encoder passed a valid message on"
    assert body == bytes(iso8583.encode(dict(message), SPEC)[0])
    doc = _decode_ascii(body)
    assert doc is not None, "the fast decoder passed a valid frame on"
    assert list(doc.items()) == list(iso8583.decode(body, SPEC)[0].items())  # order too
    assert decode(body) == doc and encode_body(message) == body


def outcome(operation: Callable[[], object]) -> tuple[str, object]:
    """What an operation gave, or the exception it raised, in comparable form."""
    try:
        result = operation()
    except Exception as exc:  # the reference's exceptions are what is compared
        return type(exc).__name__, str(exc)
    return "result", list(result.items()) if isinstance(result, dict) else result


def pieces(message: dict[str, str]) -> list[bytes]:
    """A valid message's frame cut where a parser looks: MTI, bitmaps, each length and each value."""
    frame = _encode_reference(message)
    numbers = sorted(int(key) for key in message if key.isdigit())
    widths = [4, 16] + [16] * any(n > 64 for n in numbers)
    for n in numbers:
        widths += [SPEC[str(n)]["len_type"], len(message[str(n)])]
    cuts = [0]
    for width in widths:
        cuts.append(cuts[-1] + width)
    return [frame[start:end] for start, end in pairwise(cuts)]


@st.composite
def hostile_frames(draw: st.DrawFn) -> bytes:
    """Arbitrary bytes, and valid frames with pieces replaced, dropped, repeated, cut short or
    extended, a bit flipped, a bitmap naming one field more or less (or a tertiary bitmap), or
    what int() and bytes.fromhex() would still read: " 7", "+7", "1_0", a bitmap in spaces."""
    if draw(st.integers(0, 3)) == 0:
        return draw(st.binary(max_size=300))
    parts = pieces(draw(valid_messages()))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(parts) - 1))
        part = parts[at]
        mutations = ["hex", "bitmap", "sign", "spaces", "drop", "repeat", "flip", "cut", "extend", "non-ascii"]
        mutation = draw(st.sampled_from(mutations))
        if mutation == "bitmap":  # field 1 or 65 (a bitmap more), or any
            field = draw(st.one_of(st.just(65), st.just(1), st.integers(1, 128)))
            at, bit = (1, 64 - field) if field <= 64 else (2, 128 - field)
            if at < len(parts) and len(parts[at]) == 16 and all(c in b"0123456789ABCDEF" for c in parts[at]):
                parts[at] = b"%016X" % (int(parts[at], 16) ^ (1 << bit))
        elif mutation == "hex":  # a bitmap naming other fields (lower case, past 128), a length that lies
            parts[at] = draw(st.text("0123456789ABCDEFabcdef", min_size=len(part), max_size=len(part))).encode()
        elif mutation == "sign" and part:
            parts[at] = draw(st.sampled_from([b" ", b"+", b"-"])) + part[1:]
            if len(part) == 3 and draw(st.booleans()):
                parts[at] = part[:1] + b"_" + part[2:]
        elif mutation == "spaces" and len(part) > 2:
            parts[at] = b" " + part[1:-1] + b" "
        elif mutation == "drop":
            del parts[at]
        elif mutation == "repeat":
            parts.insert(at, part)
        elif mutation == "flip" and part:
            where = draw(st.integers(0, len(part) - 1))
            parts[at] = part[:where] + bytes([part[where] ^ (1 << draw(st.integers(0, 7)))]) + part[where + 1 :]
        elif mutation == "cut":
            parts[at:] = [part[: draw(st.integers(0, max(len(part) - 1, 0)))]]
        elif mutation == "extend":
            parts.append(draw(st.binary(min_size=1, max_size=4)))
        elif mutation == "non-ascii" and part:
            parts[at] = part[:-1] + b"\xe9"
        if not parts:
            break
    return b"".join(parts)


@settings(PROPERTY, max_examples=1000)
@given(hostile_frames())
def test_decode_of_any_bytes_is_what_pyiso8583_alone_gives(frame):
    assert outcome(lambda: decode(frame)) == outcome(lambda: _decode_reference(frame))


@pytest.mark.parametrize(
    "frame",
    [
        b"0200 80000000000000 0000000000000001013ABCDEFGHIJKLM",  # bytes.fromhex skips the spaces
        b"0200C00000000000000080000000000000001400000000000000",  # field 65: a tertiary bitmap
        b"02004000000000000000+7abcdefg",  # int() reads "+7"
        b"02004000000000000000 7abcdefg",
        b"0200400000000000000007abcdefgh",  # one byte more
        b"0200400000000000000007abcdef",  # one byte less
        b"0200400000000000000020abcdefghijklmnopqrst",  # over field 2's maximum of 19
        b"02x04000000000000000007abcdefg",  # no MTI
    ],
)
def test_decode_of_frames_pyiso8583_reads_its_own_way_is_what_it_gives(frame):
    assert outcome(lambda: decode(frame)) == outcome(lambda: _decode_reference(frame))


@st.composite
def irregular_messages(draw: st.DrawFn) -> dict:
    """A valid message with one thing wrong (or, by chance, nothing)."""
    message: dict = draw(valid_messages())
    key = draw(st.sampled_from(ALL_FIELDS))
    spec = SPEC[key]
    wrong = draw(
        st.sampled_from(
            [
                "a" * (spec["max_len"] - 1),  # short (of a fixed field)
                "a" * (spec["max_len"] + 1),  # long
                "\u00e9" * min(spec["max_len"], 3),  # not ASCII
                b"0" * spec["max_len"],
                int("1" * min(spec["max_len"], 9) or "0"),
                None,
            ]
        )
    )
    change = draw(st.sampled_from(["value", "key", "mti"]))
    if change == "value":
        message[key] = wrong
    elif change == "key":
        message[draw(st.sampled_from(["0", "1", "65", "129", "193", "02", "h", "x", "\u00b2", 7]))] = "0" * 16
    else:
        message["t"] = draw(st.sampled_from(["020", "02000", b"0200", "02\u00e90", 200]))
    return message


@PROPERTY
@given(irregular_messages())
def test_encode_of_any_message_is_what_pyiso8583_alone_gives(message):
    assert outcome(lambda: encode_body(message)) == outcome(lambda: _encode_reference(message))
