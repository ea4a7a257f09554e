"""Where the operators' admin token comes from: the configured ``admin_token_file``, else a
token the switch generates at its first start in its data folder (``--data-dir``) and reuses
afterwards. ``paysw channel`` finds it the same way, so an operator in the same folder needs no
flag. Files are read by ``hsm.secret_file``'s rule (owner-only, not empty)."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from hsm.secret_file import SecretFileError, read_secret
from switch.config import Config, ConfigError

log = logging.getLogger("paysw.admin")

GENERATED_TOKEN_FILE = "admin-token"


def token_path(config: Config, data_dir: Path) -> Path:
    """The configured token file, else the one generated under ``data_dir``."""
    if config.switch.admin_token_file:
        return Path(config.base_dir) / config.switch.admin_token_file
    return data_dir / GENERATED_TOKEN_FILE


def read_token(path: Path, relaxed: bool = False) -> str:
    """The token in ``path``; a missing, empty or group/other-readable file is a ConfigError
    (``relaxed``: a demo configuration's own file may be open to others)."""
    try:
        return read_secret(path, "the admin token file", relaxed=relaxed)
    except SecretFileError as exc:
        raise ConfigError(str(exc)) from None


def configured_token(config: Config, data_dir: Path) -> str:
    """The token of ``config`` (a switch run with ``data_dir``). Only a demo configuration's own
    file may be open to others; a generated one never is."""
    return read_token(token_path(config, data_dir), relaxed=config.switch.demo and bool(config.switch.admin_token_file))


def switch_token(config: Config, data_dir: Path) -> str:
    """The token the switch checks operator actions against, generated if none exists yet."""
    path = token_path(config, data_dir)
    if config.switch.admin_token_file:
        log.info("operator actions need the token of the configured admin token file", extra={"file": str(path)})
    elif _generate(path):
        log.warning("admin token generated: operator actions need the token in this file", extra={"file": str(path)})
    else:
        log.info("operator actions need the admin token generated at an earlier start", extra={"file": str(path)})
    return configured_token(config, data_dir)


def _generate(path: Path) -> bool:
    """Write a fresh token to ``path`` unless the file exists; whether it was written. Created
    owner-only in one step, so the token is never readable by others, not even briefly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as file:
        file.write(secrets.token_urlsafe(32) + "\n")
    return True
