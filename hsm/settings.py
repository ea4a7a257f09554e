"""Which HSM backend the switch uses, and how to reach its LMK (``[security.hsm]``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from msgspec import Struct

from hsm.backend import Hsm, HsmError
from hsm.secret_file import SecretFileError, read_secret


class HsmSettings(Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    backend: Literal["software", "pkcs11"] = "software"
    lmk_file: str = ""  # software: 64 hex characters, relative to the configuration file
    pkcs11_library: str = "/usr/lib/softhsm/libsofthsm2.so"
    token_label: str = ""  # pkcs11: the token holding the LMK
    pin_file: str = ""  # pkcs11: the token's user PIN


def open_hsm(settings: HsmSettings, base_dir: str | Path, demo: bool = False) -> Hsm:
    """The configured backend, ready for use; ``HsmError`` naming what is missing otherwise.
    ``demo`` (a configuration marked ``switch.demo``) accepts the published demo LMK and secret
    files open to other users."""
    base = Path(base_dir)
    if settings.backend == "software":
        from hsm.software import SoftwareHsm

        if not settings.lmk_file:
            raise HsmError("security.hsm.lmk_file is needed by the software HSM")
        return SoftwareHsm.from_file(base / settings.lmk_file, demo)
    # (The PKCS#11 LMK is made inside the token and cannot be read out: never a published one.)
    from hsm.pkcs11 import Pkcs11Hsm

    return Pkcs11Hsm(settings.pkcs11_library, settings.token_label, token_pin(settings, base, demo))


def token_pin(settings: HsmSettings, base_dir: str | Path, demo: bool = False) -> str:
    """The PKCS#11 token's user PIN, from its file (readable by its owner alone)."""
    if not settings.token_label or not settings.pin_file:
        raise HsmError("security.hsm.token_label and pin_file are needed by the PKCS#11 HSM")
    try:
        return read_secret(Path(base_dir) / settings.pin_file, "the token PIN file", relaxed=demo)
    except SecretFileError as exc:
        raise HsmError(str(exc)) from None
