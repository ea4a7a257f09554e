"""UnionPay QR through the acp gateway, merchant scans the customer's code and the customer the
merchant's (``flows``), its settlement file download (``download``) and the file's format
(``statement``)."""

from protocols.channels.base import Channel, Download
from protocols.channels.unionpay import download, statement
from protocols.channels.unionpay.flows import FLOWS, NOTICE, UnionPayAccount

channel = Channel(
    kind="unionpay",
    account=UnionPayAccount,
    flows=FLOWS,
    statement=Download(download.build, download.parse, statement.parse),
    simulator="bench.simulators.channels.unionpay",
    notice=NOTICE,
)
