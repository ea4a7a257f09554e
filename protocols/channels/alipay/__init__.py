"""Alipay face-to-face, merchant scans the customer's code and the customer the merchant's
(``flows``), its trade bill download link (``download``) and the bill's format (``statement``)."""

from protocols.channels.alipay import download, statement
from protocols.channels.alipay.flows import FLOWS, NOTICE, AlipayAccount
from protocols.channels.base import Channel, Download

channel = Channel(
    kind="alipay",
    account=AlipayAccount,
    flows=FLOWS,
    statement=Download(download.build, download.parse, statement.parse),
    simulator="bench.simulators.channels.alipay",
    notice=NOTICE,
)
