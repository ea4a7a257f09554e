"""Terminals' keys on the wire (spec section 7): field 64 MACs on requests and answers, new PIK
and MAK under the terminal's TMK at sign-on and key change, and field 52 PIN blocks translated to
the card channel's zone PIN key. Every operation runs in the HSM; this module holds only
``KeyRecord`` handles, cached per terminal and shared with other front ends through the store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from hsm import Hsm, KeyKind, KeyRecord
from hsm.keys import terminal_label
from protocols.iso8583 import MAC_FIELD, Message, encode, encode_with_mac, mac_span
from switch.config import Terminal
from switch.keystore import KeyStore

log = logging.getLogger("paysw.keys")

MACED_ANSWERS = frozenset({"0210", "0110", "0410"})
MACED_REQUESTS = frozenset({"0200", "0100", "0400"})


class MacMissing(Exception):
    """A request of a terminal that has a MAK came without field 64 (a format error, ``30``)."""


class MacMismatch(Exception):
    """Field 64 is not the MAC of the message under any MAK the terminal may use (``A0``)."""


class NoPinKey(Exception):
    """A PIN block the switch cannot translate: the terminal has no PIK, or the channel no zone
    PIN key (a format error, ``30``)."""


@dataclass
class _Keys:
    tmk: KeyRecord | None = None
    pik: KeyRecord | None = None
    # MAKs a request may be MAC'd under, newest first, each with the time it stops being accepted:
    # the newest never; the one before it only for messages in flight at the key change.
    maks: list[tuple[KeyRecord, float]] = field(default_factory=list)

    def mak(self) -> KeyRecord | None:
        return self.maks[0][0] if self.maks else None


class TerminalSecurity:
    def __init__(
        self, hsm: Hsm, store: KeyStore, terminals: dict[str, Terminal], zpks: dict[str, KeyRecord], grace_s: float
    ) -> None:
        self._hsm = hsm
        self._store = store
        self._terminals = terminals
        self._zpks = zpks
        self._grace_s = grace_s
        self._keys: dict[str, _Keys] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def load(self) -> None:
        """Read every terminal's keys (at start; afterwards on a key change, or on a MAC that does
        not verify, in case another front end changed the keys)."""
        for terminal_id in self._terminals:
            await self._reload(terminal_id)

    async def _reload(self, terminal_id: str) -> _Keys:
        keys = _Keys(
            tmk=await self._store.current(terminal_label(KeyKind.TMK, terminal_id)),
            pik=await self._store.current(terminal_label(KeyKind.PIK, terminal_id)),
        )
        maks = await self._store.newest(terminal_label(KeyKind.MAK, terminal_id), 2)
        if maks:
            keys.maks.append((maks[0].record, float("inf")))
            if len(maks) == 2:
                keys.maks.append((maks[1].record, maks[0].created_at.timestamp() + self._grace_s))
        self._keys[terminal_id] = keys
        return keys

    # -- MAC -----------------------------------------------------------------------------------

    def needs_mac(self, message: Message) -> bool:
        keys = self._keys.get(message.get("41", ""))
        return keys is not None and keys.mak() is not None and message["t"] in MACED_REQUESTS

    async def verify(self, message: Message, frame: bytes) -> KeyRecord:
        """The MAK that field 64 verifies under; raises ``MacMissing`` or ``MacMismatch``."""
        if MAC_FIELD not in message:
            raise MacMissing
        terminal_id = message["41"]
        data = frame[: mac_span(message)]
        record = self._verifying_mak(self._keys[terminal_id], terminal_id, data, message[MAC_FIELD])
        if record is None:  # another front end may have changed this terminal's keys
            record = self._verifying_mak(await self._reload(terminal_id), terminal_id, data, message[MAC_FIELD])
        if record is None:
            raise MacMismatch
        return record

    def _verifying_mak(self, keys: _Keys, terminal_id: str, data: bytes, given: str) -> KeyRecord | None:
        algorithm = self._terminals[terminal_id].mac_algorithm
        now = time.time()
        for record, until in keys.maks:
            if now <= until and self._hsm.mac(record, algorithm, data).hex().upper() == given.upper():
                return record
        return None

    def encode(self, answer: Message, mak: KeyRecord | None = None) -> bytes:
        """The answer's frame, with field 64 when its terminal has a MAK: under ``mak`` (the key
        its request verified under) or else the terminal's newest."""
        if answer["t"] not in MACED_ANSWERS:
            return encode(answer)
        terminal_id = answer.get("41", "")
        keys = self._keys.get(terminal_id)
        mak = mak or (keys.mak() if keys else None)
        if mak is None:
            return encode(answer)
        algorithm = self._terminals[terminal_id].mac_algorithm
        return encode_with_mac(answer, lambda data: self._hsm.mac(mak, algorithm, data))

    # -- key exchange ------------------------------------------------------------------------------

    def has_master_key(self, terminal_id: str) -> bool:
        keys = self._keys.get(terminal_id)
        return keys is not None and keys.tmk is not None

    async def new_working_keys(self, terminal_id: str) -> str:
        """Field 62 of a sign-on / key change answer: a new PIK and MAK under the terminal's TMK,
        each with its check value (spec section 7). The MAK they replace stays valid for messages
        in flight only. Raises ``asyncpg.UniqueViolationError`` when another front end changed
        this terminal's keys at the same moment (the terminal signs on again)."""
        async with self._locks.setdefault(terminal_id, asyncio.Lock()):
            keys = self._keys[terminal_id]
            assert keys.tmk is not None
            new = {}
            for kind in (KeyKind.PIK, KeyKind.MAK):
                label = terminal_label(kind, terminal_id)
                new[kind] = self._hsm.generate(label, kind, await self._store.next_version(label))
            await self._store.add(*new.values())
            await self._reload(terminal_id)
            log.info(
                "terminal keys changed",
                extra={
                    "terminal": terminal_id,
                    "pik_kcv": new[KeyKind.PIK].check_value,
                    "mak_kcv": new[KeyKind.MAK].check_value,
                },
            )
            return "".join(
                self._hsm.export_under(new[k], keys.tmk) + new[k].check_value for k in (KeyKind.PIK, KeyKind.MAK)
            )

    # -- PIN -----------------------------------------------------------------------------------

    def translate_pin(self, terminal_id: str, block_hex: str, pan: str, channel: str) -> str:
        """Field 52 under the terminal's PIK, as the same block under ``channel``'s zone PIN key
        (hex). Raises ``NoPinKey`` or ``hsm.PinBlockError``."""
        keys = self._keys.get(terminal_id)
        zpk = self._zpks.get(channel)
        if keys is None or keys.pik is None or zpk is None:
            raise NoPinKey
        return self._hsm.translate_pin(keys.pik, zpk, bytes.fromhex(block_hex), pan).hex().upper()
