"""The merchants' signature, as Jeepay and DaxPay sign: HMAC-SHA256 or HMAC-SM3 with the
merchant's key over its non-empty parameters sorted by name, ``k1=v1&k2=v2``, upper-case hex in
``sign``, with ``sign_type`` naming the algorithm. Every request carries a ``timestamp`` (epoch
milliseconds) and a ``nonce``: one too far from now, or a nonce seen before, is a replay. The
switch signs its notifications to merchants the same way."""

from __future__ import annotations

from collections.abc import Mapping

from protocols.channels.base import sorted_query

SIGN_TYPES = {"HMAC-SHA256": "hmac-sha256", "HMAC-SM3": "hmac-sm3"}  # sign_type -> hsm.algorithms scheme
UNSIGNED = frozenset({"sign"})


def signing_input(params: Mapping[str, object]) -> bytes:
    """The text signed: non-empty values (objects and lists are refused before), sorted by name."""
    return sorted_query({k: _text(v) for k, v in params.items()}, UNSIGNED).encode()


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
