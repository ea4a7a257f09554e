"""The bank's own in-bank payment code, on the bank JSON shape."""

from protocols.channels.bankjson import BankJsonChannelSide, BankJsonConnector
from protocols.messages import CANCEL, PAY, QUERY, REFUND

name = "inbank"
paths = {
    PAY: "/openapi/v1/qrcode/pay",
    QUERY: "/openapi/v1/qrcode/query",
    CANCEL: "/openapi/v1/qrcode/cancel",
    REFUND: "/openapi/v1/qrcode/refund",
}
connector = BankJsonConnector(name, paths)
channel_side = BankJsonChannelSide(name, paths)
