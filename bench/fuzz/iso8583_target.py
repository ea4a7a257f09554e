"""Coverage-guided fuzzing (atheris) of what the front end does with bytes off the wire before
any journal work: framing, ISO 8583 decoding, classification, validation, the MAC span, and the
answer built and encoded for whatever parsed.

Properties checked on every input: nothing raises but the two refusals the front end turns into
a closed connection (``FrameTooLarge``, ``Unparseable``); every request that parses gets an answer
with a response code of the spec, which encodes and decodes again; the MAC span never runs past
the frame.

    python -m bench.fuzz.iso8583_target -runs=200000 -max_total_time=180 bench/fuzz/corpus  # CI, on a copy
    python -m bench.fuzz.iso8583_target -max_total_time=3600 bench/fuzz/corpus  # a longer run
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["protocols", "iso8583", "switch.answers"]):
    from protocols import response_codes as rc
    from protocols.iso8583 import (
        DecodeFailure,
        FrameReader,
        FrameTooLarge,
        Unparseable,
        answer_mti,
        decode,
        encode,
        mac_span,
    )
    from protocols.validation import Rejection, classify, validate
    from switch.answers import CARRIES_RRN, answer


def one_input(data: bytes) -> None:
    reader = FrameReader()
    try:
        frames = reader.feed(data)
    except FrameTooLarge:
        return
    for frame in frames:
        try:
            decoded = decode(frame)
        except Unparseable:
            continue
        message = decoded.partial if isinstance(decoded, DecodeFailure) else decoded
        mti = answer_mti(message["t"])
        if mti is None:
            continue  # not a request: the front end ignores it
        if isinstance(decoded, DecodeFailure):
            code = rc.FORMAT_ERROR
        else:
            if "64" in message:
                assert mac_span(frame, message) + 16 <= len(frame), "MAC span past the frame"
            kind = classify(message)
            rejection = kind if isinstance(kind, Rejection) else validate(kind, message)
            code = rejection.code if rejection is not None else rc.APPROVED
        assert code in rc.ALL, code
        out = answer(message, code, rrn="000000000001" if mti in CARRIES_RRN else "")
        encoded = encode(out)
        again = decode(encoded[2:])
        assert isinstance(again, dict) and again["39"] == code


def main(argv: list[str]) -> None:
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
