"""The bank's own in-bank payment code, and its QR orders the customer scans, on the bank JSON
shape (``protocols.channels.bankjson``), signed HMAC-SM3; the payment code travels as it is."""

from protocols.channels.bankjson import Paths, bank_channel
from protocols.channels.bankjson.flows import BankAccount
from protocols.messages import CANCEL, CLOSE, PAY, PRECREATE, QUERY, REFUND

PATHS = Paths(
    {
        PAY: "/openapi/v1/qrcode/pay",
        QUERY: "/openapi/v1/qrcode/query",
        CANCEL: "/openapi/v1/qrcode/cancel",
        REFUND: "/openapi/v1/qrcode/refund",
        PRECREATE: "/openapi/v1/qrcode/create",
        CLOSE: "/openapi/v1/qrcode/close",
    },
    statement="/openapi/v1/bill/download",
)

channel = bank_channel("inbank", BankAccount, PATHS, "bench.simulators.channels.inbank", seals_code=False)
