"""The PKCS#11 backend: the LMK is an AES-256 key inside a token (SoftHSM2 in the tests, any
PKCS#11 HSM in production), created there, never extractable; keys at rest are AES-GCM
ciphertexts the token makes and opens.

SoftHSM2, like PKCS#11 itself, has no mechanism for payment operations (retail MAC, PIN
translation, key export under a terminal key) and will not unwrap DES keys, so the working keys
are opened by the token and used inside this process's HSM object, exactly as the software
backend does. A payment HSM with those commands (payShield, Atalla) plugs in behind the same
``Hsm`` interface by overriding the operations too.
"""

from __future__ import annotations

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.mechanisms import GCMParams

from hsm.backend import Hsm, HsmError

LMK_LABEL = "paysw-lmk"
_NONCE_BITS = 96


def _session(library: str, token_label: str, pin: str) -> pkcs11.Session:
    try:
        token = pkcs11.lib(library).get_token(token_label=token_label)
        return token.open(user_pin=pin, rw=True)
    except (pkcs11.PKCS11Error, RuntimeError, OSError) as exc:
        raise HsmError(f"cannot open token {token_label!r} with {library}: {type(exc).__name__}") from None


class Pkcs11Hsm(Hsm):
    name = "pkcs11"

    def __init__(self, library: str, token_label: str, pin: str) -> None:
        super().__init__()
        self._session = _session(library, token_label, pin)
        try:
            self._lmk = self._session.get_key(
                label=LMK_LABEL, key_type=KeyType.AES, object_class=ObjectClass.SECRET_KEY
            )
        except (pkcs11.NoSuchKey, pkcs11.MultipleObjectsReturned):
            self._session.close()
            raise HsmError(f"token {token_label!r} has no single key {LMK_LABEL!r}: run `paysw keys new-lmk`") from None

    @staticmethod
    def create_lmk(library: str, token_label: str, pin: str) -> None:
        """Generate the LMK inside the token. Refuses when the token has one already: replacing
        it would leave every stored key unreadable."""
        with _session(library, token_label, pin) as session:
            if list(session.get_objects({Attribute.LABEL: LMK_LABEL})):
                raise HsmError(f"token {token_label!r} already has an LMK")
            session.generate_key(
                KeyType.AES,
                256,
                label=LMK_LABEL,
                store=True,
                template={Attribute.EXTRACTABLE: False, Attribute.SENSITIVE: True},
            )

    def close(self) -> None:
        self._session.close()

    def _seal(self, aad: bytes, material: bytes) -> bytes:
        nonce = self._session.generate_random(_NONCE_BITS)
        return nonce + self._lmk.encrypt(material, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce, aad))

    def _open(self, aad: bytes, blob: bytes) -> bytes:
        nonce, sealed = blob[: _NONCE_BITS // 8], blob[_NONCE_BITS // 8 :]
        return self._lmk.decrypt(sealed, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce, aad))
