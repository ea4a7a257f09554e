"""Reading a secret from a file (the LMK, a token PIN, the admin token): one rule for all of them.

A secret file must be a regular file readable by its owner alone (no group or other bits), and
must hold something besides white space. The published demo keys are the one exception, and only
where the caller says the configuration is a demo (``relaxed``): a clone of the repository gives
its files the umask's mode, and those keys are public anyway.
"""

from __future__ import annotations

import logging
import stat
from pathlib import Path

log = logging.getLogger("paysw.secrets")


class SecretFileError(Exception):
    """The secret file is missing, empty or open to other users; the message names the file."""


def read_secret(path: Path, what: str, relaxed: bool = False) -> str:
    """The file's text, stripped. ``what`` names the secret in errors ("the LMK file")."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise SecretFileError(f"cannot read {what} {path}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise SecretFileError(f"{what} {path} is not a regular file")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        if not relaxed:
            raise SecretFileError(
                f"{what} {path} is open to other users (mode {stat.S_IMODE(mode):o}); chmod 600 it"
            )
        log.warning("demo: a secret file open to other users is accepted", extra={"file": str(path)})
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise SecretFileError(f"cannot read {what} {path}: {exc.strerror}") from None
    if not text:
        raise SecretFileError(f"{what} {path} is empty")
    return text
