"""Each channel's wire format, both sides, with the demo keys: the switch's request passes the
channel's signature check, every channel verdict maps to the right outcome and ISO code, and a
tampered request or answer is caught."""

import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import time
from urllib.parse import parse_qsl, urlencode

import msgspec
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bench.demo_config import DEMO_DIR, absolute_paths, demo_account, demo_material
from bench.simulators.server import load_simulator_config
from bench.simulators.side import ChannelVerdict, RequestSeen, StatementAsk, side_of
from hsm import algorithms
from protocols import response_codes as rc
from protocols.channels import builtin_kinds, channel_of
from protocols.channels.base import (
    Crypto,
    HttpAnswer,
    HttpCall,
    Link,
    StatementRefused,
    fen,
    form_decode,
    form_encode,
    sorted_query,
    yuan,
)
from protocols.channels.wechat.xml import from_xml
from protocols.messages import CANCEL, NOT_FOUND, PAY, QUERY, REFUND, ChannelRequest, ChannelResult, Outcome
from protocols.statements import CST, PAID, StatementRow
from protocols.statements import PAY as PAY_ENTRY
from switch.config import ConfigError, load_config

SIMS = load_simulator_config(str(DEMO_DIR / "simulators.toml"))
# The HTTP channels and their simulators; the legacy switch upstream (ISO 8583) is tested in test_gray.
KINDS = [kind for kind in builtin_kinds() if channel_of(kind).wire == "http"]
WRITTEN_AHEAD = time.time() - 60  # the write-ahead's time, the order time each channel is told

EXPECTED = {
    (PAY, "SUCCESS"): (Outcome.APPROVED, rc.APPROVED),
    (PAY, "USERPAYING"): (Outcome.PENDING, rc.IN_PROGRESS),
    (PAY, "NOTENOUGH"): (Outcome.DECLINED, rc.INSUFFICIENT_FUNDS),
    (PAY, "EXPIRED"): (Outcome.DECLINED, rc.EXPIRED_CODE),
    (PAY, "INVALID"): (Outcome.DECLINED, rc.INVALID_PAYMENT_CODE),
    (PAY, "DECLINED"): (Outcome.DECLINED, rc.DO_NOT_HONOUR),
    (PAY, "ORDERCLOSED"): (Outcome.DECLINED, rc.DO_NOT_HONOUR),
    (PAY, "SYSTEMERROR"): (Outcome.UNKNOWN, rc.CHANNEL_UNAVAILABLE),
    (QUERY, "PAID"): (Outcome.APPROVED, rc.APPROVED),
    (QUERY, "PAYING"): (Outcome.PENDING, rc.IN_PROGRESS),
    (QUERY, "CLOSED"): (Outcome.DECLINED, rc.DO_NOT_HONOUR),
    (QUERY, "NOTEXIST"): (Outcome.DECLINED, rc.DO_NOT_HONOUR),
    (QUERY, "SYSTEMERROR"): (Outcome.UNKNOWN, rc.CHANNEL_UNAVAILABLE),
    (CANCEL, "DONE"): (Outcome.APPROVED, rc.APPROVED),
    (CANCEL, "NOTEXIST"): (Outcome.APPROVED, rc.APPROVED),
    (CANCEL, "RETRY"): (Outcome.UNKNOWN, rc.CHANNEL_UNAVAILABLE),
    (CANCEL, "REFUSED"): (Outcome.DECLINED, rc.DO_NOT_HONOUR),
    (CANCEL, "SYSTEMERROR"): (Outcome.UNKNOWN, rc.CHANNEL_UNAVAILABLE),
    (REFUND, "DONE"): (Outcome.APPROVED, rc.APPROVED),
    (REFUND, "REFUSED"): (Outcome.DECLINED, rc.DO_NOT_HONOUR),
    (REFUND, "SYSTEMERROR"): (Outcome.UNKNOWN, rc.CHANNEL_UNAVAILABLE),
}


