"""Lake Pay: a sixth channel kept outside ``protocols/channels``, as a bank would keep one of its
own, and added to a switch by configuration alone (``kind = "tests.lakepay"``). Its API is
nothing like the five built in: JSON with amounts as objects, a Stripe-like signature over
``timestamp.body`` in headers, and a statement of JSON lines. Its simulated side is here too."""

from protocols.channels.base import Channel, Download
from tests.lakepay import flows, statement

channel = Channel(
    kind="tests.lakepay",
    account=flows.LakeAccount,
    flows=flows.FLOWS,
    statement=Download(flows.build_statement, flows.parse_statement, statement.parse),
    simulator="tests.lakepay.simulator",
)
