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


PAY, QUERY, CANCEL, REFUND = "pay", "query", "cancel", "refund"
# A QR order the customer scans (the merchant's code, 主扫): ``precreate`` it at the channel, and
# ``close`` it unpaid when it expires (a closed order can no longer be paid).
PRECREATE, CLOSE = "precreate", "close"


class ChannelRequest(msgspec.Struct, array_like=True, frozen=True):
    """One call to a channel about one payment: ``pay`` it, ``query`` its state, ``cancel`` it
    (close it unpaid, or reverse it if paid), or ``refund`` part or all of it (``amount_fen`` of
    ``total_fen``, under the refund's own number ``refund_no``, which makes it idempotent).
    ``auth_code`` is the customer's payment code or card number, and ``pin_block`` its PIN
    encrypted for the channel, both in memory only (never in a log or the journal); empty but
    for pay."""

    key: int  # correlation id within the sending front end
    op: str  # PAY, QUERY, CANCEL or REFUND
    out_trade_no: str
    amount_fen: int
    auth_code: str
    merchant_channel_id: str
    terminal_id: str
    deadline: float  # epoch seconds; no work is done after it
    created: float = 0.0  # epoch seconds of the write-ahead: the order time the channel is told
    channel_txn_id: str = ""  # the channel's id of the payment, when known (some cancels need it)
    subject: str = "POS purchase"
    refund_no: str = ""  # refund: its own order number at the channel
    total_fen: int = 0  # refund: the payment's whole amount
    pin_block: str = ""  # card pay with a PIN: the block under the channel's zone PIN key, hex
    notify_url: str = ""  # precreate: where the channel posts its notification that the order is paid
    expires: float = 0.0  # precreate: epoch seconds after which the order can no longer be paid


class ChannelResult(msgspec.Struct, array_like=True, frozen=True):
    """The answer to a ``ChannelRequest``. What ``outcome`` says depends on the operation:

    - pay: APPROVED paid, PENDING customer still confirming, DECLINED refused, UNKNOWN may be paid.
    - query: APPROVED paid, PENDING still paying, DECLINED closed or failed (``channel_code``
      NOT_FOUND when the channel has no such order), UNKNOWN could not tell.
    - cancel: APPROVED cancelled (the channel keeps no money), UNKNOWN call again, DECLINED refused.
    - refund: APPROVED accepted (the money goes back), UNKNOWN call again (same refund_no), DECLINED refused.
    - precreate: PENDING created, ``qr_code`` what the customer scans (nothing paid yet), DECLINED
      refused (no order), UNKNOWN it may exist (queried, and closed).
    - close: APPROVED closed (it can no longer be paid), DECLINED refused (paid meanwhile: query it),
      UNKNOWN call again.
    """

    key: int
    outcome: Outcome
    response_code: str  # ISO 8583 field 39 for the terminal
    channel_code: str = ""  # the channel's own result code, for the journal
    channel_message: str = ""
    channel_txn_id: str = ""
    sent: bool = True  # False when the request certainly never left the switch
    qr_code: str = ""  # precreate: the content of the QR code the customer scans


NOT_FOUND = "NOTEXIST"  # channel_code of a query for an order the channel never had

BATCH_ENCODER = msgspec.msgpack.Encoder()
REQUESTS_DECODER = msgspec.msgpack.Decoder(list[ChannelRequest])
RESULTS_DECODER = msgspec.msgpack.Decoder(list[ChannelResult])
