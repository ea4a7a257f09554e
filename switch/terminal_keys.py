"""Terminals' keys on the wire (spec section 7): field 64 MACs on requests and answers, new PIK
and MAK under the terminal's TMK at sign-on and key change, and field 52 PIN blocks translated to
the card channel's zone PIN key. Every operation runs in the HSM; this module holds only
``KeyRecord`` handles, cached per terminal and shared with other front ends through the store.

Every terminal has a master key and MACs its requests, unless the configuration allows terminals
without (a demo). A sign-on is MAC'd under the master key's sign-on variant (a terminal that lost
its working keys must get new ones), which never changes, so sign-ons are rate-limited per
terminal; a key change is MAC'd like a payment. Either gives keys only if sent later than the
last that did (``KeyRequestReplayed``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from hsm import Hsm, KeyKind, KeyRecord, PinBlockError
from hsm.keys import terminal_label
from protocols.iso8583 import MAC_FIELD, Message, encode, encode_with_mac, mac_input
from protocols.validation import carries_mac, is_sign_on, transmitted_at
from switch.config import ConfigError, SecuritySection, Terminal
from switch.keystore import KeyStore
from switch.lograte import RateLimitedLog

log = logging.getLogger("paysw.keys")

MACED_ANSWERS = frozenset({"0210", "0110", "0410"})
# Versions of a terminal's PIK and MAK kept: the newest, and the one before it for messages in
# flight at a key change. Older ones are deleted (sign-ons would otherwise add rows forever).
WORKING_KEY_VERSIONS = 2
RELOAD_AFTER_S = 1.0  # MACs that do not verify reread a terminal's keys at most this often
WARN_EVERY_S = 60.0  # per terminal, for warnings a stranger can provoke (bad MACs, sign-ons refused)
# How far a sign-on's or key change's field 7 may be behind the switch's clock (one held back on the
# way and sent later, by whoever held it, gives no keys past this), and ahead of it: one refused as
# ahead is not noted, and would give keys once the time it names came, so the margin is short.
KEY_REQUEST_FRESH_S = 600.0
KEY_REQUEST_AHEAD_S = 60.0
PIN_FAILURE_WINDOW_S = 3600.0  # SecuritySection.pin_failures_per_hour counts over this rolling window


class MacMismatch(Exception):
    """Field 64 is not the MAC of the message under any MAK the terminal may use (``A0``)."""


class SignOnTooSoon(Exception):
    """A sign-on within ``sign_on_interval_s`` of the terminal's last new keys (``65``)."""


class KeyRequestReplayed(Exception):
    """A sign-on or key change not after the terminal's last one (by field 7, then STAN), or
    further than ``KEY_REQUEST_FRESH_S`` behind now or ``KEY_REQUEST_AHEAD_S`` ahead: the same
    request sent again (``94``)."""


class NoPinKey(Exception):
    """A PIN block the switch cannot translate: the terminal has no PIK, or the channel no zone
    PIN key (a format error, ``30``)."""


PinRequest = tuple[str, str]  # a purchase's STAN and field 7: one PIN block counts once


class PinTriesExceeded(Exception):
    """The terminal sent ``pin_failures_per_hour`` PIN blocks that did not read as format 0 within
    the last hour: none of its PIN blocks is translated until the oldest of them is an hour old
    (``58``)."""


@dataclass
class _Keys:
    tmk: KeyRecord | None = None
    pik: KeyRecord | None = None
    # MAKs a request may be MAC'd under, newest first, each with the time it stops being accepted:
    # the newest never; the one before it only for messages in flight at the key change.
    maks: list[tuple[KeyRecord, float]] = field(default_factory=list)
    issued_at: float = float("-inf")  # when the newest MAK was made (by any front end)
    # The PIK made with the MAK before (``maks[1]``): a PIN purchase in flight at a key change,
    # MAC'd under that MAK, has its block under this one.
    previous_pik: KeyRecord | None = None


