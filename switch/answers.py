"""Building answers (spec section 3, "Fields of an answer")."""

from __future__ import annotations

from protocols.iso8583 import Message, answer_mti

ECHOED = ("2", "3", "4", "7", "11", "12", "13", "41", "42", "49")
NETWORK_ECHOED = ("7", "11", "41", "42", "70")
CARRIES_RRN = frozenset({"0210", "0110", "0410"})


def answer(
    request: Message,
    code: str,
    *,
    rrn: str = "",
    auth_id: str = "",
    channel_txn_id: str = "",
) -> Message:
    """The answer to ``request`` with response code ``code``. ``rrn`` must be given for the
    answers that always carry one (0210, 0110, 0410)."""
    mti = answer_mti(request["t"]) or "0000"
    echoed = NETWORK_ECHOED if mti == "0810" else ECHOED
    out: Message = {"t": mti}
    for field in echoed:
        value = request.get(field)
        if value:
            out[field] = value
    out["39"] = code
    if mti in CARRIES_RRN:
        assert rrn, f"{mti} answers carry field 37"
        out["37"] = rrn
    if auth_id:
        out["38"] = auth_id
    if channel_txn_id:
        out["62"] = channel_txn_id
    return out


def auth_id_for(rrn: str) -> str:
    """Field 38 of an approval: the last 6 digits of its RRN, unique among 10^6 neighbours."""
    return rrn[-6:]
