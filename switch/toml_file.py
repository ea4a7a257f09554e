"""Reading a TOML file into its schema, every failure worded the same way: the path, then what is
wrong and where (msgspec names the field, ``$.a.b[0].c``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import msgspec

T = TypeVar("T")
_TOML_TYPES = (dt.datetime, dt.date, dt.time)


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
        message = _named(raw, schema, str(exc))
        raise error(f"{path}: {message}{hint(message)}") from None
    except msgspec.DecodeError as exc:
        raise error(f"{path}: not valid TOML: {exc}") from None


def _named(raw: bytes, schema: type, message: str) -> str:
    """``message`` with the table msgspec calls ``[...]`` (an entry of a table of tables, such as
    ``[channels.NAME]``) named: the entry that fails the same way on its own."""
    at = " - at `"
    where = message.rpartition(at)[2].rstrip("`")
    prefix, found, _ = where.partition("[...]")
    names = prefix.removeprefix("$.").split(".")
    if not found or not all(n.isidentifier() for n in names):
        return message
    doc = msgspec.toml.decode(raw)
    parent, table = doc, doc
    for name in names:
        parent, table = table, table.get(name) if isinstance(table, dict) else None
    if not isinstance(table, dict):
        return message
    for key, entry in table.items():
        parent[names[-1]] = {key: entry}
        try:
            msgspec.convert(doc, schema, builtin_types=_TOML_TYPES, str_keys=True)  # as toml.decode reads
        except msgspec.ValidationError as alone:
            if str(alone) == message:
                return message.replace(f"{prefix}[...]", f"{prefix}.{key}", 1)
    return message