class TerminalSecurity:
    def __init__(
        self,
        hsm: Hsm,
        store: KeyStore,
        terminals: dict[str, Terminal],
        zpks: dict[str, KeyRecord],
        grace_s: float,
        policy: SecuritySection,
        clock: Callable[[], float] = time.time,  # wall time: the journal's are compared with it
    ) -> None:
        self._hsm = hsm
        self._store = store
        self._terminals = terminals
        self._zpks = zpks
        self._grace_s = grace_s
        self._allow_without_mac = policy.allow_terminals_without_mac
        self._sign_on_interval_s = policy.sign_on_interval_s
        self._pin_failures: dict[str, dict[PinRequest, float]] = {}  # per terminal, the latest (at most the limit)
        self.pin_failure_limit = policy.pin_failures_per_hour
        self._clock = clock
        self._keys: dict[str, _Keys] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._reread_at: dict[str, float] = {}  # when a MAC that did not verify last reread the keys
        self._warn = RateLimitedLog(WARN_EVERY_S)

    async def load(self) -> None:
        """Read every terminal's keys (at start; afterwards on a key change, or on a MAC that does
        not verify, in case another front end changed the keys). Raises ``ConfigError`` naming
        the terminals without a master key, unless the configuration allows them."""
        for terminal_id in self._terminals:
            await self._reload(terminal_id)
        plain = sorted(t for t, keys in self._keys.items() if keys.tmk is None)
        if plain and not self._allow_without_mac:
            shown = ", ".join(plain[:10]) + (f" and {len(plain) - 10} more" if len(plain) > 10 else "")
            raise ConfigError(
                f"$.terminals: {len(plain)} terminals have no master key in the key store ({shown}): import "
                "each one's tmk:TERMINAL (`paysw keys import`), or (demo only) set "
                "$.security.allow_terminals_without_mac = true"
            )
        if plain:
            log.warning(
                f"{len(plain)} of {len(self._terminals)} terminals have no master key and run without MAC "
                "(security.allow_terminals_without_mac: demo only)",
                extra={"terminals_without_mac": len(plain)},
            )
        linear = sum(t.mac_algorithm == "unionpay-ecb" for t in self._terminals.values())
        if linear:
            log.warning(
                f"{linear} of {len(self._terminals)} terminals MAC with unionpay-ecb, a MAC of the XOR of the "
                "message's blocks: whoever sees one MAC'd message of such a terminal can forge another; keep "
                "them on a private line",
                extra={"terminals_with_linear_mac": linear},
            )

    async def new_terminals(self, terminals: dict[str, Terminal]) -> dict[str, _Keys]:
        """The keys of the terminals of a reloaded configuration (``switch.live``) not known here
        yet, for ``set_terminals``; as at start, a new one without a master key is a
        ``ConfigError`` unless allowed. Changes nothing."""
        fresh = {t: await self._read(t) for t in terminals if t not in self._terminals}
        plain = sorted(t for t, keys in fresh.items() if keys.tmk is None)
        if plain and not self._allow_without_mac:
            raise ConfigError(f"$.terminals: new terminals without a master key in the key store: {', '.join(plain)}")
        return fresh

    def set_terminals(self, terminals: dict[str, Terminal], fresh: dict[str, _Keys]) -> None:
        self._keys.update(fresh)
        # A removed terminal's keys and MAC algorithm stay: a request of its under way is answered
        # under them (the Processor refuses its new ones, 03).
        self._terminals = {**self._terminals, **terminals}

    async def _reload(self, terminal_id: str) -> _Keys:
        keys = self._keys[terminal_id] = await self._read(terminal_id)
        return keys

    async def _read(self, terminal_id: str) -> _Keys:
        keys = _Keys(tmk=await self._store.current(terminal_label(KeyKind.TMK, terminal_id)))
        piks = await self._store.newest(terminal_label(KeyKind.PIK, terminal_id), WORKING_KEY_VERSIONS)
        if piks:
            keys.pik = piks[0].record
            if len(piks) == 2:
                keys.previous_pik = piks[1].record
        maks = await self._store.newest(terminal_label(KeyKind.MAK, terminal_id), WORKING_KEY_VERSIONS)
        if maks:
            keys.issued_at = maks[0].created_at.timestamp()
            keys.maks.append((maks[0].record, float("inf")))
            if len(maks) == 2:
                keys.maks.append((maks[1].record, maks[0].created_at.timestamp() + self._grace_s))
        return keys

    # -- MAC -----------------------------------------------------------------------------------

    def needs_mac(self, message: Message) -> bool:
        """Whether field 64 must verify before the request is acted on: a MAC'd kind of request
        from a terminal with a master key (also before its first sign-on: with no MAK yet, it is
        refused), or from any terminal unless terminals without MAC are allowed. (A terminal
        not configured is refused 03 anyway.)"""
        keys = self._keys.get(message.get("41", ""))
        return keys is not None and carries_mac(message) and (keys.tmk is not None or not self._allow_without_mac)

    async def verify(self, message: Message, frame: bytes) -> KeyRecord | None:
        """The MAK that field 64 verifies under (None for a sign-on, which verifies under the
        master key's sign-on variant); raises ``MacMismatch``. A request without field 64 is
        refused before this, by the wire contract's rule (``protocols.validation``)."""
        if MAC_FIELD not in message:
            raise MacMismatch
        terminal_id = message["41"]
        data = mac_input(frame, message)
        keys = self._keys[terminal_id]
        if is_sign_on(message):
            if keys.tmk is not None and self._sign_on_verifies(keys.tmk, terminal_id, data, message[MAC_FIELD]):
                return None
            record = None
        else:
            record = self._verifying_mak(keys, terminal_id, data, message[MAC_FIELD])
            now = time.monotonic()
            if record is None and now >= self._reread_at.get(terminal_id, 0.0) + RELOAD_AFTER_S:
                # Another front end may have changed this terminal's keys. At most once a second per
                # terminal: bad MACs from a stranger must not become reads of the key store.
                self._reread_at[terminal_id] = now
                record = self._verifying_mak(await self._reload(terminal_id), terminal_id, data, message[MAC_FIELD])
        if record is None:
            self._warn.warn(
                log, (terminal_id, "mac"), "MAC verification failed",
                mti=message["t"], terminal=terminal_id, stan=message["11"],
            )  # fmt: skip
            raise MacMismatch
        return record

    def _sign_on_verifies(self, tmk: KeyRecord, terminal_id: str, data: bytes, given: str) -> bool:
        algorithm = self._terminals[terminal_id].mac_algorithm
        return mac_matches(self._hsm.sign_on_mac(tmk, algorithm, data), given)

    def _verifying_mak(self, keys: _Keys, terminal_id: str, data: bytes, given: str) -> KeyRecord | None:
        algorithm = self._terminals[terminal_id].mac_algorithm
        now = time.time()
        for record, until in keys.maks:
            if now <= until and mac_matches(self._hsm.mac(record, algorithm, data), given):
                return record
        return None

    def encode(self, answer: Message, mak: KeyRecord | None = None) -> bytes:
        """The answer's frame, with field 64 under ``mak``, the key its request's MAC verified
        under. An answer to a request that proved nothing (no MAC, a MAC that does not verify, a
        request refused before it was checked) goes without one: MAC'd under the terminal's key,
        it would give anyone who sends a message the MAC of a message they can predict, whose
        blocks forge another under a MAC as linear as UnionPay's ECB."""
        if mak is None or answer["t"] not in MACED_ANSWERS:
            return encode(answer)
        algorithm = self._terminals[answer["41"]].mac_algorithm
        return encode_with_mac(answer, lambda data: self._hsm.mac(mak, algorithm, data))

    # -- key exchange ------------------------------------------------------------------------------

    def has_master_key(self, terminal_id: str) -> bool:
        keys = self._keys.get(terminal_id)
        return keys is not None and keys.tmk is not None

    async def new_working_keys(self, terminal_id: str, signing_on: bool, field7: str, stan: str) -> str:
        """Field 62 of a sign-on / key change answer: a new PIK and MAK under the terminal's TMK,
        each with its check value (spec section 7). The MAK they replace stays valid for messages
        in flight only, and the PIK they replace is read for a request MAC'd under that MAK;
        older versions are deleted. Raises ``SignOnTooSoon`` for a sign-on less
        than ``sign_on_interval_s`` after the terminal's last new keys (a sign-on's MAC is under a
        key that never changes: the limit bounds how often one captured could be used), and
        ``KeyRequestReplayed`` for a request (``field7``, ``stan``) not after the terminal's last
        one, or sent far from now: one captured and sent again would rotate the keys and lock the
        terminal out. Raises ``asyncpg.UniqueViolationError`` when another front end changed this
        terminal's keys at the same moment (the terminal signs on again)."""
        async with self._locks.setdefault(terminal_id, asyncio.Lock()):
            keys = await self._reload(terminal_id)  # the newest, whichever front end made them
            assert keys.tmk is not None
            # Noted before the interval's refusal too: one refused 65 and sent again later would
            # otherwise come after the last one noted, and give keys.
            why = await self._seen_before(terminal_id, field7, stan)
            if why:
                self._warn.warn(log, (terminal_id, "replayed"), f"key request refused: {why}", terminal=terminal_id)
                raise KeyRequestReplayed
            if signing_on and time.time() < keys.issued_at + self._sign_on_interval_s:
                self._warn.warn(
                    log, (terminal_id, "sign-on"), "sign-on refused: too soon after the last one", terminal=terminal_id
                )
                raise SignOnTooSoon
            new = {}
            for kind in (KeyKind.PIK, KeyKind.MAK):
                label = terminal_label(kind, terminal_id)
                new[kind] = self._hsm.generate(label, kind, await self._store.next_version(label))
            await self._store.add(*new.values(), keep=WORKING_KEY_VERSIONS)
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

    async def _seen_before(self, terminal_id: str, field7: str, stan: str) -> str:
        """Why a key request (its ``field7`` and ``stan``) is refused as sent again, after noting
        it as the terminal's last when it is not: "" then."""
        now = dt.datetime.now(dt.UTC)
        sent = transmitted_at(field7, now)
        if sent is None or not -KEY_REQUEST_AHEAD_S <= (now - sent).total_seconds() <= KEY_REQUEST_FRESH_S:
            return f"field 7 {field7} too far from the switch's clock (the terminal's clock?)"
        if not await self._store.note_key_request(terminal_id, sent, stan):
            return f"not after the last one (field 7 {field7}, STAN {stan}): sent again"
        return ""

    # -- PIN -----------------------------------------------------------------------------------

    def translate_pin(
        self, terminal_id: str, block_hex: str, pan: str, channel: str, request: PinRequest, mak: KeyRecord | None
    ) -> str:
        """Field 52 under the terminal's PIK, as the same block under ``channel``'s zone PIN key
        (hex). Raises ``NoPinKey``, ``PinTriesExceeded`` or ``hsm.PinBlockError``. ``mak``: the
        MAK the request's MAC verified under; the one before a key change (accepted for messages
        in flight) means the block is under the PIK made with it.

        Whether a block reads as format 0 depends on the PIN and the card number it is bound to:
        told apart, with the card number changed at will, it tells of a captured block's digits
        (past the second, which pair of values) one query at a time (Clulow's PAN-modification
        attack), and no issuer counts those tries, since an unreadable block never reaches one.
        The caller answers such a block as an issuer answers a wrong PIN, not as a format error,
        but a readable one still goes on to the channel, whose answer and time may differ: what
        bounds the probing is that a terminal gets ``pin_failures_per_hour`` unreadable blocks
        an hour, and past them none of its blocks is translated. Counted here as they come
        (``request``: the purchase's STAN and field 7), and from the journal
        (``recall_pin_failures``): other front ends' and earlier processes' count too."""
        keys = self._keys.get(terminal_id)
        zpk = self._zpks.get(channel)
        if keys is None or keys.pik is None or zpk is None:
            raise NoPinKey
        if self.pin_locked(terminal_id):
            raise PinTriesExceeded
        pik = keys.pik
        if keys.previous_pik is not None and len(keys.maks) == 2 and mak == keys.maks[1][0]:
            pik = keys.previous_pik  # MAC'd under the MAK before a key change: in flight at it
        try:
            return self._hsm.translate_pin(pik, zpk, bytes.fromhex(block_hex), pan).hex().upper()
        except PinBlockError:  # counted before anything awaits: pipelined probes see it
            self._count_pin_failures(terminal_id, {request: self._clock()})
            raise

    def pin_failures_counted(self, terminal_id: str) -> bool:
        """Whether an unreadable block of ``terminal_id`` within the hour is counted here: then
        the journal is read before its next block (``recall_pin_failures``), which another front
        end may have refused since, as well as after every unreadable one."""
        failures = self._pin_failures.get(terminal_id)
        return bool(failures) and self._clock() - max(failures.values()) < PIN_FAILURE_WINDOW_S  # type: ignore[union-attr]

    def recall_pin_failures(self, terminal_id: str, recorded: dict[PinRequest, float]) -> None:
        """The unreadable blocks of ``terminal_id`` the journal holds from the last hour, by any
        front end, as request: time. Counted with this process's, each request once (one counted
        here may be recorded by now). So with ``paysw run --workers N`` or after a restart the
        allowance is the switch's: a process that has counted none of the hour lets one more
        through before it reads the others."""
        self._count_pin_failures(terminal_id, recorded)

    def _count_pin_failures(self, terminal_id: str, failures: dict[PinRequest, float]) -> None:
        merged = {**failures, **self._pin_failures.get(terminal_id, {})}
        latest = sorted(merged.items(), key=lambda item: item[1])[-self.pin_failure_limit :]
        self._pin_failures[terminal_id] = dict(latest)

    def pin_locked(self, terminal_id: str) -> bool:
        """Whether ``terminal_id``'s allowance of unreadable blocks is used up, as counted here."""
        failures = self._pin_failures.get(terminal_id)
        return (
            failures is not None
            and len(failures) == self.pin_failure_limit
            and self._clock() - min(failures.values()) < PIN_FAILURE_WINDOW_S
        )


def mac_matches(computed: bytes, given_hex: str) -> bool:
    """Whether field 64 (hex, either case) is the ``computed`` MAC. Compared in constant time, so
    that how long a refusal takes tells a forger nothing about how much of a guess was right."""
    try:
        given = bytes.fromhex(given_hex)
    except ValueError:
        return False
    return hmac.compare_digest(computed, given)
