"""Request validation: each rule gives the spec's response code and names its field and rule."""

import datetime as dt

import pytest

from bench.traffic import network, purchase, reversal
from protocols import response_codes as rc
from protocols import validation
from protocols.validation import (
    MANDATORY,
    OriginalOfReversal,
    Rejection,
    TxnType,
    classify,
    mac_present,
    original_of_reversal,
    transmitted_on,
    validate,
)

PURCHASE = purchase("T0000001", "898310048990001", "134567890123456700", 1234, "000123")


def check(message):
    kind = classify(message)
    return kind if isinstance(kind, Rejection) else validate(kind, message)


def test_valid_purchase_and_echo_pass():
    assert check(PURCHASE) is None
    assert check(network("T0000001", "000001", "301")) is None


@pytest.mark.parametrize("field", MANDATORY[TxnType.PURCHASE])
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
    ("mti", "code", "txn_type"),
    [
        ("0200", "000000", TxnType.PURCHASE),
        ("0200", "020000", TxnType.VOID),
        ("0200", "200000", TxnType.REFUND),
        ("0100", "300000", TxnType.INQUIRY),
        ("0400", "000000", TxnType.REVERSAL),
    ],
)
def test_classify_follows_the_message_table(mti, code, txn_type):
    assert classify({"t": mti, "3": code}) is txn_type


RULE_NAMES = {v.name for v in vars(validation).values() if isinstance(v, validation.Rule)} | {validation.FORMAT}


@pytest.mark.parametrize(
    "message",
    [
        {k: v for k, v in PURCHASE.items() if k != "4"},
        {**PURCHASE, "4": "000000000000"},
        {**PURCHASE, "2": "13456789012345670X"},
        {**PURCHASE, "3": "310000"},
        {k: v for k, v in PURCHASE.items() if k != "3"},
        network("T0000001", "000001", "999"),
    ],
)
def test_every_rejection_names_a_rule_of_the_table(message):
    """The rule is a metrics label: it must come from the module's rules, never from the peer."""
    rejection = check(message)
    assert rejection is not None and rejection.rule in RULE_NAMES
    assert rejection.rule in str(rejection) and rejection.code in str(rejection)


TODAY = dt.date(2025, 1, 1)


@pytest.mark.parametrize(
    ("field7", "date"),
    [("0101120000", TODAY), ("1231235959", dt.date(2024, 12, 31)), ("0102000000", dt.date(2025, 1, 2))],
)
def test_field_7_within_a_day_gives_its_date_across_the_year_end(field7, date):
    assert transmitted_on({"7": field7}, TODAY) == date


@pytest.mark.parametrize("field7", ["1230120000", "0103120000", "0701120000"])
def test_field_7_more_than_a_day_away_is_30(field7):
    rejection = transmitted_on({"7": field7}, TODAY)
    assert rejection == Rejection(rc.FORMAT_ERROR, "7", rejection.reason, validation.WITHIN_A_DAY.name)


def test_the_same_field_7_is_judged_against_each_day_it_arrives_on():
    """(The dates are remembered per field 7 and day: a day later, the same field 7 is another answer.)"""
    assert transmitted_on({"7": "0101120000"}, TODAY) == TODAY
    assert isinstance(transmitted_on({"7": "0101120000"}, dt.date(2025, 1, 3)), Rejection)
    assert transmitted_on({"7": "0101120000"}, dt.date(2025, 12, 31)) == dt.date(2026, 1, 1)


def reversal_of(field7: str) -> dict[str, str]:
    return reversal({**PURCHASE, "7": field7}, "000124")


def test_field_90_names_the_purchase_it_reverses():
    assert original_of_reversal(reversal_of("0101120000"), TODAY) == OriginalOfReversal(
        PURCHASE["11"], "0101120000", TODAY
    )


@pytest.mark.parametrize(
    ("spoil", "code", "rule"),
    [
        (lambda f90: "0100" + f90[4:], rc.FORMAT_ERROR, validation.ORIGINAL_MTI),
        (lambda f90: f90[:10] + "1340120000" + f90[20:], rc.FORMAT_ERROR, validation.ORIGINAL_TRANSMITTED),
        (lambda f90: f90[:10] + "0701120000" + f90[20:], rc.ORIGINAL_NOT_FOUND, validation.ORIGINAL_WITHIN_A_DAY),
    ],
)
def test_field_90_rules(spoil, code, rule):
    message = reversal_of("0101120000")
    rejection = original_of_reversal({**message, "90": spoil(message["90"])}, TODAY)
    assert isinstance(rejection, Rejection)
    assert (rejection.code, rejection.field, rejection.rule) == (code, "90", rule.name)


def test_a_request_without_field_64_breaks_the_mac_rule():
    assert mac_present({**PURCHASE, "64": "0123456789ABCDEF"}) is None
    rejection = mac_present(PURCHASE)
    assert (rejection.code, rejection.field, rejection.rule) == (rc.FORMAT_ERROR, "64", validation.MAC_PRESENT.name)


def test_field_7_as_a_moment_takes_the_nearest_year_and_refuses_what_is_no_time():
    now = dt.datetime(2027, 1, 1, 0, 0, 5, tzinfo=dt.UTC)
    assert validation.transmitted_at("1231235955", now) == dt.datetime(2026, 12, 31, 23, 59, 55, tzinfo=dt.UTC)
    assert validation.transmitted_at("0101000001", now) == dt.datetime(2027, 1, 1, 0, 0, 1, tzinfo=dt.UTC)
    assert validation.transmitted_at("0101250000", now) is None  # hour 25
    assert validation.transmitted_at("0601000000", now) is None  # months away
