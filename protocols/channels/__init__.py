"""Channels, one package each. The switch knows none of them by name: a channel's configuration
names its ``kind``, and the package of that kind gives its descriptor (``base.Channel``) as the
module attribute ``channel``.

A kind without a dot is a package here (``wechat`` is ``protocols.channels.wechat``); a dotted
kind is any importable package (``acme.paysw_channel``), so a bank can keep a channel of its own
outside this tree and add it by configuration alone. Importing a package runs its code: the
switch's configuration only lets a dotted kind be loaded when it also lists it in
``[switch] channel_packages`` (``switch.config``).
"""

from __future__ import annotations

import pkgutil
from functools import cache
from importlib import import_module

from protocols.channels.base import Channel


class UnknownChannel(LookupError):
    """No channel package of that kind: the message says which kinds there are."""


@cache
def channel_of(kind: str) -> Channel:
    """The descriptor of channel kind ``kind``; ``UnknownChannel`` naming the known kinds."""
    name = kind if "." in kind else f"{__name__}.{kind}"
    if not all(part.isidentifier() for part in name.split(".")):
        raise UnknownChannel(f"{kind!r} is not a package name")
    try:
        module = import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (name == exc.name or name.startswith(exc.name + ".")):  # one it imports
            raise
        raise UnknownChannel(f"no channel package {kind!r}; built in: {', '.join(builtin_kinds())}") from None
    except Exception as exc:  # a package that fails to load (its descriptor incomplete, say)
        raise UnknownChannel(f"{name} cannot be loaded: {exc}") from exc
    channel = getattr(module, "channel", None)
    if not isinstance(channel, Channel):
        raise UnknownChannel(f"{name} is not a channel package (it has no `channel` descriptor)")
    if channel.kind != kind:
        raise UnknownChannel(f"{name}'s descriptor says it is {channel.kind!r}, not {kind!r}")
    return channel


def builtin_kinds() -> list[str]:
    """The channel packages shipped here (shared API shapes, such as ``bankjson``, have no descriptor)."""
    return [
        info.name
        for info in pkgutil.iter_modules(__path__)
        if info.ispkg and isinstance(getattr(import_module(f"{__name__}.{info.name}"), "channel", None), Channel)
    ]
