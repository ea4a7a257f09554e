"""Internal message types that cross process boundaries (front end <-> channel actors).

msgspec Structs encoded as MessagePack arrays: compact and fast to encode a batch at once.
"""

from __future__ import annotations

from enum import StrEnum

import msgspec


class Outcome(StrEnum):
    """What a channel call established about the money."""

    APPROVED = "APPROVED"  # the channel took the money
    DECLINED = "DECLINED"  # the channel certainly did not take it (refused, or never received it)
    PENDING = "PENDING"  # the customer is still confirming ("user paying")
    UNKNOWN = "UNKNOWN"  # it may or may not have happened: must be resolved by a query


class ChannelRequest(msgspec.Struct, array_like=True, frozen=True):
    """One payment to send to a channel. ``auth_code`` is the customer's payment code or card
    number: it lives in memory only, never in a log or the journal."""

    key: int  # correlation id within the sending front end
    op: str  # "pay"
    out_trade_no: str
    amount_fen: int
    auth_code: str
    merchant_channel_id: str
    terminal_id: str
    deadline: float  # epoch seconds; no work is done after it
    subject: str = "POS purchase"


class ChannelResult(msgspec.Struct, array_like=True, frozen=True):
    key: int
    outcome: Outcome
    response_code: str  # ISO 8583 field 39 for the terminal
    channel_code: str = ""  # the channel's own result code, for the journal
    channel_message: str = ""
    channel_txn_id: str = ""
    sent: bool = True  # False when the request certainly never left the switch


BATCH_ENCODER = msgspec.msgpack.Encoder()
REQUESTS_DECODER = msgspec.msgpack.Decoder(list[ChannelRequest])
RESULTS_DECODER = msgspec.msgpack.Decoder(list[ChannelResult])