class Pair:
    """Both ends of one channel with their real keys."""

    def __init__(self, kind: str) -> None:
        sim = SIMS.simulators[kind]
        self.channel, self.side = channel_of(kind), side_of(kind)
        self.account, self.crypto = demo_account(kind)
        labels = self.account.keys.labels()
        self.dek = demo_material(labels["seal"]) if "seal" in labels else b""
        self.channel_sign = algorithms.signer(sim.keys.sign_algorithm, (DEMO_DIR / sim.keys.sign_key).read_bytes())
        self.channel_verify = algorithms.verifier(
            sim.keys.verify_algorithm, (DEMO_DIR / sim.keys.verify_key).read_bytes()
        )

    def build(self, req: ChannelRequest) -> HttpCall:
        return self.channel.flows[req.op].build(req, self.account, self.crypto, time.time())

    def parse(self, req: ChannelRequest, answer: HttpAnswer, crypto: Crypto | None = None) -> ChannelResult:
        return self.channel.flows[req.op].parse(req, answer, crypto or self.crypto)

    def read(self, call: HttpCall, body: bytes | None = None) -> RequestSeen | str:
        """The request as the channel reads it, a sealed payment code opened as its simulator does."""
        seen = self.side.read(call.path, call.body if body is None else body, call.headers, self.channel_verify)
        assert not isinstance(seen, str) or body is not None, f"channel refused the switch's request: {seen}"
        if isinstance(seen, RequestSeen) and self.dek and seen.auth_code:
            code = algorithms.sm4_cbc_decrypt(self.dek, bytes.fromhex(seen.auth_code)).decode()
            seen = dataclasses.replace(seen, auth_code=code)
        return seen

    def request(self, amount_fen: int = 12345, op: str = PAY) -> ChannelRequest:
        auth_code = "134567890123456700" if op == PAY else ""
        return ChannelRequest(
            7,
            op,
            "20261123000000001000",
            amount_fen,
            auth_code,
            "SUB001",
            "T0000001",
            time.time() + 30,
            created=WRITTEN_AHEAD,  # one order time for every call (UnionPay's side keeps each order's)
            channel_txn_id="CHTX0001",
            refund_no="20261123000000002000" if op == REFUND else "",
            total_fen=20000,
        )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("op", "status"), list(EXPECTED))
def test_every_verdict_round_trips(kind, op, status):
    pair = Pair(kind)
    req = pair.request(op=op)
    call = pair.build(req)
    assert call.path in pair.side.paths
    seen = pair.read(call)
    assert isinstance(seen, RequestSeen)
    assert (seen.op, seen.out_trade_no) == (op, req.out_trade_no)
    if op == PAY:
        assert (seen.auth_code, seen.amount_fen) == (req.auth_code, 12345)
    if op == REFUND:
        assert (seen.amount_fen, seen.refund_no) == (12345, req.refund_no)
    answer = pair.side.write(seen, ChannelVerdict(status, "CHTX0001"), pair.channel_sign)
    result = pair.parse(req, answer)
    assert (result.outcome, result.response_code) == EXPECTED[(op, status)], result
    assert result.key == req.key
    if status in ("SUCCESS", "PAID") or (op, status) == (REFUND, "DONE"):
        assert result.channel_txn_id == "CHTX0001"
    if (op, status) == (QUERY, "NOTEXIST"):
        assert result.channel_code == NOT_FOUND


def test_unionpay_query_names_the_original_by_order_id_and_write_ahead_time():
    pair = Pair("unionpay")
    pay = pair.request()
    query = pair.request(op=QUERY)
    pay_doc = dict(parse_qsl(pair.build(pay).body.decode()))
    query_doc = dict(parse_qsl(pair.build(query).body.decode()))
    assert (query_doc["orderId"], query_doc["txnTime"]) == (pay_doc["orderId"], pay_doc["txnTime"])
    assert query_doc["txnType"] == "00" and pay_doc["txnType"] == "01"


@pytest.mark.parametrize("kind", KINDS)
def test_tampered_request_is_refused_with_the_channels_own_error(kind):
    pair = Pair(kind)
    call = pair.build(pair.request(100))
    tampered = call.body.replace(b"100", b"900", 1) if kind != "alipay" else call.body.replace(b"1.00", b"9.00")
    assert tampered != call.body
    refusal = pair.read(call, tampered)
    assert isinstance(refusal, str)
    # The channel's error answer is a certain "not processed": a pay (never sent twice) is refused
    # with 96, never UNKNOWN; a query, cancel or refund so refused (perhaps a retry of one whose
    # answer was lost) says nothing of the order: UNKNOWN, asked again.
    error = pair.side.write_error(refusal, pair.channel_sign)
    outcomes = {op: pair.parse(pair.request(op=op), error) for op in (PAY, CANCEL, REFUND, QUERY)}
    assert {op: (r.outcome, r.response_code) for op, r in outcomes.items()} == {
        PAY: (Outcome.DECLINED, rc.SYSTEM_MALFUNCTION),
        CANCEL: (Outcome.UNKNOWN, rc.CHANNEL_UNAVAILABLE),
        REFUND: (Outcome.UNKNOWN, rc.CHANNEL_UNAVAILABLE),
        QUERY: (Outcome.UNKNOWN, rc.CHANNEL_UNAVAILABLE),
    }


