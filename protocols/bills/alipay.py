"""Alipay ``alipay.data.dataservice.bill.downloadurl.query`` (``bill_type`` trade, ``bill_date``
YYYY-MM-DD) on the gateway, signed RSA2 like every Alipay call; the signed answer carries
``bill_download_url``, from which the zip is fetched."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from urllib.parse import parse_qsl

from protocols.bills import BillAsk, BillLink, BillRefused
from protocols.channels.alipay import GATEWAY, extract_node, response_node
from protocols.channels.alipay import channel_side as trade_side
from protocols.channels.base import ChannelIdentity, HttpAnswer, HttpCall, Sign, Verify, form_encode, sorted_query
from protocols.statements import CST
from protocols.statements import alipay as statement_format

METHOD = "alipay.data.dataservice.bill.downloadurl.query"
__all__ = ["downloader", "server", "statement_format"]


class Downloader:
    def call(self, day: dt.date, ident: ChannelIdentity, sign: Sign, now: float) -> HttpCall:
        params = {
            "app_id": ident.app_id,
            "method": METHOD,
            "format": "JSON",
            "charset": "utf-8",
            "sign_type": "RSA2",
            "timestamp": dt.datetime.fromtimestamp(now, CST).strftime("%Y-%m-%d %H:%M:%S"),
            "version": "1.0",
            "biz_content": json.dumps({"bill_type": "trade", "bill_date": day.isoformat()}),
        }
        params["sign"] = sign(sorted_query(params).encode())
        return HttpCall(GATEWAY, form_encode(params), "application/x-www-form-urlencoded;charset=utf-8")

    def result(self, answer: HttpAnswer, verify: Verify) -> BillLink:
        text = answer.body.decode("utf-8", "replace")
        node_text = extract_node(text, response_node(METHOD))
        if answer.status != 200 or node_text is None:
            raise BillRefused(f"HTTP {answer.status}: {text[:200]}")
        try:
            node, signature = json.loads(node_text), json.loads(text).get("sign", "")
        except ValueError:
            raise BillRefused("unreadable answer") from None
        if not verify(node_text.encode(), signature):
            raise BillRefused("answer signature does not verify")
        if node.get("code") != "10000" or not node.get("bill_download_url"):
            raise BillRefused(f"{node.get('code')} {node.get('sub_msg') or node.get('msg', '')}")
        return BillLink(node["bill_download_url"])


class BillServer:
    path = GATEWAY

    def handles(self, path: str, body: bytes) -> bool:
        return path == GATEWAY and METHOD.encode() in body

    def read(self, body: bytes, headers: Mapping[str, str], verify: Verify) -> BillAsk | str:
        params = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        if params.get("sign_type") != "RSA2" or not verify(sorted_query(params).encode(), params.get("sign", "")):
            return "isv.invalid-signature"
        try:
            biz = json.loads(params.get("biz_content", ""))
            return BillAsk(dt.date.fromisoformat(biz["bill_date"]), params.get("app_id", ""))
        except (ValueError, KeyError, TypeError):
            return "isv.invalid-parameter"

    def write(self, content: bytes, sign: Sign, link: str) -> HttpAnswer:
        node = json.dumps({"code": "10000", "msg": "Success", "bill_download_url": link}, separators=(",", ":"))
        body = f'{{"{response_node(METHOD)}":{node},"sign":"{sign(node.encode())}"}}'
        return HttpAnswer(200, body.encode(), {"Content-Type": "application/json;charset=utf-8"})

    def write_error(self, reason: str, sign: Sign) -> HttpAnswer:
        return trade_side.write_error(reason, sign)


downloader = Downloader()
server = BillServer()
