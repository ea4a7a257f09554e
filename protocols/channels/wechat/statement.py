"""WeChat Pay's trade bill (``pay/downloadbill``, ``bill_type=ALL``): UTF-8 CSV, every value
prefixed with a back quote, one row per payment and per refund, then a summary header and a
summary row. Amounts are yuan (fees with five decimals, as WeChat writes them); the summary
must agree with the rows."""

from __future__ import annotations

import csv
import io

from protocols.statements import (
    PAID,
    PAY,
    REFUND,
    REFUNDED,
    REVOKED,
    StatementError,
    StatementRow,
    cst_time,
    fen_of,
    time_text,
    yuan_text,
)

HEADER = [
    "交易时间",
    "公众账号ID",
    "商户号",
    "特约商户号",
    "设备号",
    "微信订单号",
    "商户订单号",
    "用户标识",
    "交易类型",
    "交易状态",
    "付款银行",
    "货币种类",
    "应结订单金额",
    "代金券金额",
    "微信退款单号",
    "商户退款单号",
    "退款金额",
    "充值券退款金额",
    "退款类型",
    "退款状态",
    "商品名称",
    "商户数据包",
    "手续费",
    "费率",
    "订单金额",
    "申请退款金额",
    "费率备注",
]
SUMMARY = [
    "总交易单数",
    "应结订单总金额",
    "退款总金额",
    "充值券退款总金额",
    "手续费总金额",
    "订单总金额",
    "申请退款总金额",
]
_COL = {name: i for i, name in enumerate(HEADER)}
_TRADE_STATES = {PAID: PAID, REVOKED: REVOKED, "REFUND": REFUNDED}
_REFUND_DONE = "SUCCESS"  # 退款状态 of a refund whose money went back


def write(rows: list[StatementRow], app_id: str, mch_id: str, rate: str = "0.60%") -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(HEADER)
    settled = refunded = fees = ordered = 0
    for row in rows:
        is_refund = row.entry == REFUND
        values = {
            "交易时间": time_text(row.at),
            "公众账号ID": app_id,
            "商户号": mch_id,
            "特约商户号": "0",
            "设备号": "",
            "微信订单号": row.channel_txn_id,
            "商户订单号": row.out_trade_no,
            "用户标识": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
            "交易类型": "MICROPAY",
            "交易状态": "REFUND" if is_refund else row.status,
            "付款银行": "OTHERS",
            "货币种类": "CNY",
            "应结订单金额": yuan_text(0 if is_refund else row.amount_fen),
            "代金券金额": "0.00",
            "微信退款单号": ("50" + row.refund_no) if is_refund else "0",
            "商户退款单号": row.refund_no if is_refund else "0",
            "退款金额": yuan_text(row.amount_fen if is_refund else 0),
            "充值券退款金额": "0.00",
            "退款类型": "ORIGINAL" if is_refund else "",
            "退款状态": (_REFUND_DONE if row.status == PAID else row.status) if is_refund else "",
            "商品名称": "POS purchase",
            "商户数据包": "",
            "手续费": yuan_text(row.fee_fen, 5),
            "费率": rate,
            "订单金额": yuan_text(0 if is_refund else row.amount_fen),
            "申请退款金额": yuan_text(row.amount_fen if is_refund else 0),
            "费率备注": "",
        }
        writer.writerow("`" + values[name] for name in HEADER)
        settled += 0 if is_refund else row.amount_fen
        ordered += 0 if is_refund else row.amount_fen
        refunded += row.amount_fen if is_refund else 0
        fees += row.fee_fen
    writer.writerow(SUMMARY)
    totals = (str(len(rows)), yuan_text(settled), yuan_text(refunded), "0.00", yuan_text(fees, 5))
    writer.writerow("`" + v for v in (*totals, yuan_text(ordered), yuan_text(refunded)))
    return out.getvalue().encode("utf-8")


def parse(data: bytes) -> list[StatementRow]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise StatementError(1, f"not UTF-8: {exc.reason}") from None
    lines = list(csv.reader(io.StringIO(text)))
    if not lines or lines[0] != HEADER:
        raise StatementError(1, "not a WeChat Pay trade bill header")
    try:
        summary_at = lines.index(SUMMARY)
    except ValueError:
        raise StatementError(len(lines), "no summary rows") from None
    rows = [_row(values, n) for n, values in enumerate(lines[1:summary_at], start=2)]
    if summary_at + 1 >= len(lines):
        raise StatementError(summary_at + 1, "summary header without its row")
    summary = [v.lstrip("`") for v in lines[summary_at + 1]]
    line = summary_at + 2
    if int(summary[0]) != len(rows):
        raise StatementError(line, f"summary counts {summary[0]} rows, the bill has {len(rows)}")
    if fen_of(summary[2], line) != sum(r.amount_fen for r in rows if r.entry == REFUND):
        raise StatementError(line, "refund total differs from the rows")
    if fen_of(summary[5], line) != sum(r.amount_fen for r in rows if r.entry == PAY):
        raise StatementError(line, "order total differs from the rows")
    return rows


def _row(values: list[str], line: int) -> StatementRow:
    if len(values) != len(HEADER):
        raise StatementError(line, f"{len(values)} columns, not {len(HEADER)}")
    if any(not v.startswith("`") for v in values):
        raise StatementError(line, "a value without its back quote")
    v = [x[1:] for x in values]
    state = _TRADE_STATES.get(v[_COL["交易状态"]])
    if state is None:
        raise StatementError(line, f"unknown trade state {v[_COL['交易状态']]!r}")
    is_refund = state == REFUNDED
    refund_state = v[_COL["退款状态"]]  # SUCCESS; PROCESSING, REFUNDCLOSE, CHANGE: no money back (yet)
    if is_refund and not refund_state:
        raise StatementError(line, "a refund without its refund state")
    return StatementRow(
        entry=REFUND if is_refund else PAY,
        out_trade_no=v[_COL["商户订单号"]],
        channel_txn_id=v[_COL["微信订单号"]],
        amount_fen=fen_of(v[_COL["退款金额"] if is_refund else _COL["订单金额"]], line),
        status=(PAID if refund_state == _REFUND_DONE else refund_state) if is_refund else state,
        at=cst_time(v[_COL["交易时间"]], line),
        refund_no=v[_COL["商户退款单号"]] if is_refund else "",
        fee_fen=fen_of(v[_COL["手续费"]], line),
    )
