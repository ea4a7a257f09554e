"""Debian packages some tests need (Prometheus, SoftHSM2): installed where absent and possible,
else the test is skipped with a message saying so (failed under ``CI=true``: ``tests.required``)."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

from tests.required import missing


def debian_binary(binary: str, package: str) -> str:
    """The path of ``binary``, installing Debian's ``package`` first when it is missing."""
    found = shutil.which(binary)
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        # Test processes run side by side (xdist): one apt at a time, and the second finds it done.
        with open(APT_LOCK, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not shutil.which(binary):
                env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
                for step in (
                    ["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
                ):
                    subprocess.run(step, capture_output=True, timeout=600, env=env)
        found = shutil.which(binary)
    if not found:
        missing(f"no {binary}, and Debian's {package} package could not be installed here")
    return found


APT_LOCK = "/tmp/paysw-tests-apt.lock"
SOFTHSM_LIBRARY = "/usr/lib/softhsm/libsofthsm2.so"


def softhsm_token(folder: Path, label: str = "paysw-test", pin: str = "246810") -> tuple[str, str, str]:
    """A fresh SoftHSM2 token in ``folder`` with the switch's LMK in it: (library, label, PIN).
    SOFTHSM2_CONF is set for this process and the processes it starts."""
    util = debian_binary("softhsm2-util", "softhsm2")
    from hsm.pkcs11 import Pkcs11Hsm

    (folder / "tokens").mkdir(parents=True, exist_ok=True)
    conf = folder / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {folder / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    subprocess.run(
        [util, "--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", pin + "0"],
        check=True,
        capture_output=True,
    )
    Pkcs11Hsm.create_lmk(SOFTHSM_LIBRARY, label, pin)
    return SOFTHSM_LIBRARY, label, pin
