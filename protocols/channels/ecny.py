"""Digital RMB (e-CNY) merchant-scans-wallet-code payment, on the bank JSON shape, with the
national algorithms the channel requires: bodies signed SM2 with SM3 (base64 of r || s, user id
1234567812345678), and the wallet's payment code sent SM4-CBC encrypted under the data key shared
with the channel (hex of IV || ciphertext; the channel actor encrypts it through the HSM)."""

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
