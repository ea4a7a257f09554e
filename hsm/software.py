"""The software backend (the embedded default): the LMK is a 256-bit AES key read from a file
at start, and keys at rest are AES-256-GCM ciphertexts bound to their label, version and kind."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hsm.algorithms import aes_check_value
from hsm.backend import Hsm, HsmError
from hsm.secret_file import SecretFileError, read_secret

log = logging.getLogger("paysw.hsm")

_NONCE = 12
# The check value of bench/demo_config/keys/lmk, the demo LMK published in the repository: anyone
# can open the keys stored under it, so it is refused unless the configuration is a demo.
DEMO_LMK_CHECK_VALUE = "F8A2BDF8"


class SoftwareHsm(Hsm):
    name = "software"

    def __init__(self, lmk: bytes) -> None:
        super().__init__()
        if len(lmk) != 32:
            raise HsmError("the LMK is 32 bytes (64 hex characters)")
        self._lmk = AESGCM(lmk)

    @classmethod
    def from_file(cls, path: Path, demo: bool = False) -> SoftwareHsm:
        """The LMK file holds 64 hex characters, and lines of comment starting with ``#``. It must
        be readable by its owner alone, and must not be the published demo LMK; a demo
        configuration (``demo``) is let off both."""
        try:
            lines = read_secret(path, "the LMK file", relaxed=demo).splitlines()
            lmk = bytes.fromhex("".join(line for line in lines if not line.lstrip().startswith("#")))
        except SecretFileError as exc:
            raise HsmError(str(exc)) from None
        except ValueError:
            raise HsmError(f"the LMK file {path} does not hold 64 hex characters") from None
        hsm = cls(lmk)
        if aes_check_value(lmk) == DEMO_LMK_CHECK_VALUE:
            if not demo:
                raise HsmError(
                    f"the LMK in {path} is the published demo LMK (check value {DEMO_LMK_CHECK_VALUE}): "
                    "refused outside a demo configuration; make a real one with `paysw keys new-lmk`"
                )
            log.warning("demo: the published demo LMK is in use", extra={"file": str(path)})
        return hsm

    def _seal(self, aad: bytes, material: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._lmk.encrypt(nonce, material, aad)

    def _open(self, aad: bytes, blob: bytes) -> bytes:
        return self._lmk.decrypt(blob[:_NONCE], blob[_NONCE:], aad)