# A key of the right algorithm that is not the channel's.
WRONG_KEY = {
    "wechat": ("hmac-sha256-appended-key", "keys/journal/pan_hash_key"),
    "alipay": ("rsa-sha256", "keys/unionpay/platform_private.pem"),
    "unionpay": ("rsa-sha256", "keys/alipay/platform_private.pem"),
    "ecny": ("sm2-sm3", "keys/ecny/switch_sm2_private"),
    "inbank": ("hmac-sm3", "keys/journal/pan_hash_key"),
}


@pytest.mark.parametrize("kind", KINDS)
def test_forged_approval_is_unknown_not_approved(kind):
    pair = Pair(kind)
    req = pair.request()
    seen = pair.read(pair.build(req))
    assert isinstance(seen, RequestSeen)
    algorithm, wrong_key = WRONG_KEY[kind]
    forged_sign = algorithms.signer(algorithm, (DEMO_DIR / wrong_key).read_bytes())
    answer = pair.side.write(seen, ChannelVerdict("SUCCESS", "FORGED"), forged_sign)
    result = pair.parse(req, answer)
    assert (result.outcome, result.channel_code) == (Outcome.UNKNOWN, "BADSIGN")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("op", "status"), [(PAY, "SUCCESS"), (QUERY, "PAID")])
def test_a_genuine_answer_about_another_order_is_unknown_not_approved(kind, op, status):
    """Signed by the channel, but about another order (replayed, or the channel's mix-up)."""
    pair = Pair(kind)
    ours = pair.request(op=op)
    theirs = msgspec.structs.replace(ours, out_trade_no="20261123000000009999")
    seen = pair.read(pair.build(theirs))
    assert isinstance(seen, RequestSeen)
    answer = pair.side.write(seen, ChannelVerdict(status, "CHTX0001"), pair.channel_sign)
    assert pair.parse(theirs, answer).outcome is Outcome.APPROVED
    result = pair.parse(ours, answer)
    assert (result.outcome, result.channel_code) == (Outcome.UNKNOWN, "MISMATCH")


@pytest.mark.parametrize("kind", ["wechat", "ecny", "inbank"])
def test_an_approval_of_another_amount_is_unknown_not_approved(kind):
    pair = Pair(kind)
    ours = pair.request(12345)
    seen = pair.read(pair.build(msgspec.structs.replace(ours, amount_fen=1)))
    assert isinstance(seen, RequestSeen)
    result = pair.parse(ours, pair.side.write(seen, ChannelVerdict("SUCCESS", "CHTX0001"), pair.channel_sign))
    assert (result.outcome, result.channel_code) == (Outcome.UNKNOWN, "MISMATCH")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("answer", [HttpAnswer(502, b"bad gateway"), HttpAnswer(200, b"\x00garbage")])
def test_http_errors_and_garbage_are_unknown(kind, answer):
    pair = Pair(kind)
    result = pair.parse(pair.request(), answer)
    assert (result.outcome, result.response_code) == (Outcome.UNKNOWN, rc.CHANNEL_UNAVAILABLE)


def test_wechat_signature_matches_an_independent_computation():
    pair = Pair("wechat")
    doc = from_xml(pair.build(pair.request()).body)
    key = (DEMO_DIR / "keys/wechat/api_key").read_bytes().strip()
    text = "&".join(f"{k}={doc[k]}" for k in sorted(doc) if k != "sign" and doc[k]) + "&key=" + key.decode()
    assert doc["sign"] == hmac.new(key, text.encode(), hashlib.sha256).hexdigest().upper()
    assert doc["total_fee"] == "12345" and doc["sign_type"] == "HMAC-SHA256"


def test_alipay_request_carries_yuan_and_the_answer_node_is_cut_exactly():
    pair = Pair("alipay")
    params = dict(parse_qsl(pair.build(pair.request(12345)).body.decode()))
    assert params["method"] == "alipay.trade.pay" and params["sign_type"] == "RSA2"
    biz = json.loads(params["biz_content"])
    assert biz["scene"] == "bar_code" and biz["total_amount"] == "123.45"
    from protocols.channels.alipay.flows import extract_node

    body = '{"alipay_trade_pay_response":{"msg":"a}\\"{b","code":"10000"},"sign":"x"}'
    assert extract_node(body, "alipay_trade_pay_response") == '{"msg":"a}\\"{b","code":"10000"}'


