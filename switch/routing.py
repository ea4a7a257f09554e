"""Routing by payment code or card number (spec section 5). The table is configuration: payment
codes (entry mode 031) by prefix and length, cards (021 / 051) by BIN with a Luhn check. The
longest matching prefix wins. Then gray routes (``[[routing.gray]]``) send some merchants'
purchases on a channel to another destination: those named, and a share of all, by hash."""

from __future__ import annotations

import hashlib

from protocols.masking import luhn_ok
from protocols.validation import ROUTED, Rejection
from switch.config import RoutingSection

CODE_ENTRY = "031"


class Router:
    def __init__(self, routing: RoutingSection) -> None:
        self._codes = sorted(
            ((prefix, route) for route in routing.codes for prefix in route.prefixes),
            key=lambda item: -len(item[0]),
        )
        self._bins = sorted(((b.prefix, b.channel) for b in routing.card_bins), key=lambda item: -len(item[0]))
        self._gray = {g.channel: (g.to, g.percent, frozenset(g.merchants)) for g in routing.gray}

    def route(self, pan: str, entry_mode: str) -> str | Rejection:
        """The channel for ``pan``, or a ``14`` rejection saying why there is none."""
        if entry_mode == CODE_ENTRY:
            for prefix, route in self._codes:
                if pan.startswith(prefix):
                    if len(pan) not in route.lengths:
                        return ROUTED.reject("2", f"wrong length for {route.channel}")
                    if route.luhn and not luhn_ok(pan):
                        return ROUTED.reject("2", f"check digit for {route.channel}")
                    return route.channel
            return ROUTED.reject("2", "no route for this payment code")
        if not 13 <= len(pan) <= 19 or not luhn_ok(pan):
            return ROUTED.reject("2", "card number length or check digit")
        for prefix, channel in self._bins:
            if pan.startswith(prefix):
                return channel
        return ROUTED.reject("2", "no route for this card BIN")

    def divert(self, channel: str, merchant_id: str) -> str:
        """Where a purchase of ``merchant_id`` that routes to ``channel`` goes: a gray route's
        destination for the merchants it takes, else ``channel``."""
        gray = self._gray.get(channel)
        if gray is None:
            return channel
        to, percent, named = gray
        return to if merchant_id in named or share_of(merchant_id) < percent else channel


def share_of(merchant_id: str) -> int:
    """The merchant's place, 0-99, in every gray route's percentage: the same on every front end
    and after every restart, so raising a percentage only adds merchants."""
    return int.from_bytes(hashlib.sha256(merchant_id.encode()).digest()[:4], "big") % 100
