"""Risk analysis after the day (事后分析): what each rule fired on, enforced and in shadow; the
merchants, terminals and codes (by fingerprint) declined most; each merchant's refunds over its
sales. One Beijing day, read from ``risk_decision`` and the journal."""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import asyncpg

from protocols.statements import CST

TOP = 10

# The day's window in Beijing time, and the transaction days it may fall in (a partition each).
_WINDOW = "decided_at >= $1 AND decided_at < $2"
_TXN_WINDOW = "t.tx_date BETWEEN $3 AND $4 AND t.received_at >= $1 AND t.received_at < $2"

_QUERIES = {
    "rules": f"""
        SELECT rule_id, action, mode, count(*) AS hits, sum(amount_fen) AS amount_fen
        FROM risk_decision WHERE {_WINDOW} GROUP BY 1, 2, 3 ORDER BY hits DESC, rule_id""",
    "merchants": f"""
        SELECT merchant_id, count(*) AS declines, sum(amount_fen) AS amount_fen FROM risk_decision
        WHERE {_WINDOW} AND mode = 'enforce' AND action = 'decline' GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT {TOP}""",
    "terminals": f"""
        SELECT terminal_id, count(*) AS declines, sum(amount_fen) AS amount_fen FROM risk_decision
        WHERE {_WINDOW} AND mode = 'enforce' AND action = 'decline' GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT {TOP}""",
    "codes": f"""
        SELECT encode(t.pan_hash, 'hex') AS code_fingerprint, min(t.pan_masked) AS masked, count(*) AS declines
        FROM risk_decision d JOIN txn t ON t.tx_date = d.tx_date AND t.rrn = d.rrn
        WHERE d.decided_at >= $1 AND d.decided_at < $2 AND t.tx_date BETWEEN $3 AND $4
          AND d.mode = 'enforce' AND d.action = 'decline'
        GROUP BY 1 ORDER BY 3 DESC, 1 LIMIT {TOP}""",
    "refund_ratios": f"""
        SELECT t.merchant_id,
               coalesce(sum(t.amount_fen) FILTER (WHERE t.txn_type = 'purchase'), 0) AS sales_fen,
               coalesce(sum(t.amount_fen) FILTER (WHERE t.txn_type = 'refund'), 0) AS refunds_fen
        FROM txn t WHERE {_TXN_WINDOW} AND t.state = 'APPROVED' GROUP BY 1 ORDER BY 1""",
}


async def day_report(conn: asyncpg.Connection, day: dt.date) -> dict[str, list[dict]]:
    """The day's figures, a list of rows by section (``_QUERIES``)."""
    start = dt.datetime.combine(day, dt.time(), CST)
    end = start + dt.timedelta(days=1)
    args = (start, end, day - dt.timedelta(days=1), day + dt.timedelta(days=1))
    report = {}
    for name, sql in _QUERIES.items():
        wanted = args if "$3" in sql else args[:2]
        report[name] = [dict(r) for r in await conn.fetch(sql, *wanted)]
    for row in report["refund_ratios"]:
        sales = row["sales_fen"]
        row["ratio"] = round(row["refunds_fen"] / sales, 4) if sales else None
    return report


def write_csv(report: dict[str, list[dict]], folder: Path, day: dt.date) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, rows in report.items():
        path = folder / f"risk-{day}-{name}.csv"
        with open(path, "w", newline="") as out:
            writer = csv.writer(out)
            if rows:
                writer.writerow(rows[0].keys())
                writer.writerows(row.values() for row in rows)
        written.append(path)
    return written


def printed(report: dict[str, list[dict]], day: dt.date) -> str:
    lines = [f"risk report for {day} (Beijing time)", "", "rules that fired:"]
    lines += [
        f"  {r['rule_id']:28s} {r['action']:8s} {r['mode']:8s} {r['hits']:8d} hits {r['amount_fen'] / 100:14,.2f} yuan"
        for r in report["rules"]
    ] or ["  none"]
    for name, key in (("merchants", "merchant_id"), ("terminals", "terminal_id"), ("codes", "masked")):
        lines += ["", f"{name} declined most:"]
        lines += [f"  {r[key]:28s} {r['declines']:8d}" for r in report[name]] or ["  none"]
    lines += ["", "refunds over sales, by merchant:"]
    lines += [
        f"  {r['merchant_id']:28s} sales {r['sales_fen'] / 100:14,.2f}  refunds {r['refunds_fen'] / 100:14,.2f}  "
        + ("ratio -" if r["ratio"] is None else f"ratio {r['ratio']:.2%}")
        for r in report["refund_ratios"]
    ] or ["  none"]
    return "\n".join(lines)
