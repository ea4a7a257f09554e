"""``[console]``: the operators' web console (``switch.console``), a process of its own
(``paysw console serve``) on a listener of its own."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct

from switch.addresses import HostPort
from switch.forwarded import network_problems


class ConsoleSection(Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    listen: HostPort = "127.0.0.1:9585"
    # A session ends after this long without a request, and in any case this long after sign-in.
    idle_minutes: Annotated[int, Meta(ge=1, le=240)] = 30
    max_hours: Annotated[int, Meta(ge=1, le=24)] = 12
    # Sign-in is refused, whatever the password, after this many failures for one account (or
    # four times as many from one address) within the window: a guesser gets a handful an hour.
    sign_in_failures: Annotated[int, Meta(ge=1, le=100)] = 5
    sign_in_window_minutes: Annotated[int, Meta(ge=1, le=1440)] = 15
    # The switch's admin endpoints the channel actions go to (every front end, or the supervisor
    # of each `paysw run --workers`); none: the configuration's admin_listen. They are reached with
    # the admin token: over https when [switch] admin_tls_cert is set, else on loopback only.
    admin_endpoints: list[HostPort] = []
    # Host headers accepted besides listen's own (a TLS gateway's public name, say): any other is
    # refused (421), so that a page of another site cannot reach the console by DNS rebinding.
    hosts: list[str] = []
    # Networks of the proxies in front of the console (the TLS gateway, say): a connection from
    # one is taken to be from the address its X-Forwarded-For names (the last not a proxy's), for
    # the sign-in limits and the audit. None (the default): every connection is its own address,
    # and behind a gateway all users share the gateway's (a stranger's failures lock all out).
    trusted_proxies: list[str] = []  # checked by problems()
    # Handing a dead letter back to the resolver (which may return its money), resolving a
    # reconciliation difference by hand (settlement then pays it) and taking an entry off the black
    # list (which lets it pay again) take a second operator's approval, and a change of the live
    # configuration (merchants, terminals, gray routes, limits, risk rules) a second admin's: one
    # asks, another approves or rejects. Off: whoever asks does it.
    four_eyes: bool = True
    # A configuration change, a hand-back, a resolution or a black list removal asked and not
    # approved within this long lapses: an approval is of a request as its time saw it.
    change_max_hours: Annotated[int, Meta(ge=1, le=720)] = 24
    # The session cookie only over https: on unless the console listens on loopback (or behind
    # a TLS gateway that sets this true). DEMO and loopback only: plain http.
    secure_cookie: bool | None = None

    def problems(self) -> list[str]:
        """What is wrong across its fields, by path."""
        return network_problems(self.trusted_proxies, "$.console.trusted_proxies")
