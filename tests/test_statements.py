"""Channel statement formats: what a channel writes reads back the same, to the fen, in each
format; a file whose totals disagree with its rows, or that is cut, is refused naming the line."""

from __future__ import annotations

import datetime as dt
import io
import zipfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.simulators.side import StatementAsk, side_of
from protocols import statements
from protocols.channels import channel_of
from protocols.channels.base import StatementRefused, fetchable
from protocols.channels.wechat import statement as wechat
from protocols.statements import CST, PAID, PAY, REFUND, REVOKED, StatementError, StatementRow, fee_fen, fen_of
from tests.test_connectors import KINDS

ASK = StatementAsk(dt.date(2026, 11, 23), "10000100")
# Each channel's format: as its simulated side writes it, as its package reads it. Lake Pay's too:
# a channel from a package of its own.
FORMATS = {
    kind: (lambda rows, kind=kind: side_of(kind).statement(rows, ASK), channel_of(kind).statement.read)
    for kind in [*KINDS, "tests.lakepay"]
}

rows_strategy = st.lists(
    st.builds(
        lambda entry, n, amount, revoked, second, fee: StatementRow(
            entry=entry,
            out_trade_no=f"20261123{n:012d}",
            channel_txn_id=f"42000{n:016d}",
            amount_fen=amount,
            status=REVOKED if revoked and entry == PAY else PAID,
            at=dt.datetime(2026, 11, 23, 10, 0, tzinfo=CST) + dt.timedelta(seconds=second),
            refund_no=f"R{n:08d}" if entry == REFUND else "",
            fee_fen=-fee if entry == REFUND else fee,
        ),
        st.sampled_from([PAY, REFUND]),
        st.integers(0, 10**9),
        st.integers(1, 99_999_999_99),
        st.booleans(),
        st.integers(0, 3599),
        st.integers(0, 10**6),
    ),
    max_size=30,
)


@pytest.mark.parametrize("fmt", FORMATS)
@settings(max_examples=60, deadline=None)
@given(rows=rows_strategy)
def test_every_format_reads_back_what_was_written(fmt, rows):
    write, parse = FORMATS[fmt]
    assert parse(write(rows)) == rows


def _sample() -> list[StatementRow]:
    at = dt.datetime(2026, 11, 23, 10, 0, tzinfo=CST)
    return [
        StatementRow(entry=PAY, out_trade_no="A1", channel_txn_id="T1", amount_fen=1234, status=PAID, at=at, fee_fen=7),
        StatementRow(
            entry=REFUND, out_trade_no="A1", channel_txn_id="T1", amount_fen=34, status=PAID, at=at, refund_no="R1"
        ),
    ]


def test_wechat_bill_shape_is_wechats():
    text = wechat.write(_sample(), "wx2421b1c4370ec43b", "10000100").decode()
    lines = text.splitlines()
    assert lines[0].startswith("交易时间,公众账号ID,商户号")
    assert lines[1].startswith("`2026-11-23 10:00:00,`wx2421b1c4370ec43b,`10000100,")
    assert ",`12.34," in lines[1] and ",`0.07000," in lines[1]
    assert lines[3].startswith("总交易单数") and lines[4].startswith("`2,`12.34,`0.34,")


def test_a_wechat_refund_is_done_only_when_its_refund_state_says_success():
    """A WeChat Pay bill lists a refund once asked (交易状态 REFUND); 退款状态 says whether its
    money went back: PROCESSING, REFUNDCLOSE or CHANGE (abnormal) is no refund done, and reads so."""
    at = dt.datetime(2026, 11, 23, 10, 0, tzinfo=CST)
    rows = [
        StatementRow(
            entry=REFUND, out_trade_no="A1", channel_txn_id="T1", amount_fen=34, status=status, at=at, refund_no=f"R{n}"
        )
        for n, status in enumerate([PAID, "PROCESSING", "REFUNDCLOSE", "CHANGE"])
    ]
    text = wechat.write(rows, "wx2421b1c4370ec43b", "10000100")
    assert [r.status for r in wechat.parse(text)] == [PAID, "PROCESSING", "REFUNDCLOSE", "CHANGE"]
    assert text.decode().count(",`SUCCESS,") == 1  # the refund state, written as WeChat Pay does
    unstated = text.replace(b",`PROCESSING,", b",`,", 1)
    with pytest.raises(StatementError, match="line 3: a refund without its refund state"):
        wechat.parse(unstated)


