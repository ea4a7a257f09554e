"""Reading a TOML file into its schema, every failure worded the same way: the path, then what is
wrong and where (msgspec names the field, ``$.a.b[0].c``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import msgspec

T = TypeVar("T")


def read_toml(path: Path, schema: type[T], error: type[Exception], hint: Callable[[str], str] = lambda _: "") -> T:
    """``path`` decoded as ``schema``; raises ``error`` naming the path (and ``hint(message)``
    after a schema error)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return msgspec.toml.decode(raw, type=schema)
    except msgspec.ValidationError as exc:
        raise error(f"{path}: {exc}{hint(str(exc))}") from None
    except msgspec.DecodeError as exc:
        raise error(f"{path}: not valid TOML: {exc}") from None
