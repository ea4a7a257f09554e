"""The demo's configuration files and DEMO TEST KEYS (see keys/README.md)."""

from pathlib import Path

DEMO_DIR = Path(__file__).parent
DEMO_SWITCH_CONFIG = DEMO_DIR / "switch.toml"
DEMO_SIMULATORS_CONFIG = DEMO_DIR / "simulators.toml"
DEMO_KEY_MANIFEST = DEMO_DIR / "keys" / "manifest.toml"


def demo_material(label: str) -> bytes:
    """The clear material of a demo key, by its key store label (for tests of the far side)."""
    from switch.keystore import material_of, read_manifest

    entry = read_manifest(DEMO_KEY_MANIFEST)[label]
    return material_of(entry.kind, DEMO_KEY_MANIFEST.parent / entry.file)
