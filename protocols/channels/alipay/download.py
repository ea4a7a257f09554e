"""Alipay ``alipay.data.dataservice.bill.downloadurl.query`` (``bill_type`` trade, ``bill_date``
YYYY-MM-DD) on the gateway, signed RSA2 like every Alipay call; the signed answer carries
``bill_download_url``, the ``Link`` the zip (``statement``) is fetched from."""

from __future__ import annotations

import datetime as dt

import msgspec
from msgspec import Struct

from protocols.channels.alipay.flows import SUCCESS, AlipayAccount, Answer, response_node, signed_form, signed_node
from protocols.channels.base import Crypto, HttpAnswer, HttpCall, Link, StatementRefused, fetchable

METHOD = "alipay.data.dataservice.bill.downloadurl.query"
NODE = response_node(METHOD)


class BillQuery(Struct, kw_only=True):
    bill_type: str = "trade"
    bill_date: dt.date  # YYYY-MM-DD


class BillAnswer(Answer):
    bill_download_url: str = ""


def build(day: dt.date, account: AlipayAccount, crypto: Crypto, now: float) -> HttpCall:
    return signed_form(account, METHOD, BillQuery(bill_date=day), crypto, now)


def parse(answer: HttpAnswer, crypto: Crypto) -> Link:
    node = signed_node(answer.body, crypto, NODE)
    if answer.status != 200 or node is None:
        raise StatementRefused(f"HTTP {answer.status}: {answer.body.decode('utf-8', 'replace')[:200]}")
    text, verified = node
    if not verified:
        raise StatementRefused("answer signature does not verify")
    try:
        got = msgspec.json.decode(text, type=BillAnswer)
    except msgspec.DecodeError:
        raise StatementRefused("unreadable answer") from None
    if got.code != SUCCESS or not got.bill_download_url:
        raise StatementRefused(f"{got.code} {got.message}")
    if not fetchable(got.bill_download_url):  # the zip is signed by nothing but the way it comes
        raise StatementRefused("bill_download_url is not https")
    return Link(got.bill_download_url)
