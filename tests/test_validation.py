"""Request validation: each rule gives the spec's response code and names its field."""

import pytest

from bench.traffic import network, purchase
from protocols import response_codes as rc
from protocols.validation import MANDATORY, Kind, Rejection, classify, validate

PURCHASE = purchase("T0000001", "898310048990001", "134567890123456700", 1234, "000123")


def check(message):
    kind = classify(message)
    return kind if isinstance(kind, Rejection) else validate(kind, message)


def test_valid_purchase_and_echo_pass():
    assert check(PURCHASE) is None
    assert check(network("T0000001", "000001", "301")) is None


@pytest.mark.parametrize("field", MANDATORY[Kind.PURCHASE])
def test_each_missing_mandatory_purchase_field_is_30(field):
    message = {k: v for k, v in PURCHASE.items() if k != field}
    rejection = check(message)
    assert rejection is not None and rejection.code == rc.FORMAT_ERROR and rejection.field == field


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("4", "00000000A100", rc.INVALID_AMOUNT),
        ("4", "000000000000", rc.INVALID_AMOUNT),
        ("4", "-00000000100", rc.INVALID_AMOUNT),
        ("2", "13456789012345670X", rc.INVALID_PAYMENT_CODE),
        ("7", "1332120000", rc.FORMAT_ERROR),
        ("7", "1123250000", rc.FORMAT_ERROR),
        ("11", "12345A", rc.FORMAT_ERROR),
        ("12", "246000", rc.FORMAT_ERROR),
        ("13", "0230", rc.FORMAT_ERROR),
        ("22", "999", rc.FORMAT_ERROR),
        ("25", "01", rc.FORMAT_ERROR),
        ("49", "840", rc.FORMAT_ERROR),
        ("41", "        ", rc.FORMAT_ERROR),
        ("64", "ZZZZZZZZZZZZZZZZ", rc.FORMAT_ERROR),
    ],
)
def test_bad_field_content(field, value, code):
    rejection = check({**PURCHASE, field: value})
    assert rejection is not None
    assert (rejection.code, rejection.field) == (code, field)


def test_unsupported_processing_code_or_mti_is_12():
    assert check({**PURCHASE, "3": "310000"}).code == rc.INVALID_TRANSACTION
    assert check({**PURCHASE, "t": "0220"}).code == rc.INVALID_TRANSACTION


def test_unknown_network_management_code_is_12():
    assert check(network("T0000001", "000001", "999")).code == rc.INVALID_TRANSACTION


@pytest.mark.parametrize(
    ("mti", "code", "kind"),
    [
        ("0200", "000000", Kind.PURCHASE),
        ("0200", "020000", Kind.VOID),
        ("0200", "200000", Kind.REFUND),
        ("0100", "300000", Kind.INQUIRY),
        ("0400", "000000", Kind.REVERSAL),
    ],
)
def test_classify_follows_the_message_table(mti, code, kind):
    assert classify({"t": mti, "3": code}) is kind
