"""Alipay's trade bill (``alipay.data.dataservice.bill.downloadurl.query``, ``bill_type=trade``):
a zip holding ``<pid>_<date>_业务明细.csv`` and its ``(汇总)`` summary, GBK. The detail file starts
and ends with ``#`` comment lines (account, period, the end-of-list marker, the totals) around a
header and one row per trade (业务类型 交易) and per refund (退款); identifiers carry a trailing
tab, as Alipay writes them so that spreadsheets keep their digits. Amounts are yuan."""

from __future__ import annotations

import csv
import io
import re
import zipfile

from protocols.statements import (
    MAX_TEXT_BYTES,
    PAID,
    PAY,
    REFUND,
    REVOKED,
    StatementError,
    StatementRow,
    cst_time,
    fen_of,
    time_text,
    yuan_text,
)

HEADER = [
    "支付宝交易号",
    "商户订单号",
    "业务类型",
    "商品名称",
    "创建时间",
    "完成时间",
    "门店编号",
    "门店名称",
    "操作员",
    "终端号",
    "对方账户",
    "订单金额（元）",
    "商家实收（元）",
    "支付宝红包（元）",
    "集分宝（元）",
    "支付宝优惠（元）",
    "商家优惠（元）",
    "券核销金额（元）",
    "券名称",
    "商家红包消费金额（元）",
    "卡消费金额（元）",
    "退款批次号/请求号",
    "服务费（元）",
    "分润（元）",
    "备注",
]
END_OF_LIST = "#-----------------------------------------业务明细列表结束------------------------------------"
_COL = {name: i for i, name in enumerate(HEADER)}
_TOTALS = re.compile(r"#交易合计：(\d+)笔，退款合计：(\d+)笔")
_CLOSED_NOTE = "已撤销"  # in 备注 of a trade cancelled after payment (its money went back whole)


def write(rows: list[StatementRow], pid: str, day: str) -> bytes:
    detail = io.StringIO()
    writer = csv.writer(detail, lineterminator="\r\n")
    detail.write(
        f"#支付宝业务明细查询\r\n#账号：[{pid}]\r\n#起始日期：[{day} 00:00:00]   终止日期：[{day} 23:59:59]\r\n"
    )
    writer.writerow(HEADER)
    for row in rows:
        is_refund = row.entry == REFUND
        amount = yuan_text(-row.amount_fen if is_refund else row.amount_fen)
        values = {name: "" for name in HEADER}
        values |= {
            "支付宝交易号": row.channel_txn_id + "\t",
            "商户订单号": row.out_trade_no + "\t",
            "业务类型": "退款" if is_refund else "交易",
            "商品名称": "POS purchase",
            "创建时间": time_text(row.at),
            "完成时间": time_text(row.at),
            "订单金额（元）": amount,
            "商家实收（元）": amount,
            "退款批次号/请求号": (row.refund_no + "\t") if is_refund else "",
            "服务费（元）": yuan_text(-row.fee_fen),
            "备注": _CLOSED_NOTE if row.status == REVOKED else "",
        }
        writer.writerow(values[name] for name in HEADER)
    trades = sum(1 for r in rows if r.entry == PAY)
    detail.write(
        f"{END_OF_LIST}\r\n#交易合计：{trades}笔，退款合计：{len(rows) - trades}笔\r\n#导出时间：[{day} 23:59:59]\r\n"
    )
    summary = f"#支付宝业务汇总查询\r\n#账号：[{pid}]\r\n交易笔数,退款笔数\r\n{trades},{len(rows) - trades}\r\n"
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{pid}_{day.replace('-', '')}_业务明细.csv", detail.getvalue().encode("gbk"))
        archive.writestr(f"{pid}_{day.replace('-', '')}_业务明细(汇总).csv", summary.encode("gbk"))
    return out.getvalue()


def parse(data: bytes) -> list[StatementRow]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = [n for n in archive.namelist() if n.endswith("_业务明细.csv")]
            if len(names) != 1:
                raise StatementError(0, "the zip holds no single 业务明细 file")
            if archive.getinfo(names[0]).file_size > MAX_TEXT_BYTES:  # (a size that lies fails its CRC)
                raise StatementError(0, f"the 业务明细 file unpacks to more than {MAX_TEXT_BYTES} bytes")
            text = archive.read(names[0]).decode("gbk")
    except (zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise StatementError(0, f"not an Alipay bill zip: {exc}") from None
    lines = text.splitlines()
    try:
        header_at = next(i for i, line in enumerate(lines) if not line.startswith("#"))
        end_at = lines.index(END_OF_LIST)
    except (StopIteration, ValueError):
        raise StatementError(len(lines), "no header or no end-of-list marker") from None
    if next(csv.reader([lines[header_at]])) != HEADER:
        raise StatementError(header_at + 1, "not the 业务明细 header")
    rows = [_row(values, n) for n, values in enumerate(csv.reader(lines[header_at + 1 : end_at]), start=header_at + 2)]
    totals = _TOTALS.match(lines[end_at + 1]) if end_at + 1 < len(lines) else None
    if totals is None:
        raise StatementError(end_at + 2, "no totals line")
    trades = sum(1 for r in rows if r.entry == PAY)
    if (int(totals[1]), int(totals[2])) != (trades, len(rows) - trades):
        raise StatementError(end_at + 2, f"totals say {totals[1]} trades and {totals[2]} refunds, the rows differ")
    return rows


def _row(values: list[str], line: int) -> StatementRow:
    if len(values) != len(HEADER):
        raise StatementError(line, f"{len(values)} columns, not {len(HEADER)}")
    entry = {"交易": PAY, "退款": REFUND}.get(values[_COL["业务类型"]])
    if entry is None:
        raise StatementError(line, f"unknown 业务类型 {values[_COL['业务类型']]!r}")
    amount = fen_of(values[_COL["订单金额（元）"]], line)
    return StatementRow(
        entry=entry,
        out_trade_no=values[_COL["商户订单号"]].strip(),
        channel_txn_id=values[_COL["支付宝交易号"]].strip(),
        amount_fen=-amount if entry == REFUND else amount,
        status=REVOKED if values[_COL["备注"]] == _CLOSED_NOTE else PAID,
        at=cst_time(values[_COL["创建时间"]], line),
        refund_no=values[_COL["退款批次号/请求号"]].strip(),
        fee_fen=-fen_of(values[_COL["服务费（元）"]], line),
    )
