"""The HSM's interface: every operation on keys, given as ``KeyRecord`` handles. A backend only
decides how the LMK protects keys at rest (``_seal`` / ``_open``); the operations are the same
for all, so the same tests hold for every backend.

Clear key material lives in one place, this object's private cache, and leaves it only
encrypted: under the LMK (a record), under a terminal's TMK (sign-on), under a zone PIN key (a
translated PIN block). A PIN block is translated here and never returned in the clear.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable

from hsm import algorithms, sm2
from hsm.algorithms import KeyMaterialError, Sign, Verify
from hsm.keys import DES_KINDS, KeyKind, KeyRecord, associated_data, check_value_of


class HsmError(Exception):
    """An HSM operation refused: a key that does not open under this LMK, a key of the wrong
    kind for the operation. The message names keys by label, never by content."""


class PinBlockError(HsmError):
    """A PIN block that does not decrypt to ISO 9564 format 0 for its card number: the terminal
    and the switch do not share the PIK, or the block is forged."""


class Hsm(ABC):
    name: str

    def __init__(self) -> None:
        # Keyed on the whole record, not its label and version: a record whose blob, kind or check
        # value differs from the one opened before is opened afresh, and so fails under the LMK.
        self._clear: dict[KeyRecord, bytes] = {}

    # -- how the LMK protects keys (the backend's part) -----------------------------------------

    @abstractmethod
    def _seal(self, aad: bytes, material: bytes) -> bytes: ...

    @abstractmethod
    def _open(self, aad: bytes, blob: bytes) -> bytes: ...

    # -- key management --------------------------------------------------------------------------

    def import_key(self, label: str, kind: KeyKind, material: bytes, version: int = 1) -> KeyRecord:
        """Encrypt clear key material (from a file or a key ceremony) under the LMK."""
        _check_material(kind, material)
        blob = self._seal(associated_data(label, version, kind), material)
        return KeyRecord(label=label, version=version, kind=kind, blob=blob, check_value=check_value_of(kind, material))

    def generate(self, label: str, kind: KeyKind, version: int = 1) -> KeyRecord:
        """A new random key of ``kind``: a double-length DES key, a 32-byte secret, or an SM2
        private key (its public key from ``public_key``)."""
        if kind in DES_KINDS:
            material = algorithms.random_des_key()
        elif kind is KeyKind.DEK:
            material = os.urandom(algorithms.SM4_KEY_BYTES)
        elif kind is KeyKind.SECRET:
            material = os.urandom(32).hex().encode()
        elif kind is KeyKind.PRIVATE:
            material = os.urandom(32).hex().encode()
            while True:
                try:
                    algorithms.signer("sm2-sm3", material)
                    break
                except KeyMaterialError:  # a scalar out of range: draw again
                    material = os.urandom(32).hex().encode()
        else:
            raise HsmError(f"{label}: a {kind} key is imported, not generated")
        return self.import_key(label, kind, material, version)

    def public_key(self, record: KeyRecord) -> str:
        """The SM2 public key (04 || x || y, hex) of a generated private key, to give the channel."""
        self._expect(record, KeyKind.PRIVATE)
        return sm2.SigningKey(int(self._material(record), 16)).public_key_hex()

    def export_under(self, record: KeyRecord, kek: KeyRecord) -> str:
        """A DES key encrypted under a terminal master key (ECB), hex, for a sign-on answer."""
        self._expect(kek, KeyKind.TMK)
        if record.kind not in DES_KINDS:
            raise HsmError(f"{record.label}: only DES keys are exported under a TMK")
        return algorithms.tdes_ecb_encrypt(self._material(kek), self._material(record)).hex().upper()

    # -- terminal operations ------------------------------------------------------------------

    def mac(self, record: KeyRecord, algorithm: str, data: bytes) -> bytes:
        self._expect(record, KeyKind.MAK)
        return algorithms.mac(algorithm, self._material(record), data)

    def sign_on_mac(self, tmk: KeyRecord, algorithm: str, data: bytes) -> bytes:
        """A sign-on's MAC, under the sign-on variant of the terminal's master key: a terminal that
        lost its working keys still holds its TMK, and a stranger holds neither."""
        self._expect(tmk, KeyKind.TMK)
        return algorithms.mac(algorithm, algorithms.sign_on_variant(self._material(tmk)), data)

    def translate_pin(self, pik: KeyRecord, zpk: KeyRecord, block: bytes, pan: str) -> bytes:
        """A format 0 PIN block under the terminal's PIK, re-encrypted under the channel's zone
        PIN key. Raises ``PinBlockError`` when it is not a format 0 block for ``pan``."""
        self._expect(pik, KeyKind.PIK)
        self._expect(zpk, KeyKind.ZPK)
        clear = algorithms.tdes_ecb_decrypt(self._material(pik), block)
        try:
            algorithms.pin_of_block(clear, pan)
        except ValueError:
            raise PinBlockError(f"PIN block under {pik.label} is not format 0 for its card") from None
        return algorithms.tdes_ecb_encrypt(self._material(zpk), clear)

    # -- channel signatures and fingerprints -----------------------------------------------------

    def signer(self, record: KeyRecord, algorithm: str) -> Sign:
        self._expect(record, KeyKind.SECRET, KeyKind.PRIVATE)
        return self._bound(record, lambda material: algorithms.signer(algorithm, material))

    def verifier(self, record: KeyRecord, algorithm: str) -> Verify:
        self._expect(record, KeyKind.SECRET, KeyKind.PUBLIC)
        return self._bound(record, lambda material: algorithms.verifier(algorithm, material))

    def sm4_sealer(self, record: KeyRecord) -> Callable[[str], str]:
        """Text encrypted under a channel's SM4 data key (CBC, random IV first), hex: how e-CNY
        carries the wallet's payment code."""
        self._expect(record, KeyKind.DEK)
        key = self._material(record)
        return lambda text: algorithms.sm4_cbc_encrypt(key, text.encode()).hex().upper()

    def fingerprinter(self, record: KeyRecord) -> Callable[[str], bytes]:
        self._expect(record, KeyKind.SECRET)
        return self._bound(record, algorithms.fingerprinter)

    # -- inside ---------------------------------------------------------------------------------

    def _bound(self, record: KeyRecord, make):
        try:
            return make(self._material(record))
        except KeyMaterialError as exc:
            raise HsmError(f"{record.label}: {exc}") from None

    def _expect(self, record: KeyRecord, *kinds: KeyKind) -> None:
        if record.kind not in kinds:
            raise HsmError(f"{record.label} is a {record.kind} key, not {' or '.join(kinds)}")

    def _material(self, record: KeyRecord) -> bytes:
        material = self._clear.get(record)
        if material is None:
            try:
                material = self._open(record.aad(), record.blob)
            except Exception:
                raise HsmError(f"{record.label} v{record.version} does not open under this LMK") from None
            if check_value_of(record.kind, material) != record.check_value:
                raise HsmError(f"{record.label} v{record.version}: check value differs from the record")
            self._clear[record] = material
        return material


def _check_material(kind: KeyKind, material: bytes) -> None:
    if kind in DES_KINDS or kind is KeyKind.DEK:
        size = algorithms.SM4_KEY_BYTES if kind is KeyKind.DEK else algorithms.DES_KEY_BYTES
        if len(material) != size:
            raise HsmError(f"a {kind} key has {size} bytes, not {len(material)}")
        return
    try:
        if kind is KeyKind.SECRET:
            algorithms.fingerprinter(material)
        elif kind is KeyKind.PRIVATE:
            _first_that_loads(material, ("rsa-sha256", "sm2-sm3"), algorithms.signer)
        else:
            _first_that_loads(material, ("rsa-sha256", "sm2-sm3"), algorithms.verifier)
    except KeyMaterialError as exc:
        raise HsmError(f"not a {kind} key: {exc}") from None


def _first_that_loads(material: bytes, names: tuple[str, ...], load) -> None:
    errors = []
    for name in names:
        try:
            load(name, material)
            return
        except KeyMaterialError as exc:
            errors.append(str(exc))
    raise KeyMaterialError("; ".join(errors))
