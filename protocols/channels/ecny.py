"""Digital RMB (e-CNY) merchant-scans-wallet-code payment, on the bank JSON shape."""

from protocols.channels.bankjson import BankJsonChannelSide, BankJsonConnector

name = "ecny"
pay_path = "/ecny/v1/trade/micropay"
connector = BankJsonConnector(name, pay_path)
channel_side = BankJsonChannelSide(name, pay_path)
