"""Which HSM backend the switch uses, and how to reach its LMK (``[security.hsm]``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from msgspec import Struct

from hsm.backend import Hsm, HsmError


class HsmSettings(Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    backend: Literal["software", "pkcs11"] = "software"
    lmk_file: str = ""  # software: 64 hex characters, relative to the configuration file
    pkcs11_library: str = "/usr/lib/softhsm/libsofthsm2.so"
    token_label: str = ""  # pkcs11: the token holding the LMK
    pin_file: str = ""  # pkcs11: the token's user PIN


def open_hsm(settings: HsmSettings, base_dir: str | Path) -> Hsm:
    """The configured backend, ready for use; ``HsmError`` naming what is missing otherwise."""
    base = Path(base_dir)
    if settings.backend == "software":
        from hsm.software import SoftwareHsm

        if not settings.lmk_file:
            raise HsmError("security.hsm.lmk_file is needed by the software HSM")
        return SoftwareHsm.from_file(base / settings.lmk_file)
    from hsm.pkcs11 import Pkcs11Hsm

    if not settings.token_label or not settings.pin_file:
        raise HsmError("security.hsm.token_label and pin_file are needed by the PKCS#11 HSM")
    try:
        pin = (base / settings.pin_file).read_text().strip()
    except OSError as exc:
        raise HsmError(f"cannot read the token PIN file {base / settings.pin_file}: {exc.strerror}") from None
    return Pkcs11Hsm(settings.pkcs11_library, settings.token_label, pin)