def test_alipay_statement_is_asked_on_the_gateway_and_answered_with_a_signed_link():
    pair = Pair("alipay")
    download, day = pair.channel.statement, dt.date(2026, 11, 23)
    call = download.build(day, pair.account, pair.crypto, time.time())
    ask = pair.read(call)
    assert call.path in pair.side.paths and ask == StatementAsk(day, pair.account.app_id)
    at = dt.datetime(2026, 11, 23, 9, 30, tzinfo=CST)
    row = StatementRow(
        entry=PAY_ENTRY,
        out_trade_no="2026112300001",
        channel_txn_id="2026112322001",
        amount_fen=12345,
        status=PAID,
        at=at,
    )
    assert download.read(pair.side.statement([row], ask)) == [row]
    link = "http://127.0.0.1:9102/_bill/0123abcd"
    assert download.parse(pair.side.write_statement(b"", pair.channel_sign, link), pair.crypto) == Link(link)
    forged_sign = algorithms.signer("rsa-sha256", (DEMO_DIR / WRONG_KEY["alipay"][1]).read_bytes())
    with pytest.raises(StatementRefused, match="signature"):
        download.parse(pair.side.write_statement(b"", forged_sign, link), pair.crypto)


def test_unionpay_signs_the_sha256_hex_of_the_sorted_string():
    pair = Pair("unionpay")
    doc = dict(parse_qsl(pair.build(pair.request()).body.decode()))
    digest = hashlib.sha256(sorted_query(doc, frozenset({"signature"})).encode()).hexdigest().encode()
    verify = algorithms.verifier("rsa-sha256", (DEMO_DIR / "keys/unionpay/merchant_public.pem").read_bytes())
    assert verify(digest, doc["signature"])
    assert doc["txnAmt"] == "12345" and doc["qrNo"] == "134567890123456700"


def test_unionpay_pin_block_travels_only_with_a_card_pin():
    pair = Pair("unionpay")
    card = msgspec.structs.replace(pair.request(), pin_block="0123456789ABCDEF")
    call = pair.build(card)
    assert dict(parse_qsl(call.body.decode()))["pinBlock"] == "0123456789ABCDEF"
    seen = pair.read(call)
    assert isinstance(seen, RequestSeen) and seen.pin_block == "0123456789ABCDEF"
    assert b"pinBlock" not in pair.build(pair.request()).body


@pytest.mark.parametrize(
    ("day", "asked_at"),
    [
        (dt.date(2026, 11, 23), dt.datetime(2026, 11, 24, 1, 0, tzinfo=CST)),
        (dt.date(2026, 12, 31), dt.datetime(2027, 1, 1, 0, 30, tzinfo=CST)),  # settleDate is MMDD only
        (dt.date(2028, 2, 29), dt.datetime(2028, 3, 1, 2, 0, tzinfo=CST)),
    ],
)
def test_unionpay_statement_ask_names_the_day_asked_for(day, asked_at):
    pair = Pair("unionpay")
    call = pair.channel.statement.build(day, pair.account, pair.crypto, asked_at.timestamp())
    ask = pair.side.read(call.path, call.body, call.headers, pair.channel_verify)
    assert ask == StatementAsk(day, "777290058110048")


def test_ecny_payment_code_leaves_the_switch_sealed():
    pair = Pair("ecny")
    req = pair.request()
    call = pair.build(req)
    assert req.auth_code.encode() not in call.body
    assert json.loads(call.body)["pay_code"] != req.auth_code
    seen = pair.read(call)  # opened under the channel's data key
    assert isinstance(seen, RequestSeen) and seen.auth_code == req.auth_code
    with pytest.raises(ValueError, match="seal"):  # never in clear, even if no sealer were given
        pair.channel.flows[PAY].build(req, pair.account, dataclasses.replace(pair.crypto, seal=None), time.time())


@pytest.mark.parametrize(
    ("seal_key", "message"),
    [
        ("", r"missing required field `seal_key` - at `\$\.channels\.ecny\.account\.keys`"),
        (', seal_key = ""', r"length >= 1 - at `\$\.channels\.ecny\.account\.keys\.seal_key`"),
    ],
)
def test_an_ecny_account_without_its_seal_key_is_a_configuration_error(tmp_path, seal_key, message):
    text = (DEMO_DIR / "switch.toml").read_text()
    assert ', seal_key = "ecny:sm4-dek"' in text
    path = tmp_path / "switch.toml"
    path.write_text(absolute_paths(text.replace(', seal_key = "ecny:sm4-dek"', seal_key)))
    with pytest.raises(ConfigError, match=message):
        load_config(path)


@pytest.mark.parametrize(
    ("fen_amount", "text"),
    [(1, "0.01"), (10, "0.10"), (12345, "123.45"), (100, "1.00"), (999999999999, "9999999999.99")],
)
def test_yuan_and_fen_convert_exactly(fen_amount, text):
    assert yuan(fen_amount) == text
    assert fen(text) == fen_amount


