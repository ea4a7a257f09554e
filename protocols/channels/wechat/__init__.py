"""WeChat Pay v2, merchant scans the customer's code and the customer the merchant's (``flows``),
its trade bill download (``download``) and the bill's format (``statement``)."""

from protocols.channels.base import Channel, Download
from protocols.channels.wechat import download, statement
from protocols.channels.wechat.flows import FLOWS, NOTICE, WeChatAccount

channel = Channel(
    kind="wechat",
    account=WeChatAccount,
    flows=FLOWS,
    statement=Download(download.build, download.parse, statement.parse),
    simulator="bench.simulators.channels.wechat",
    notice=NOTICE,
)
