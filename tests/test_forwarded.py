"""The address a request came from through trusted proxies (``switch.forwarded``): only what a
trusted proxy wrote is believed, walking X-Forwarded-For back from its end."""

import re

import pytest

from bench.demo_config import DEMO_DIR
from switch.config import ConfigError, load_config
from switch.forwarded import MAX_HOPS, client_address, networks

GATEWAYS = networks(["10.1.0.0/16", "2001:db8:1::/48", "192.0.2.10"])


@pytest.mark.parametrize(
    ("remote", "forwarded_for", "client"),
    [
        ("198.51.100.7", [], "198.51.100.7"),  # no proxy: the connection's
        ("198.51.100.7", ["203.0.113.1"], "198.51.100.7"),  # not a trusted proxy: the header is anyone's
        ("10.1.2.3", ["203.0.113.1"], "203.0.113.1"),
        ("10.1.2.3", [], "10.1.2.3"),  # a proxy's own request, or one that forwards nothing
        ("10.1.2.3", ["6.6.6.6, 203.0.113.1"], "203.0.113.1"),  # what the client wrote before it: not believed
        ("10.1.2.3", ["6.6.6.6, 203.0.113.1, 192.0.2.10"], "203.0.113.1"),  # through two proxies
        ("10.1.2.3", ["6.6.6.6", "203.0.113.1", "10.1.9.9"], "203.0.113.1"),  # as several headers
        ("10.1.2.3", ["10.1.0.5, 10.1.0.6"], "10.1.0.5"),  # all proxies: the first
        ("10.1.2.3", ["203.0.113.1, junk"], "10.1.2.3"),  # the proxy wrote no address: the proxy
        ("10.1.2.3", ["203.0.113.1:5123"], "203.0.113.1"),  # with the port, as some write it
        ("10.1.2.3", ["[2001:db8:9::5]:443"], "2001:db8:9::5"),
        ("2001:db8:1::7", ["2001:db8:9::5"], "2001:db8:9::5"),
        ("::ffff:10.1.2.3", ["203.0.113.1"], "203.0.113.1"),  # a dual-stack socket's IPv4 proxy
        ("::ffff:198.51.100.7", ["203.0.113.1"], "198.51.100.7"),
        (None, ["203.0.113.1"], "?"),
        ("10.1.2.3", ["203.0.113.1, "], "10.1.2.3"),  # an empty entry is no address
        ("10.1.2.3", ["[10.1.9.9"], "10.1.2.3"),  # nor half a bracketed one
        ("10.1.2.3", ["fe80::1%eth0"], "fe80::1"),  # the zone is the proxy's, not the client's
    ],
)
def test_only_what_a_trusted_proxy_wrote_is_believed(remote, forwarded_for, client):
    assert client_address(remote, forwarded_for, GATEWAYS) == client


def test_a_chain_of_proxies_longer_than_any_banks_is_walked_back_only_so_far():
    hops = ["203.0.113.1", *(f"10.1.0.{n}" for n in range(1, 21))]  # twenty proxies' worth
    assert client_address("10.1.2.3", [", ".join(hops)], GATEWAYS) == f"10.1.0.{21 - MAX_HOPS}"


def test_without_trusted_proxies_the_header_is_ignored():
    assert client_address("10.1.2.3", ["203.0.113.1"], []) == "10.1.2.3"


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("gateway", "'gateway' is not an address or network"),
        ("10.1.0.5/16", "'10.1.0.5/16' is not an address or network"),  # one host, or a /16?
        ("0.0.0.0/0", "'0.0.0.0/0' is wider than /8"),  # would believe every client
        ("::/0", "'::/0' is wider than /32"),
    ],
)
def test_a_trusted_proxy_that_is_no_proxies_network_is_refused_by_its_path(tmp_path, spec, problem):
    config = tmp_path / "switch.toml"
    config.write_text(
        (DEMO_DIR / "switch.toml").read_text() + f'\n[console]\ntrusted_proxies = ["10.1.0.0/16", "{spec}"]\n'
    )
    with pytest.raises(ConfigError, match=re.escape(f"$.console.trusted_proxies[1]: {problem}")):
        load_config(config)
