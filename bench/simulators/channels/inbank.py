"""The in-bank payment code as the bank reads and answers it (``protocols.channels.inbank``)."""

from bench.simulators.channels.bankjson import BankJsonSide
from protocols.channels.inbank import PATHS

side = BankJsonSide(PATHS, qr_prefix="https://qr.inbank.example.cn/pay/")
