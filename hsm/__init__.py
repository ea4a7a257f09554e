"""The only place that touches key material. Callers get bound operations (sign, verify,
fingerprint), never a key. Software backend on ``cryptography``; keys are read from files named
in the configuration (encryption of keys at rest under a master key and a PKCS#11 backend are
the HSM issue's work, behind this same interface)."""

from hsm.software import ALGORITHMS, KeyError_, SoftwareHsm

__all__ = ["ALGORITHMS", "KeyError_", "SoftwareHsm"]
