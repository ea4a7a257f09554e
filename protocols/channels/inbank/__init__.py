"""The bank's own in-bank payment code, on the bank JSON shape (``protocols.channels.bankjson``),
signed HMAC-SM3; the payment code travels as it is."""

from protocols.channels.bankjson import Paths, bank_channel
from protocols.channels.bankjson.flows import BankAccount
from protocols.messages import CANCEL, PAY, QUERY, REFUND

PATHS = Paths(
    {
        PAY: "/openapi/v1/qrcode/pay",
        QUERY: "/openapi/v1/qrcode/query",
        CANCEL: "/openapi/v1/qrcode/cancel",
        REFUND: "/openapi/v1/qrcode/refund",
    },
    statement="/openapi/v1/bill/download",
)

channel = bank_channel("inbank", BankAccount, PATHS, "bench.simulators.channels.inbank", seals_code=False)
