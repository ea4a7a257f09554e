"""Statement (bill) downloads in each channel's own API shape, both sides: ``Downloader`` builds
the switch's signed request and reads the answer; ``BillServer`` is what the channel (here, its
simulator) reads and answers. The statement bytes themselves are ``protocols.statements``' business.

Each module: ``downloader`` and ``server``, and ``statement_format`` (a ``protocols.statements``
module). Alipay answers with a link to fetch the file from; the others with the file itself.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from importlib import import_module
from types import ModuleType


@dataclass(frozen=True, slots=True)
class BillAsk:
    """A statement request as the channel reads it."""

    day: dt.date
    merchant: str


@dataclass(frozen=True, slots=True)
class BillLink:
    """An answer that names where to fetch the file (Alipay's ``bill_download_url``)."""

    url: str


class BillRefused(Exception):
    """The channel refused or garbled the download: the text says what it answered."""


def bills_of(kind: str) -> ModuleType:
    return import_module(f"protocols.bills.{kind}")
