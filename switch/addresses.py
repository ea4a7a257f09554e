"""What a listening address in the configuration is: ``HOST:PORT`` (IPv4 or a name; an IPv6
address has no place in it yet)."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

HOST_PORT = r"^[^:\s/]+:\d{1,5}$"
HostPort = Annotated[str, Meta(pattern=HOST_PORT)]
