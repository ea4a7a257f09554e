"""Digital RMB (e-CNY) merchant-scans-wallet-code payment, on the bank JSON shape."""

from protocols.channels.bankjson import BankJsonChannelSide, BankJsonConnector
from protocols.messages import CANCEL, PAY, QUERY, REFUND

name = "ecny"
paths = {
    PAY: "/ecny/v1/trade/micropay",
    QUERY: "/ecny/v1/trade/query",
    CANCEL: "/ecny/v1/trade/cancel",
    REFUND: "/ecny/v1/trade/refund",
}
connector = BankJsonConnector(name, paths)
channel_side = BankJsonChannelSide(name, paths)