@pytest.mark.parametrize(
    ("fmt", "spoil"),
    [
        ("wechat", lambda b: b.replace(b"`2,`12.34", b"`3,`12.34")),
        ("alipay", None),
        ("unionpay", lambda b: b.replace(b"TOTAL0000000002", b"TOTAL0000000003")),
        ("inbank", lambda b: b.replace(b"TOTAL,2,1234,34", b"TOTAL,2,1235,34")),
        ("unionpay", lambda b: b[:40]),
        ("ecny", lambda b: b.replace(b",1234,", b",12x4,")),
        ("tests.lakepay", lambda b: b.replace(b'"amount":1234', b'"amount":"1234"')),
    ],
)
def test_a_spoiled_statement_is_refused_naming_the_line(fmt, spoil):
    write, parse = FORMATS[fmt]
    data = write(_sample())
    if spoil is None:  # cut the zip in half
        data = data[: len(data) // 2]
    else:
        data = spoil(data)
        assert data != write(_sample())
    with pytest.raises(StatementError, match=r"line \d+"):
        parse(data)


@settings(max_examples=300, deadline=None)
@given(at=st.datetimes(dt.datetime(2000, 1, 1), dt.datetime(2099, 12, 31, 23, 59, 59)))
def test_a_statements_time_reads_back_to_the_second(at):
    at = at.replace(microsecond=0, tzinfo=CST)
    assert statements.cst_time(statements.time_text(at), 1) == at
    assert statements.digits_time(at.strftime("%Y%m%d%H%M%S")) == at


@pytest.mark.parametrize(
    "text",
    ["2026-13-07 10:00:00", "2026-12-07 24:00:00", "2026-02-30 10:00:00", "2026-12-07T10:00:00", "2026-1-07 10:00:00",
     "\uff12026-12-07 10:00:00", "2026-12-07 10:00:0x", "2026-12-07 10:00", ""],
)  # fmt: skip
def test_a_time_not_written_so_is_refused_naming_the_line(text):
    with pytest.raises(StatementError, match=r"line 7: not a time"):
        statements.cst_time(text, 7)
    with pytest.raises(ValueError):
        statements.digits_time(text.replace("-", "").replace(" ", "").replace(":", ""))


def test_amounts_and_fees_are_exact_fen():
    assert fen_of("12.34", 1) == 1234 and fen_of("0.07000", 1) == 7 and fen_of("-0.01", 1) == -1
    with pytest.raises(StatementError):
        fen_of("0.001", 1)
    assert fee_fen(1234, 60) == 7  # 7.404 -> 7
    assert fee_fen(1250, 60) == 8  # 7.5 -> 8, half up
    assert fee_fen(1, 60) == 0


def test_an_alipay_bill_zip_that_unpacks_past_the_limit_is_refused_unread(monkeypatch):
    """A zip bomb: a small download that unpacks to gigabytes (409 KB to 818 MB of memory, found
    in review). Its declared size is read before a byte of it is unpacked."""
    from protocols.channels.alipay import statement as alipay

    monkeypatch.setattr(alipay, "MAX_TEXT_BYTES", 1 << 20)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("2088_20261123_业务明细.csv", b"0" * (2 << 20))
    with pytest.raises(StatementError, match="unpacks to more than"):
        alipay.parse(out.getvalue())


def test_a_unionpay_file_that_unpacks_past_the_limit_is_refused(monkeypatch):
    from protocols.channels.unionpay import download
    from tests.test_connectors import Pair

    pair = Pair("unionpay")
    monkeypatch.setattr(download, "MAX_TEXT_BYTES", 1 << 20)
    answer = pair.side.write_statement(b"0" * (2 << 20), pair.channel_sign, "")
    with pytest.raises(StatementRefused, match="unpacks to more than"):
        download.parse(answer, pair.crypto)
    assert download.parse(pair.side.write_statement(b"0" * 1000, pair.channel_sign, ""), pair.crypto) == b"0" * 1000


@pytest.mark.parametrize(
    ("url", "fetched"),
    [
        ("https://dwbillcenter.alipay.com/downloadBillFile.resource?bizType=trade", True),
        ("http://127.0.0.1:9102/bill.zip", True),  # a simulator on this host
        ("http://dwbillcenter.alipay.com/downloadBillFile.resource", False),  # the zip is signed by nothing
        ("http://169.254.169.254/latest/meta-data", False),
        ("https://user:pass@dwbillcenter.alipay.com/x", False),
        ("file:///etc/passwd", False),
    ],
)
def test_a_statement_link_is_fetched_over_https_alone(url, fetched):
    assert fetchable(url) is fetched
