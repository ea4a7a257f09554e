"""The only place that holds clear key material. Callers hold ``KeyRecord`` handles (keys
encrypted under the LMK) and get bound operations (MAC, PIN translation, export under a TMK,
signers, verifiers, fingerprints), never a key. Backends: software (the embedded default) and
PKCS#11 (SoftHSM2 in the tests)."""

from hsm.backend import Hsm, HsmError, PinBlockError
from hsm.keys import KeyKind, KeyRecord
from hsm.settings import HsmSettings, open_hsm

__all__ = ["Hsm", "HsmError", "HsmSettings", "KeyKind", "KeyRecord", "PinBlockError", "open_hsm"]
