"""The software HSM: signatures verify only with the right key, errors name files not keys."""

import hashlib
import hmac
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes

from bench.demo_config import DEMO_DIR
from hsm import KeyError_, SoftwareHsm

HSM = SoftwareHsm(DEMO_DIR)


def _reference_hmac_sm3(key: bytes, data: bytes) -> bytes:
    """RFC 2104 HMAC built by hand on SM3 (block size 64), as an independent reference."""

    def sm3(b: bytes) -> bytes:
        h = hashes.Hash(hashes.SM3())
        h.update(b)
        return h.finalize()

    key = key.ljust(64, b"\0") if len(key) <= 64 else sm3(key).ljust(64, b"\0")
    inner = sm3(bytes(k ^ 0x36 for k in key) + data)
    return sm3(bytes(k ^ 0x5C for k in key) + inner)


def test_sm3_is_the_standard_one():
    h = hashes.Hash(hashes.SM3())
    h.update(b"abc")  # GB/T 32905-2016 example 1
    assert h.finalize().hex() == "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"


def test_hmac_sm3_matches_a_hand_built_hmac():
    key = (DEMO_DIR / "keys/ecny/hmac_key").read_bytes().strip()
    sign = HSM.signer("hmac-sm3", "keys/ecny/hmac_key")
    assert sign(b"payload") == _reference_hmac_sm3(key, b"payload").hex()


def test_wechat_hmac_appends_the_key_parameter():
    key = (DEMO_DIR / "keys/wechat/api_key").read_bytes().strip()
    sign = HSM.signer("wechat-hmac-sha256", "keys/wechat/api_key")
    assert sign(b"a=1&b=2") == hmac.new(key, b"a=1&b=2&key=" + key, hashlib.sha256).hexdigest().upper()


@pytest.mark.parametrize(
    ("algorithm", "private", "public"),
    [
        ("rsa-sha256", "keys/alipay/app_private.pem", "keys/alipay/app_public.pem"),
        ("hmac-sm3", "keys/inbank/hmac_key", "keys/inbank/hmac_key"),
        ("wechat-hmac-sha256", "keys/wechat/api_key", "keys/wechat/api_key"),
    ],
)
def test_signatures_verify_with_the_right_key_only(algorithm, private, public):
    signature = HSM.signer(algorithm, private)(b"message")
    verify = HSM.verifier(algorithm, public)
    assert verify(b"message", signature)
    assert not verify(b"messagE", signature)
    other = "keys/alipay/platform_public.pem" if algorithm == "rsa-sha256" else "keys/journal/pan_hash_key"
    assert not HSM.verifier(algorithm, other)(b"message", signature)


def test_rsa_verify_refuses_non_base64_without_raising():
    verify = HSM.verifier("rsa-sha256", "keys/alipay/app_public.pem")
    assert not verify(b"message", "not*base64!")


def test_fingerprint_is_keyed_and_stable():
    fingerprint = HSM.fingerprinter("keys/journal/pan_hash_key")
    assert fingerprint("6222020200112233446") == fingerprint("6222020200112233446")
    assert fingerprint("6222020200112233446") != hashlib.sha256(b"6222020200112233446").digest()
    assert fingerprint("6222020200112233446") != fingerprint("6222020200112233447")


def test_key_errors_name_the_file_and_never_the_content(tmp_path: Path):
    (tmp_path / "short").write_text("tiny-secret")
    (tmp_path / "notpem").write_text("SECRET-MATERIAL-THAT-MUST-NOT-LEAK" * 2)
    hsm = SoftwareHsm(tmp_path)
    with pytest.raises(KeyError_, match="short") as short:
        hsm.signer("hmac-sm3", "short")
    assert "tiny-secret" not in str(short.value)
    with pytest.raises(KeyError_, match="notpem") as notpem:
        hsm.signer("rsa-sha256", "notpem")
    assert "SECRET-MATERIAL" not in str(notpem.value)
    with pytest.raises(KeyError_, match="missing"):
        hsm.signer("rsa-sha256", "missing")
    with pytest.raises(KeyError_, match="unknown algorithm"):
        hsm.signer("md5", "short")
