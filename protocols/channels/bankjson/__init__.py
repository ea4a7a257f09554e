"""The JSON API shape shared by the bank-operated channels (digital RMB, the in-bank code): pay,
query, cancel and refund, and QR orders' create, close and notification (``flows``), the
statement download (``download``) and the statement format (``statement``), each on the bank's
own paths.

Not a channel itself (no ``channel`` descriptor): each bank's package builds its descriptor with
``bank_channel``, naming its paths, its account schema and whether the payment code is sealed.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial

from protocols.channels.bankjson import download, statement
from protocols.channels.bankjson.flows import NOTICE, BankAccount, flows
from protocols.channels.base import Channel, Download


@dataclass(frozen=True, slots=True)
class Paths:
    """Where one bank serves this shape."""

    flows: Mapping[str, str]  # by operation: PAY, QUERY, CANCEL, REFUND, PRECREATE, CLOSE
    statement: str


def bank_channel(kind: str, account: type[BankAccount], paths: Paths, simulator: str, *, seals_code: bool) -> Channel:
    return Channel(
        kind=kind,
        account=account,
        flows=flows(paths.flows, seals_code=seals_code),
        statement=Download(partial(download.build, paths.statement), download.parse, statement.parse),
        simulator=simulator,
        notice=NOTICE,
    )
