"""The address a request came from, when it came through proxies of our own (a TLS gateway, a load
balancer): the connection is the last proxy's, and the client's address is in the
``X-Forwarded-For`` each proxy appends to (the address it was reached from, at the end). Only
what trusted proxies wrote is believed: anyone can send the header, with any addresses in it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

Network = IPv4Network | IPv6Network


def networks(specs: Iterable[str]) -> list[Network]:
    """The networks ``specs`` name (``10.1.0.0/16``, ``2001:db8::/32``, or one address);
    ``ValueError`` for one that is none."""
    return [ip_network(spec.strip(), strict=False) for spec in specs]


def network_problems(specs: Sequence[str], where: str) -> list[str]:
    """What is wrong with ``specs`` as networks, by their path under ``where``."""
    problems = []
    for i, spec in enumerate(specs):
        try:
            ip_network(spec.strip(), strict=False)
        except ValueError:
            problems.append(f"{where}[{i}]: {spec!r} is not an address or network (e.g. 10.1.0.0/16)")
    return problems


def client_address(remote: str | None, forwarded_for: Sequence[str], trusted: Sequence[Network]) -> str:
    """``remote`` (the connection's address) unless it is a trusted proxy's; then, walking
    ``forwarded_for`` (the X-Forwarded-For headers, in order) back from its end, the first
    address that is not a trusted proxy's, or the first of them if all are. An entry that is not
    an address ends the walk at the proxy that wrote it. ``"?"`` when there is no address."""
    address = _parsed(remote or "")
    if address is None:
        return "?"
    hops = [hop for header in forwarded_for for hop in header.split(",")]
    while _within(address, trusted) and hops:
        told = _parsed(hops.pop())
        if told is None:  # what the proxy ``address`` wrote is no address: it is the client we know
            break
        address = told
    return str(address)


def _parsed(text: str) -> IPv4Address | IPv6Address | None:
    """An address as a proxy may write it (``[2001:db8::1]:443``, ``192.0.2.1:80`` too), an IPv4
    address mapped into IPv6 as IPv4; None for anything else."""
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ip_address(text)
    except ValueError:
        return None
    return address.ipv4_mapped or address if isinstance(address, IPv6Address) else address


def _within(address: IPv4Address | IPv6Address, trusted: Sequence[Network]) -> bool:
    return any(address in network for network in trusted)
