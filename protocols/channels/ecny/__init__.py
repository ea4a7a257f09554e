"""Digital RMB (e-CNY), merchant scans the wallet's payment code and the wallet the merchant's QR
code, on the bank JSON shape (``protocols.channels.bankjson``), with the national algorithms the
channel requires: bodies signed SM2 with SM3 (base64 of r || s, user id 1234567812345678), and the
payment code sent SM4-CBC encrypted under the data key shared with the channel (hex of IV ||
ciphertext), which is why the account must name that key (a QR order has no payment code)."""

from protocols.channels.bankjson import Paths, bank_channel
from protocols.channels.bankjson.flows import BankAccount
from protocols.channels.base import SealingKeys
from protocols.messages import CANCEL, CLOSE, PAY, PRECREATE, QUERY, REFUND

PATHS = Paths(
    {
        PAY: "/ecny/v1/trade/micropay",
        QUERY: "/ecny/v1/trade/query",
        CANCEL: "/ecny/v1/trade/cancel",
        REFUND: "/ecny/v1/trade/refund",
        PRECREATE: "/ecny/v1/trade/precreate",
        CLOSE: "/ecny/v1/trade/close",
    },
    statement="/ecny/v1/bill/download",
)


class EcnyAccount(BankAccount, frozen=True, kw_only=True, forbid_unknown_fields=True):
    keys: SealingKeys  # seal_key: the SM4 data key the payment code travels under


channel = bank_channel("ecny", EcnyAccount, PATHS, "bench.simulators.channels.ecny", seals_code=True)
