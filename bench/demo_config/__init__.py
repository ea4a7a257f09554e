"""The demo's configuration files and DEMO TEST KEYS (see keys/README.md)."""

from pathlib import Path

DEMO_DIR = Path(__file__).parent
DEMO_SWITCH_CONFIG = DEMO_DIR / "switch.toml"
DEMO_SIMULATORS_CONFIG = DEMO_DIR / "simulators.toml"
DEMO_KEY_MANIFEST = DEMO_DIR / "keys" / "manifest.toml"


def absolute_paths(text: str) -> str:
    """A demo configuration's text with its paths (keys, risk rules) made absolute, for a copy of
    it written elsewhere."""
    return text.replace('"keys/', f'"{DEMO_DIR}/keys/').replace('"risk/', f'"{DEMO_DIR}/risk/')


def demo_material(label: str) -> bytes:
    """The clear material of a demo key, by its key store label (for tests of the far side)."""
    from switch.keystore import material_of, read_manifest

    entry = read_manifest(DEMO_KEY_MANIFEST)[label]
    return material_of(entry.kind, DEMO_KEY_MANIFEST.parent / entry.file)


def demo_account(channel: str):
    """The switch's demo account at ``channel`` and its ``Crypto`` made from the clear demo keys
    (as the actor makes it through the HSM): to build and read a channel's messages outside the
    switch."""
    from hsm import algorithms
    from protocols.channels.base import Crypto
    from switch.config import account_of, load_config

    account = account_of(load_config(DEMO_SWITCH_CONFIG).channels[channel])
    keys, labels = account.keys, account.keys.labels()
    dek = demo_material(labels["seal"]) if "seal" in labels else b""
    crypto = Crypto(
        algorithms.signer(keys.sign_algorithm, demo_material(labels["sign"])),
        algorithms.verifier(keys.verify_algorithm, demo_material(labels["verify"])),
        (lambda text: algorithms.sm4_cbc_encrypt(dek, text.encode()).hex().upper()) if dek else None,
    )
    return account, crypto