@pytest.mark.parametrize("bad", ["1.234", "abc", "-1.00", "1.x", ""])
def test_fen_refuses_non_amounts(bad):
    with pytest.raises(ValueError):
        fen(bad)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "utf-16-be", "utf-32"])
def test_xml_with_a_dtd_is_refused_in_any_encoding(encoding):
    """In UTF-16 the DTD's bytes are not b"<!DOCTYPE": a byte check let it through, and its
    entities were expanded (found in review)."""
    doc = f'<?xml version="1.0" encoding="{encoding}"?><!DOCTYPE x [<!ENTITY a "bbbb">]><xml><a>&a;</a></xml>'
    with pytest.raises(ValueError):
        from_xml(doc.encode(encoding))
    assert from_xml(b"<xml><a><![CDATA[b]]></a></xml>") == {"a": "b"}


@given(st.dictionaries(st.text(), st.text()))
def test_form_encoding_is_urlencode_byte_for_byte(params):
    """The Alipay and UnionPay bodies: what the channels' own SDKs (and urllib) send."""
    assert form_encode(params) == urlencode(params).encode()


# Form text as channels send it and as it may arrive broken: escapes valid and not, "+", "=",
# "&", line breaks, bytes past ASCII (raw and escaped, valid UTF-8 and not).
_FORM_PIECES = ["%", "+", "=", "&", " ", "\n", "\r", "é", "%3D", "%3d", "%26", "%2B", "%0A", "%E4%B8%AD",
                "%e4%b8", "%FF", "%0", "%G1", "%%", "="]  # fmt: skip
_FORM_TEXT = st.lists(st.sampled_from(_FORM_PIECES) | st.text(max_size=3)).map("".join)


@given(_FORM_TEXT, st.booleans())
@example("a=%\n", False)  # a line break: quoted-printable's soft break, never a form's
@example("a==41%G1", False)  # a raw "=": it would start an escape there
def test_form_decoding_is_parse_qsl_field_for_field(text, strict):
    """The channels' answers and notifications (and the simulators' requests) are read as urllib
    reads them, broken forms included."""
    try:
        want = dict(parse_qsl(text, keep_blank_values=True, strict_parsing=strict))
    except ValueError:
        with pytest.raises(ValueError):
            form_decode(text, strict)
    else:
        assert form_decode(text, strict) == want


@given(st.dictionaries(_FORM_TEXT, _FORM_TEXT))
def test_form_encoding_of_form_like_text_is_urlencode(params):
    assert form_encode(params) == urlencode(params).encode()


def test_a_channel_without_a_flow_for_every_operation_is_refused():
    wechat = channel_of("wechat")
    with pytest.raises(TypeError, match="no flow for cancel"):
        dataclasses.replace(wechat, flows={op: f for op, f in wechat.flows.items() if op != CANCEL})


@pytest.mark.parametrize("kind", ["alipay", "ecny"])
def test_a_null_message_in_an_approval_is_still_an_approval(kind):
    """A text that decides nothing, sent as null, does not make a signed approval unreadable."""
    pair = Pair(kind)
    req = pair.request()
    seen = pair.read(pair.build(req))
    answer = pair.side.write(seen, ChannelVerdict("SUCCESS", "CHTX0001"), pair.channel_sign)
    if kind == "alipay":
        body = answer.body.replace(b'"msg":"Success"', b'"msg":null')
        node = extract_alipay_node(body)
        body = body[: body.rindex(b'"sign":"')] + b'"sign":"' + pair.channel_sign(node.encode()).encode() + b'"}'
        headers = answer.headers
    else:
        doc = json.loads(answer.body) | {"message": None}
        body = json.dumps(doc, separators=(",", ":")).encode()
        headers = {**answer.headers, "X-Signature": pair.channel_sign(body)}
    result = pair.parse(req, HttpAnswer(200, body, headers))
    assert (result.outcome, result.channel_txn_id) == (Outcome.APPROVED, "CHTX0001"), result


def extract_alipay_node(body: bytes) -> str:
    from protocols.channels.alipay.flows import extract_node

    node = extract_node(body, "alipay_trade_pay_response")
    assert node is not None
    return node


def test_alipay_writes_beijing_time_to_the_second():
    from protocols.channels.alipay.flows import beijing

    assert beijing(1733300000.7) == "2024-12-04 16:13:20"  # UTC 08:13:20.7, floored
    assert beijing(1733300001.2) == "2024-12-04 16:13:21"  # the next second, not the last one's
    assert beijing(1733299999.9) == "2024-12-04 16:13:19"
