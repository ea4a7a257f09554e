"""The demo's configuration files and DEMO TEST KEYS (see keys/README.md)."""

from pathlib import Path

DEMO_DIR = Path(__file__).parent
DEMO_SWITCH_CONFIG = DEMO_DIR / "switch.toml"
DEMO_SIMULATORS_CONFIG = DEMO_DIR / "simulators.toml"
