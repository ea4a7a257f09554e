"""Lake Pay as its simulator plays it (``bench.simulators.side.ChannelSide``)."""

from __future__ import annotations

import base64
import datetime as dt
import time
from collections.abc import Mapping

import msgspec

from bench.simulators.side import ChannelVerdict, RequestSeen, StatementAsk
from protocols.channels.base import HttpAnswer, Sign, Verify
from protocols.messages import CANCEL, PAY, QUERY, REFUND
from protocols.statements import StatementRow
from tests.lakepay import statement
from tests.lakepay.flows import (
    PATHS,
    SIGNATURE,
    STATEMENT_PATH,
    TIMESTAMP,
    Charge,
    ChargeRef,
    Refund,
    StatementRequest,
    signing_input,
)

_OP_OF_PATH = {path: op for op, path in PATHS.items()}
_SHAPE = {PAY: Charge, QUERY: ChargeRef, CANCEL: ChargeRef, REFUND: Refund}
# Verdicts as Lake Pay says them: (status, failure).
_ANSWERS = {
    (PAY, "SUCCESS"): ("succeeded", ""),
    (PAY, "USERPAYING"): ("pending", ""),
    (PAY, "NOTENOUGH"): ("failed", "insufficient_funds"),
    (PAY, "EXPIRED"): ("failed", "code_expired"),
    (PAY, "INVALID"): ("failed", "code_invalid"),
    (PAY, "DECLINED"): ("failed", "declined"),
    (PAY, "ORDERCLOSED"): ("failed", "closed"),
    (QUERY, "PAID"): ("succeeded", ""),
    (QUERY, "PAYING"): ("pending", ""),
    (QUERY, "CLOSED"): ("cancelled", ""),
    (QUERY, "NOTEXIST"): ("failed", "not_found"),
    (CANCEL, "DONE"): ("cancelled", ""),
    (CANCEL, "RETRY"): ("pending", ""),
    (CANCEL, "NOTEXIST"): ("failed", "not_found"),
    (CANCEL, "REFUSED"): ("failed", "too_late"),
    (REFUND, "DONE"): ("succeeded", ""),
    (REFUND, "REFUSED"): ("failed", "exceeds_refundable"),
}
_JSON = "application/json"


def _signed(doc: object, sign: Sign, status: int = 200) -> HttpAnswer:
    body, timestamp = msgspec.json.encode(doc), str(int(time.time()))
    return HttpAnswer(
        status, body, {"Content-Type": _JSON, TIMESTAMP: timestamp, SIGNATURE: sign(signing_input(timestamp, body))}
    )


class LakeSide:
    paths = frozenset(PATHS.values()) | {STATEMENT_PATH}

    def read(
        self, path: str, body: bytes, headers: Mapping[str, str], verify: Verify
    ) -> RequestSeen | StatementAsk | str:
        if not verify(signing_input(headers.get(TIMESTAMP, ""), body), headers.get(SIGNATURE, "")):
            return "signature_invalid"
        try:
            if path == STATEMENT_PATH:
                ask = msgspec.json.decode(body, type=StatementRequest)
                return StatementAsk(dt.date.fromisoformat(ask.date), ask.merchant)
            op = _OP_OF_PATH[path]
            got = msgspec.json.decode(body, type=_SHAPE[op])
        except (KeyError, ValueError, msgspec.DecodeError):
            return "invalid_request"
        if isinstance(got, Charge):
            return RequestSeen(op, got.reference, got.payment_code, got.amount.value, got.sub_merchant)
        if isinstance(got, Refund):
            return RequestSeen(op, got.reference, amount_fen=got.amount.value, refund_no=got.refund_reference)
        return RequestSeen(op, got.reference)

    def write(self, seen: RequestSeen, verdict: ChannelVerdict, sign: Sign) -> HttpAnswer:
        status, failure = _ANSWERS.get((seen.op, verdict.status), ("error", ""))
        lake_id = verdict.channel_txn_id if status in ("succeeded", "pending") else ""
        reference = seen.refund_no if seen.op == REFUND else seen.out_trade_no
        doc = {
            "status": status,
            "reference": reference,
            "lake_id": lake_id,
            "failure": failure,
            "message": verdict.status,
        }
        return _signed(doc, sign)

    def write_error(self, reason: str, sign: Sign) -> HttpAnswer:
        return HttpAnswer(401, msgspec.json.encode({"status": "error", "failure": reason}), {"Content-Type": _JSON})

    def statement(self, rows: list[StatementRow], ask: StatementAsk) -> bytes:
        return statement.write(rows)

    def write_statement(self, content: bytes, sign: Sign, link: str) -> HttpAnswer:
        return _signed({"file": base64.b64encode(content).decode()}, sign)


side = LakeSide()
