"""Channel wire formats, one module per channel. The router knows none of them by name: a
channel's configuration names its ``kind``, looked up here."""

from __future__ import annotations

from importlib import import_module
from types import ModuleType

KINDS = ("wechat", "alipay", "unionpay", "ecny", "inbank")


def module_of(kind: str) -> ModuleType:
    if kind not in KINDS:
        raise KeyError(f"unknown channel kind {kind!r}; known: {', '.join(KINDS)}")
    return import_module(f"protocols.channels.{kind}")
