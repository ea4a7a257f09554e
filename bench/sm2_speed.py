"""``paysw bench sm2``: SM2 signatures (and verifications) a second on one core, for the HSM's
implementation (``hsm.sm2``) and, in the same run on the same data, for the pure-Python ``gmssl``
package as the baseline; RSA-2048 (OpenSSL through ``cryptography``, what Alipay and UnionPay
signatures cost) for scale. The issue's bar: at least 1,000 SM2 signatures a second."""

from __future__ import annotations

import json
import os
import platform
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from bench.provenance import provenance
from hsm import sm2

BODY = b'{"amount":"12.34","auth_code":"0112345678901234567","mch_id":"ECNYMCH0001","out_trade_no":"x"}' * 2


def per_second(operation: Callable[[], object], seconds: float) -> float:
    """Operations a second, timed over ``seconds`` after a short warm-up, in this one thread."""
    for _ in range(3):
        operation()
    done, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for _ in range(10):
            operation()
        done += 10
    return done / elapsed


def key_gmssl_can_read() -> tuple[int, sm2.SigningKey]:
    """A random key whose public x does not begin with the hex digits 04: gmssl 3.2.2 takes the
    public key through ``lstrip("04")``, which then eats the start of x (1 key in 256)."""
    while True:
        secret = secrets.randbelow(sm2.SM2P256.n - 2) + 1
        key = sm2.SigningKey(secret)
        if not key.public_key_hex()[2:].startswith("04"):
            return secret, key


def measure(seconds: float) -> dict[str, object]:
    secret, ours = key_gmssl_can_read()
    public = sm2.VerifyingKey(ours.public)
    signature = ours.sign(BODY)
    rates: dict[str, float] = {
        "sm2_sign_paysw": per_second(lambda: ours.sign(BODY), seconds),
        "sm2_verify_paysw": per_second(lambda: public.verify(BODY, signature), seconds),
    }
    try:
        from gmssl import sm2 as gmssl_sm2

        theirs = gmssl_sm2.CryptSM2(private_key=f"{secret:064x}", public_key=ours.public_key_hex()[2:])
        their_signature = theirs.sign_with_sm3(BODY)
        rates["sm2_sign_gmssl"] = per_second(lambda: theirs.sign_with_sm3(BODY), seconds)
        rates["sm2_verify_gmssl"] = per_second(lambda: theirs.verify_with_sm3(their_signature, BODY), seconds)
    except ImportError:  # the baseline is optional: pip install gmssl
        pass
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rates["rsa2048_sign_openssl"] = per_second(lambda: rsa_key.sign(BODY, padding.PKCS1v15(), hashes.SHA256()), seconds)
    ratios = {}
    if "sm2_sign_gmssl" in rates:
        ratios["sign_vs_gmssl"] = rates["sm2_sign_paysw"] / rates["sm2_sign_gmssl"]
        ratios["verify_vs_gmssl"] = rates["sm2_verify_paysw"] / rates["sm2_verify_gmssl"]
    ratios["sign_vs_rsa2048"] = rates["sm2_sign_paysw"] / rates["rsa2048_sign_openssl"]
    return {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "processor": platform.machine()},
        "seconds_per_measure": seconds,
        "per_second": {k: round(v, 1) for k, v in rates.items()},
        "ratios": {k: round(v, 2) for k, v in ratios.items()},
        "meets_1000_signatures_per_second": rates["sm2_sign_paysw"] >= 1000,
    }


def main(seconds: float, out: Path | None) -> int:
    result = {**provenance(), **measure(seconds)}
    print(f"{'operation':<24} {'per second':>12}")
    for name, rate in result["per_second"].items():  # type: ignore[union-attr]
        print(f"{name:<24} {rate:>12,.0f}")
    for name, ratio in result["ratios"].items():  # type: ignore[union-attr]
        print(f"{name:<24} {ratio:>11.1f}x")
    if out is not None:
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written to {out}")
    return 0 if result["meets_1000_signatures_per_second"] else 1
