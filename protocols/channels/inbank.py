"""The bank's own in-bank payment code, on the bank JSON shape."""

from protocols.channels.bankjson import BankJsonChannelSide, BankJsonConnector

name = "inbank"
pay_path = "/openapi/v1/qrcode/pay"
connector = BankJsonConnector(name, pay_path)
channel_side = BankJsonChannelSide(name, pay_path)
