"""A legacy switch upstream, over ISO 8583: the switch this one replaces, still handling the
merchants not yet cut over (gray routing, 灰度引流: ``[[routing.gray]]``). Each purchase routed
here is passed through as an ISO 8583 0200 on a MAC'd link (``actors.frames``); the legacy
switch's answer code is relayed to the terminal as it is, and the journal names this channel,
so reconciliation and settlement leave these transactions to the legacy side (it keeps no
statement for this switch). The link's messages are in ``flows``; ``docs/iso8583.md`` has them."""

from protocols.channels.base import Channel, Flow
from protocols.channels.legacy import flows
from protocols.messages import CANCEL, PAY, QUERY, REFUND

channel = Channel(
    kind="legacy",
    account=flows.LegacyAccount,
    flows={
        PAY: Flow(flows.build_pay, flows.parse_pay),
        QUERY: Flow(flows.build_query, flows.parse_query),
        CANCEL: Flow(flows.build_cancel, flows.parse_cancel),
        REFUND: Flow(flows.build_refund, flows.parse_refund),
    },
    statement=None,
    simulator="bench.legacy_switch",
    wire="iso8583",
)
