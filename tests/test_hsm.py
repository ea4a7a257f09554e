"""The HSM layer, the same suite on both backends (software, and PKCS#11 on a real SoftHSM2
token): keys at rest only under the LMK, operations that agree with the far side's clear-key
algorithms, PIN blocks that are translated and never come out clear, errors that name labels and
never key material."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest

from bench.demo_config import DEMO_DIR
from hsm import HsmError, HsmSettings, KeyKind, PinBlockError, open_hsm
from hsm import algorithms as clear
from hsm.backend import Hsm
from hsm.pkcs11 import Pkcs11Hsm
from hsm.software import SoftwareHsm

PAN = "6222021234567890123"


@pytest.fixture(scope="module", params=["software", "pkcs11"])
def hsm(request) -> Hsm:
    if request.param == "software":
        return SoftwareHsm(os.urandom(32))
    library, label, pin = request.getfixturevalue("softhsm")
    backend = Pkcs11Hsm(library, label, pin)
    request.addfinalizer(backend.close)
    return backend


def test_keys_rest_under_the_lmk_only(hsm: Hsm):
    material = clear.random_des_key()
    record = hsm.import_key("tmk:T1", KeyKind.TMK, material)
    assert material not in record.blob and material.hex() not in record.blob.hex()
    assert record.check_value == clear.check_value(material)
    # Decoded back from storage (a row), it still opens.
    stored = msgspec.msgpack.decode(msgspec.msgpack.encode(record), type=type(record))
    assert hsm.export_under(hsm.generate("mak:T1", KeyKind.MAK), stored)


def test_a_blob_passed_off_as_another_key_or_altered_does_not_open(hsm: Hsm):
    record = hsm.generate("mak:T1", KeyKind.MAK)
    relabelled = msgspec.structs.replace(record, label="mak:T2")
    with pytest.raises(HsmError, match="mak:T2"):
        hsm.mac(relabelled, "x9.19", b"data")
    altered = msgspec.structs.replace(record, label="mak:T3", blob=record.blob[:-1] + bytes([record.blob[-1] ^ 1]))
    with pytest.raises(HsmError, match="does not open"):
        hsm.mac(altered, "x9.19", b"data")


def test_a_record_altered_after_its_key_was_used_does_not_open(hsm: Hsm):
    """The opened keys are cached by the whole record: a record that differs from the one opened
    before (its blob, its kind) is opened afresh under the LMK, never served the cached key."""
    mak = hsm.generate("mak:T5", KeyKind.MAK)
    hsm.mac(mak, "x9.19", b"data")
    flipped = msgspec.structs.replace(mak, blob=mak.blob[:-1] + bytes([mak.blob[-1] ^ 1]))
    with pytest.raises(HsmError, match="mak:T5 v1 does not open"):
        hsm.mac(flipped, "x9.19", b"data")
    tmk = hsm.import_key("tmk:T5", KeyKind.TMK, clear.random_des_key())
    hsm.export_under(mak, tmk)
    with pytest.raises(HsmError, match="tmk:T5 v1 does not open"):
        hsm.mac(msgspec.structs.replace(tmk, kind=KeyKind.MAK), "x9.19", b"data")


def test_another_lmk_cannot_open_the_keys(hsm: Hsm):
    record = hsm.generate("mak:T1", KeyKind.MAK)
    with pytest.raises(HsmError, match="does not open"):
        SoftwareHsm(os.urandom(32)).mac(record, "x9.19", b"data")


def test_sign_on_keys_reach_the_terminal_and_mac_as_it_computes(hsm: Hsm):
    tmk_clear = clear.random_des_key()
    tmk = hsm.import_key("tmk:T9", KeyKind.TMK, tmk_clear)
    mak = hsm.generate("mak:T9", KeyKind.MAK)
    under_tmk = bytes.fromhex(hsm.export_under(mak, tmk))
    mak_clear = clear.tdes_ecb_decrypt(tmk_clear, under_tmk)  # what the terminal does
    assert clear.check_value(mak_clear) == mak.check_value
    data = b"0200" + bytes(range(100))
    for algorithm in ("x9.19", "unionpay-ecb"):
        assert hsm.mac(mak, algorithm, data) == clear.mac(algorithm, mak_clear, data)
    with pytest.raises(HsmError, match="not tmk"):
        hsm.export_under(tmk, mak)


def test_pin_is_translated_to_the_zone_key_never_returned_clear(hsm: Hsm):
    tmk_clear = clear.random_des_key()
    tmk = hsm.import_key("tmk:T8", KeyKind.TMK, tmk_clear)
    pik = hsm.generate("pik:T8", KeyKind.PIK)
    zpk_clear = clear.random_des_key()
    zpk = hsm.import_key("zpk:unionpay", KeyKind.ZPK, zpk_clear)
    pik_clear = clear.tdes_ecb_decrypt(tmk_clear, bytes.fromhex(hsm.export_under(pik, tmk)))
    clear_block = clear.pin_block("123456", PAN)
    under_pik = clear.tdes_ecb_encrypt(pik_clear, clear_block)
    translated = hsm.translate_pin(pik, zpk, under_pik, PAN)
    assert translated not in (clear_block, under_pik)
    assert clear.pin_of_block(clear.tdes_ecb_decrypt(zpk_clear, translated), PAN) == "123456"
    with pytest.raises(PinBlockError):  # under another key: not a format 0 block for this card
        hsm.translate_pin(pik, zpk, clear.tdes_ecb_encrypt(clear.random_des_key(), clear_block), PAN)
    with pytest.raises(HsmError, match="not zpk"):
        hsm.translate_pin(pik, pik, under_pik, PAN)


@pytest.mark.parametrize(
    ("algorithm", "private_file", "public_file", "kind"),
    [
        ("rsa-sha256", "alipay/app_private.pem", "alipay/app_public.pem", KeyKind.PUBLIC),
        ("sm2-sm3", "ecny/switch_sm2_private", "ecny/switch_sm2_public", KeyKind.PUBLIC),
        ("hmac-sm3", "inbank/hmac_key", "inbank/hmac_key", KeyKind.SECRET),
        ("hmac-sha256-appended-key", "wechat/api_key", "wechat/api_key", KeyKind.SECRET),
    ],
)
def test_channel_signatures_from_records(hsm: Hsm, algorithm, private_file, public_file, kind):
    keys = DEMO_DIR / "keys"
    private_kind = KeyKind.SECRET if kind is KeyKind.SECRET else KeyKind.PRIVATE
    signing = hsm.import_key(f"{algorithm}:sign", private_kind, (keys / private_file).read_bytes())
    checking = hsm.import_key(f"{algorithm}:verify", kind, (keys / public_file).read_bytes())
    signature = hsm.signer(signing, algorithm)(b"message")
    assert hsm.verifier(checking, algorithm)(b"message", signature)
    assert not hsm.verifier(checking, algorithm)(b"messagE", signature)
    assert not hsm.verifier(checking, algorithm)(b"message", "é" + signature[1:])  # wrong, not an error
    assert clear.verifier(algorithm, (keys / public_file).read_bytes())(b"message", signature)


def test_generated_sm2_key_gives_its_public_key(hsm: Hsm):
    private = hsm.generate("ecny:new", KeyKind.PRIVATE)
    public = hsm.import_key("ecny:new-public", KeyKind.PUBLIC, hsm.public_key(private).encode())
    assert hsm.verifier(public, "sm2-sm3")(b"m", hsm.signer(private, "sm2-sm3")(b"m"))


def test_fingerprints_are_keyed(hsm: Hsm):
    one = hsm.fingerprinter(hsm.generate("pan-hash", KeyKind.SECRET))
    other = hsm.fingerprinter(hsm.generate("pan-hash-2", KeyKind.SECRET))
    assert one(PAN) == one(PAN) != other(PAN)
    assert one(PAN) != one(PAN[:-1] + "4")


def test_bad_material_errors_never_hold_the_material(hsm: Hsm):
    secret = b"SECRET-MATERIAL-THAT-MUST-NOT-LEAK"
    for kind, material in ((KeyKind.PRIVATE, secret * 3), (KeyKind.TMK, secret), (KeyKind.SECRET, b"tiny")):
        with pytest.raises(HsmError) as caught:
            hsm.import_key("bad", kind, material)
        assert "SECRET-MATERIAL" not in str(caught.value) and "tiny" not in str(caught.value)
    with pytest.raises(HsmError, match="imported, not generated"):
        hsm.generate("x", KeyKind.PUBLIC)


def test_sm4_sealer_encrypts_for_the_channel(hsm: Hsm):
    dek_clear = os.urandom(16)
    dek = hsm.import_key("ecny:sm4-dek", KeyKind.DEK, dek_clear)
    sealed = hsm.sm4_sealer(dek)("0112345678901234567")
    assert "0112345678901234567" not in sealed
    assert clear.sm4_cbc_decrypt(dek_clear, bytes.fromhex(sealed)) == b"0112345678901234567"
    assert hsm.sm4_sealer(dek)("0112345678901234567") != sealed  # a fresh IV each time


def secret_file(folder: Path, name: str, text: str, mode: int) -> Path:
    path = folder / name
    path.write_text(text)
    path.chmod(mode)
    return path


def test_the_published_demo_lmk_opens_only_in_a_demo_configuration(tmp_path):
    secret_file(tmp_path, "lmk", (DEMO_DIR / "keys" / "lmk").read_text(), 0o600)
    settings = HsmSettings(lmk_file="lmk")
    with pytest.raises(HsmError, match=r"published demo LMK \(check value F8A2BDF8\): refused outside a demo"):
        open_hsm(settings, tmp_path)
    assert open_hsm(settings, tmp_path, demo=True).name == "software"
    # The committed file itself, whatever mode the clone gave it, in the demo configuration:
    assert open_hsm(HsmSettings(lmk_file="keys/lmk"), DEMO_DIR, demo=True).name == "software"
    secret_file(tmp_path, "own", f"{os.urandom(32).hex()}\n", 0o600)
    assert open_hsm(HsmSettings(lmk_file="own"), tmp_path).name == "software"


def test_secret_files_open_to_others_or_empty_are_refused(tmp_path):
    secret_file(tmp_path, "lmk", f"# the LMK\n{os.urandom(32).hex()}\n", 0o640)
    with pytest.raises(HsmError, match=r"the LMK file .*lmk is open to other users \(mode 640\)"):
        open_hsm(HsmSettings(lmk_file="lmk"), tmp_path)
    assert open_hsm(HsmSettings(lmk_file="lmk"), tmp_path, demo=True).name == "software"
    secret_file(tmp_path, "blank", " \n", 0o600)
    with pytest.raises(HsmError, match=r"the LMK file .*blank is empty"):
        open_hsm(HsmSettings(lmk_file="blank"), tmp_path)
    # The token's PIN file, refused before the token is reached:
    pkcs11 = HsmSettings(backend="pkcs11", token_label="paysw", pin_file="pin")
    secret_file(tmp_path, "pin", "246810\n", 0o604)
    with pytest.raises(HsmError, match=r"the token PIN file .*pin is open to other users \(mode 604\)"):
        open_hsm(pkcs11, tmp_path)
    secret_file(tmp_path, "pin", "\n", 0o600)
    with pytest.raises(HsmError, match=r"the token PIN file .*pin is empty"):
        open_hsm(pkcs11, tmp_path)
