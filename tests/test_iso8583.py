"""Framing and codec of the wire contract (spec sections 1 and 2)."""

from pathlib import Path

import pytest

from bench.traffic import purchase
from protocols.iso8583 import (
    MAX_MESSAGE,
    DecodeFailure,
    FrameReader,
    FrameTooLarge,
    Unparseable,
    answer_mti,
    decode,
    encode,
    encode_body,
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
