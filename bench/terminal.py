"""A POS terminal's side of spec section 7, for the tests, the demo and load tools: the terminal
holds its master key (loaded out of band) and the PIK and MAK it receives at sign-on, MACs its
requests, checks the MAC of answers and encrypts PINs under its PIK."""

from __future__ import annotations

import hmac

from hsm import algorithms
from protocols.iso8583 import MAC_FIELD, Message, encode_with_mac, mac_input
from protocols.validation import carries_mac, is_sign_on


class TerminalKeys:
    def __init__(self, terminal_id: str, tmk: bytes, mac_algorithm: str = "x9.19") -> None:
        self.terminal_id = terminal_id
        self._tmk = tmk
        self.mac_algorithm = mac_algorithm
        self.pik: bytes | None = None
        self.mak: bytes | None = None

    def take_working_keys(self, field62: str) -> None:
        """Field 62 of a sign-on answer: PIK and MAK under the TMK, each with its check value.
        Raises ``ValueError`` when a check value does not match (the keys are then not taken)."""
        if len(field62) != 80:
            raise ValueError(f"field 62 of a sign-on answer has 80 hex characters, not {len(field62)}")
        keys = []
        for part in (field62[:40], field62[40:]):
            key = algorithms.tdes_ecb_decrypt(self._tmk, bytes.fromhex(part[:32]))
            if algorithms.check_value(key) != part[32:].upper():
                raise ValueError("a working key's check value does not match")
            keys.append(key)
        self.pik, self.mak = keys

    def mac(self, data: bytes) -> bytes:
        assert self.mak is not None, "sign on first"
        return algorithms.mac(self.mac_algorithm, self.mak, data)

    def seal(self, message: Message) -> bytes:
        """The request's frame with field 64: a sign-on's under the TMK's sign-on variant, any
        other's under the MAK."""
        if is_sign_on(message):
            key = algorithms.sign_on_variant(self._tmk)
            return encode_with_mac(message, lambda data: algorithms.mac(self.mac_algorithm, key, data))
        return encode_with_mac(message, self.mac)

    def needs_mac(self, message: Message) -> bool:
        return carries_mac(message) and (self.mak is not None or is_sign_on(message))

    def answer_mac_ok(self, body: bytes, answer: Message) -> bool:
        """Whether an answer's field 64 is the MAC of the answer (``mac_input``)."""
        given = answer.get(MAC_FIELD, "")
        return bool(given) and hmac.compare_digest(self.mac(mac_input(body, answer)).hex().upper(), given.upper())

    def pin_block(self, pin: str, pan: str) -> str:
        """Field 52: the format 0 PIN block under the PIK, hex."""
        assert self.pik is not None, "sign on first"
        return algorithms.tdes_ecb_encrypt(self.pik, algorithms.pin_block(pin, pan)).hex().upper()
