"""WeChat Pay v2 as the channel reads and answers it (``protocols.channels.wechat``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from bench.simulators.side import ChannelVerdict, Notification, Paid, RequestSeen, StatementAsk
from protocols.channels.base import HttpAnswer, Sign, Verify
from protocols.channels.wechat import download, statement
from protocols.channels.wechat.flows import PATHS, nonce, signing_input
from protocols.channels.wechat.xml import from_xml, to_xml
from protocols.messages import CLOSE, PAY, PRECREATE, REFUND
from protocols.statements import CST, StatementRow

_OP_OF_PATH = {path: op for op, path in PATHS.items()}
_REQUIRED = {
    PAY: ("total_fee", "auth_code"),
    REFUND: ("out_refund_no", "total_fee", "refund_fee"),
    PRECREATE: ("total_fee", "notify_url", "time_expire", "trade_type", "product_id"),
}
_AMOUNT = {PAY: "total_fee", REFUND: "refund_fee", PRECREATE: "total_fee"}
# Verdicts in WeChat's own vocabulary: (err_code, err_code_des).
_PAY_ERRORS = {
    "USERPAYING": ("USERPAYING", "需要用户输入支付密码"),
    "NOTENOUGH": ("NOTENOUGH", "余额不足"),
    "EXPIRED": ("AUTHCODEEXPIRE", "二维码已过期，请用户在微信上刷新后再试"),
    "INVALID": ("AUTH_CODE_INVALID", "授权码检验错误"),
    "DECLINED": ("TRADE_ERROR", "交易错误"),
    "ORDERCLOSED": ("ORDERCLOSED", "订单已关闭"),
    "SYSTEMERROR": ("SYSTEMERROR", "接口返回错误"),
}
_TRADE_STATE = {"PAID": "SUCCESS", "PAYING": "USERPAYING", "NOTPAY": "NOTPAY", "CLOSED": "CLOSED"}
_XML = {"Content-Type": "text/xml"}


class WeChatSide:
    paths = frozenset(PATHS.values()) | {download.PATH}
    qr_prefix = "weixin://wxpay/bizpayurl?pr="
    # WeChat Pay's own: 15s/15s/30s/3m/10m/20m/30m/30m/30m/60m/3h/3h/3h/6h/6h, 24 h 4 min in all.
    notice_schedule_s = (15, 15, 30, 180, 600, 1200, 1800, 1800, 1800, 3600, 10800, 10800, 10800, 21600, 21600)
    closes_unscanned = True

    def read(
        self, path: str, body: bytes, headers: Mapping[str, str], verify: Verify
    ) -> RequestSeen | StatementAsk | str:
        if path == download.PATH:
            return _read_statement_ask(body, verify)
        op = _OP_OF_PATH.get(path)
        if op is None:
            return "接口不存在"
        try:
            doc = from_xml(body)
        except Exception:
            return "XML格式错误"
        if not verify(signing_input(doc), doc.get("sign", "")):
            return "签名错误"
        required = ("appid", "mch_id", "out_trade_no", *_REQUIRED.get(op, ()))
        missing = [k for k in required if not doc.get(k)]
        amount_field = _AMOUNT.get(op)
        if missing or (amount_field and not doc[amount_field].isdigit()):
            return f"缺少参数或参数格式错误: {','.join(missing) or amount_field}"
        fields: dict[str, object] = dict(doc)
        if op == PRECREATE:
            try:
                expires = dt.datetime.strptime(doc["time_expire"], "%Y%m%d%H%M%S").replace(tzinfo=CST)
            except ValueError:
                return "time_expire 格式错误"
            fields["expires_at"] = expires.timestamp()
        return RequestSeen(
            op,
            doc["out_trade_no"],
            doc.get("auth_code", ""),
            int(doc[amount_field]) if amount_field else 0,
            doc.get("sub_mch_id", ""),
            refund_no=doc.get("out_refund_no", ""),
            fields=fields,
        )

    def write(self, seen: RequestSeen, verdict: ChannelVerdict, sign: Sign) -> HttpAnswer:
        f = seen.fields
        doc = {
            "return_code": "SUCCESS",
            "return_msg": "OK",
            "appid": str(f.get("appid", "")),
            "mch_id": str(f.get("mch_id", "")),
            "sub_mch_id": str(f.get("sub_mch_id", "")),
            "nonce_str": nonce(seen.op, seen.out_trade_no, "answer"),
        }
        status = verdict.status
        if seen.op == PAY and status == "SUCCESS":
            doc |= {
                "result_code": "SUCCESS",
                "trade_type": "MICROPAY",
                "total_fee": str(seen.amount_fen),
                "fee_type": "CNY",
                "transaction_id": verdict.channel_txn_id,
                "out_trade_no": seen.out_trade_no,
            }
        elif seen.op == PAY:
            err, text = _PAY_ERRORS[status]
            doc |= {"result_code": "FAIL", "err_code": err, "err_code_des": text}
        elif seen.op == REFUND and status == "DONE":
            doc |= {
                "result_code": "SUCCESS",
                "out_trade_no": seen.out_trade_no,
                "out_refund_no": seen.refund_no,
                "refund_id": verdict.channel_txn_id,
                "refund_fee": str(seen.amount_fen),
            }
        elif seen.op == REFUND and status == "REFUSED":
            doc |= {"result_code": "FAIL", "err_code": "NOTENOUGH", "err_code_des": "商户可退余额不足"}
        elif seen.op == PRECREATE and status == "CREATED":
            doc |= {"result_code": "SUCCESS", "trade_type": "NATIVE", "prepay_id": "", "code_url": verdict.qr_code}
        elif seen.op == CLOSE and status in ("DONE", "NOTEXIST"):
            doc |= {"result_code": "SUCCESS"}  # closing an order WeChat never had succeeds too
        elif seen.op == CLOSE and status == "PAID":
            doc |= {"result_code": "FAIL", "err_code": "ORDERPAID", "err_code_des": "订单已支付，不能发起关单"}
        elif status in _TRADE_STATE:  # query
            doc |= {
                "result_code": "SUCCESS",
                "trade_state": _TRADE_STATE[status],
                "out_trade_no": seen.out_trade_no,
                "transaction_id": verdict.channel_txn_id,
            }
        elif status == "DONE":  # cancel
            doc |= {"result_code": "SUCCESS", "recall": "N"}
        elif status == "RETRY":
            doc |= {"result_code": "SUCCESS", "recall": "Y"}
        elif status == "NOTEXIST":
            doc |= {"result_code": "FAIL", "err_code": "ORDERNOTEXIST", "err_code_des": "此交易订单号不存在"}
        elif status == "REFUSED":
            doc |= {"result_code": "FAIL", "err_code": "REVERSE_EXPIRE", "err_code_des": "订单已过撤销期限"}
        else:
            doc |= {"result_code": "FAIL", "err_code": "SYSTEMERROR", "err_code_des": "系统错误"}
        doc["sign"] = sign(signing_input(doc))
        return HttpAnswer(200, to_xml(doc), _XML)

    def write_error(self, reason: str, sign: Sign) -> HttpAnswer:
        return HttpAnswer(200, to_xml({"return_code": "FAIL", "return_msg": reason}), _XML)

    def notice(self, order: RequestSeen, paid: Paid, sign: Sign) -> Notification:
        f = order.fields
        doc = {
            "return_code": "SUCCESS",
            "appid": str(f.get("appid", "")),
            "mch_id": str(f.get("mch_id", "")),
            "sub_mch_id": str(f.get("sub_mch_id", "")),
            "nonce_str": nonce("notify", order.out_trade_no),
            "result_code": "SUCCESS",
            "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
            "trade_type": "NATIVE",
            "bank_type": "CMC",
            "total_fee": str(paid.amount_fen),
            "cash_fee": str(paid.amount_fen),
            "transaction_id": paid.channel_txn_id,
            "out_trade_no": order.out_trade_no,
            "time_end": dt.datetime.fromtimestamp(paid.at, CST).strftime("%Y%m%d%H%M%S"),
        }
        doc["sign"] = sign(signing_input(doc))
        return Notification(to_xml(doc), "text/xml")

    def notice_acked(self, status: int, body: bytes) -> bool:
        try:
            return status == 200 and from_xml(body).get("return_code") == "SUCCESS"
        except Exception:
            return False

    def statement(self, rows: list[StatementRow], ask: StatementAsk) -> bytes:
        return statement.write(rows, "wx2421b1c4370ec43b", ask.merchant)

    def write_statement(self, content: bytes, sign: Sign, link: str) -> HttpAnswer:
        return HttpAnswer(200, content, {"Content-Type": "text/plain; charset=utf-8"})


def _read_statement_ask(body: bytes, verify: Verify) -> StatementAsk | str:
    try:
        doc = from_xml(body)
        day = dt.datetime.strptime(doc.get("bill_date", ""), "%Y%m%d").date()
    except ValueError:
        return "invalid bill_date"
    except Exception:
        return "XML格式错误"
    if not verify(signing_input(doc), doc.get("sign", "")):
        return "签名错误"
    return StatementAsk(day, doc.get("mch_id", ""))


side = WeChatSide()
