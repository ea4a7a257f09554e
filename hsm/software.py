"""The software backend (the embedded default): the LMK is a 256-bit AES key read from a file
at start, and keys at rest are AES-256-GCM ciphertexts bound to their label, version and kind."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hsm.backend import Hsm, HsmError

_NONCE = 12


class SoftwareHsm(Hsm):
    name = "software"

    def __init__(self, lmk: bytes) -> None:
        super().__init__()
        if len(lmk) != 32:
            raise HsmError("the LMK is 32 bytes (64 hex characters)")
        self._lmk = AESGCM(lmk)

    @classmethod
    def from_file(cls, path: Path) -> SoftwareHsm:
        """The LMK file holds 64 hex characters, and lines of comment starting with ``#``."""
        try:
            lines = path.read_text().splitlines()
            return cls(bytes.fromhex("".join(line for line in lines if not line.lstrip().startswith("#"))))
        except OSError as exc:
            raise HsmError(f"cannot read the LMK file {path}: {exc.strerror}") from None
        except ValueError:
            raise HsmError(f"the LMK file {path} does not hold 64 hex characters") from None

    def _seal(self, aad: bytes, material: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._lmk.encrypt(nonce, material, aad)

    def _open(self, aad: bytes, blob: bytes) -> bytes:
        return self._lmk.decrypt(blob[:_NONCE], blob[_NONCE:], aad)
