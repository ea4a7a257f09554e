"""The merchants' signature, as Jeepay and DaxPay sign: HMAC-SHA256 or HMAC-SM3 with the
merchant's key over its non-empty parameters sorted by name, ``k1=v1&k2=v2``, upper-case hex in
``sign``, with ``sign_type`` naming the algorithm. A request to the merchant API signs its method
and path too, ``POST /v1/orders/T1/close`` and a newline before the parameters (as WeChat Pay v3
signs its request line), so that a signature for one call (a query) is none for another (a close).
Every request carries a ``timestamp`` (epoch milliseconds) and a ``nonce``: one too far from now,
or a nonce seen before, is a replay. The switch signs its notifications to merchants by their
parameters alone (one URL, one kind of call)."""

from __future__ import annotations

from collections.abc import Mapping

from protocols.channels.base import sorted_query

SIGN_TYPES = {"HMAC-SHA256": "hmac-sha256", "HMAC-SM3": "hmac-sm3"}  # sign_type -> hsm.algorithms scheme
UNSIGNED = frozenset({"sign"})


def signing_input(params: Mapping[str, object]) -> bytes:
    """The text signed: non-empty values (objects and lists are refused before), sorted by name."""
    return sorted_query({k: _text(v) for k, v in params.items()}, UNSIGNED).encode()


def request_signing_input(method: str, path: str, params: Mapping[str, object]) -> bytes:
    """What a merchant's request to the API signs: its method and path, then its parameters."""
    return f"{method} {path}\n".encode() + signing_input(params)


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
