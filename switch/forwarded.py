"""The address a request came from, when it came through proxies of our own (a TLS gateway, a load
balancer): the connection is the last proxy's, and the client's address is in the
``X-Forwarded-For`` each proxy appends to (the address it was reached from, at the end). Only
what trusted proxies wrote is believed: anyone can send the header, with any addresses in it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

Network = IPv4Network | IPv6Network
MAX_HOPS = 16  # proxies walked back through at most: a header is the client's to make long
SHORTEST = {4: 8, 6: 32}  # shorter prefixes are the internet's, not a bank's proxies'


def networks(specs: Iterable[str]) -> list[Network]:
    """The networks ``specs`` name (``10.1.0.0/16``, ``2001:db8::/48``, or one address);
    ``ValueError`` for one that is none."""
    return [ip_network(spec.strip()) for spec in specs]


def network_problems(specs: Sequence[str], where: str) -> list[str]:
    """What is wrong with ``specs`` as networks of proxies, by their path under ``where``: not a
    network (host bits set included: ``10.1.0.5/16`` is one address or a /16, not both), or
    wider than any bank's proxies (``0.0.0.0/0`` would believe every client)."""
    problems = []
    for i, spec in enumerate(specs):
        try:
            network = ip_network(spec.strip())
        except ValueError as exc:
            problems.append(f"{where}[{i}]: {spec!r} is not an address or network (e.g. 10.1.0.0/16): {exc}")
            continue
        if network.prefixlen < SHORTEST[network.version]:
            problems.append(
                f"{where}[{i}]: {spec!r} is wider than /{SHORTEST[network.version]}: "
                "list the proxies' own addresses, not the clients'"
            )
    return problems


def client_address(remote: str | None, forwarded_for: Sequence[str], trusted: Sequence[Network]) -> str:
    """``remote`` (the connection's address) unless it is a trusted proxy's; then, walking
    ``forwarded_for`` (the X-Forwarded-For headers, in order) back from its end, the first
    address that is not a trusted proxy's, or if all are (or past ``MAX_HOPS`` of them) the
    furthest walked to. An entry that is not an address ends the walk at the proxy that wrote it. ``"?"`` when there
    is no address."""
    address = _parsed(remote or "")
    if address is None:
        return "?"
    if not _within(address, trusted):
        return str(address)
    hops = ",".join(forwarded_for).rsplit(",", MAX_HOPS)[-MAX_HOPS:]  # only the last ones are split
    while _within(address, trusted) and hops:
        told = _parsed(hops.pop())
        if told is None:  # what the proxy ``address`` wrote is no address: it is the client we know
            break
        address = told
    return str(address)


def _parsed(text: str) -> IPv4Address | IPv6Address | None:
    """An address as a proxy may write it (``[2001:db8::1]:443``, ``192.0.2.1:80`` too; a zone
    dropped), an IPv4 address mapped into IPv6 as IPv4; None for anything else."""
    text = text.strip()
    if text.startswith("["):
        text, closed, _ = text[1:].partition("]")
        if not closed:
            return None
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ip_address(text.partition("%")[0])
    except ValueError:
        return None
    return address.ipv4_mapped or address if isinstance(address, IPv6Address) else address


def _within(address: IPv4Address | IPv6Address, trusted: Sequence[Network]) -> bool:
    return any(address in network for network in trusted)
