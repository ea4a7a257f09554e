"""Digital RMB as the channel reads and answers it (``protocols.channels.ecny``)."""

from bench.simulators.channels.bankjson import BankJsonSide
from protocols.channels.ecny import PATHS

side = BankJsonSide(PATHS, qr_prefix="https://qr.ecny.example.cn/pay/")
