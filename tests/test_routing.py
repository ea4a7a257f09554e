"""Routing by payment code and card BIN (spec section 5), on the demo routing table."""

import pytest

from bench.demo_config import DEMO_SWITCH_CONFIG
from protocols import response_codes as rc
from protocols.masking import luhn_ok, mask_pan, typed
from protocols.validation import Rejection
from switch.config import load_config
from switch.routing import Router

ROUTER = Router(load_config(DEMO_SWITCH_CONFIG).routing)


@pytest.mark.parametrize(
    ("code", "channel"),
    [
        ("10" + "0" * 16, "wechat"),
        ("15" + "9" * 16, "wechat"),
        ("25" + "1" * 14, "alipay"),
        ("30" + "1" * 17, "alipay"),
        ("62" + "1" * 17, "unionpay"),
        ("01" + "2" * 17, "ecny"),
        ("88" + "3" * 17, "inbank"),
    ],
)
def test_payment_codes_route_by_prefix_and_length(code, channel):
    assert ROUTER.route(code, "031") == channel


@pytest.mark.parametrize("code", ["13" + "0" * 17, "62" + "1" * 16, "01" + "2" * 18, "25" + "1" * 13])
def test_wrong_length_for_its_channel_is_14(code):
    result = ROUTER.route(code, "031")
    assert isinstance(result, Rejection) and result.code == rc.INVALID_PAYMENT_CODE
    assert "length" in result.reason


def test_unknown_prefix_is_14():
    result = ROUTER.route("99" + "0" * 16, "031")
    assert isinstance(result, Rejection) and result.code == rc.INVALID_PAYMENT_CODE


def test_cards_route_by_bin_with_luhn():
    card = "6222020200112233446"
    assert luhn_ok(card)
    assert ROUTER.route(card, "051") == "unionpay"
    assert ROUTER.route("4111111111111111", "021") == "unionpay"
    bad_check = ROUTER.route("6222020200112233445", "051")
    assert isinstance(bad_check, Rejection) and bad_check.code == rc.INVALID_PAYMENT_CODE
    no_bin = ROUTER.route("5500005555555559", "051")
    assert isinstance(no_bin, Rejection) and no_bin.code == rc.INVALID_PAYMENT_CODE


def test_what_a_person_types_is_kept_with_every_card_number_masked():
    assert typed("card 6222 0212 3456 7890 123, ok", 500) == "card 622202*********0123, ok"
    assert typed("ref-6222-0212-3456-7890", 500) == "ref-622202******7890"
    assert typed("x" * 488 + "6222021234567890123", 500) == "x" * 488 + "622202******"  # masked, then cut
    assert typed(" a\x00b\r\n", 500) == "a b"  # (PostgreSQL refuses a NUL in text)
    kept = "2026-12-06 19:20 ticket 7, rrn 000000002025, order 20261206000000002025, phone 138 1234 5678"
    assert typed(kept, 500) == kept  # a date, an RRN, a 20-digit order number, a phone number


def test_masking_keeps_first_six_and_last_four_only():
    assert mask_pan("6222020200112233446") == "622202*********3446"
    assert mask_pan("134567890123456700") == "134567********6700"
    assert mask_pan("1234567890") == "**********"
    assert mask_pan("") == ""


def test_scrub_masks_long_digit_runs_in_free_text():
    from protocols.masking import scrub

    text = "failed for 6222020200112233446 at 12:00, order 20261123000000001000x, stan 000042"
    assert scrub(text) == "failed for 622202*********3446 at 12:00, order 20261123000000001000x, stan 000042"


def test_a_gray_route_takes_the_merchants_named_and_a_share_by_hash_that_only_grows():
    import msgspec

    from switch.config import GrayRoute
    from switch.routing import share_of

    routing = load_config(DEMO_SWITCH_CONFIG).routing
    merchants = [f"8983100477{n:05d}" for n in range(200)]

    def router(percent: int, named: tuple[str, ...] = ()) -> Router:
        gray = [GrayRoute(channel="wechat", to="alipay", percent=percent, merchants=list(named))]
        return Router(msgspec.structs.replace(routing, gray=gray))

    for percent in (0, 10, 50, 100):
        moved = {m for m in merchants if router(percent).divert("wechat", m) == "alipay"}
        assert moved == {m for m in merchants if share_of(m) < percent}
        assert abs(len(moved) - 2 * percent) <= 20  # about the share asked for, over 200 merchants
    edge = merchants[0]
    assert router(share_of(edge)).divert("wechat", edge) == "wechat"  # its place is the first share that takes it
    assert router(share_of(edge) + 1).divert("wechat", edge) == "alipay"
    assert router(0, (edge,)).divert("wechat", edge) == "alipay"  # named: whatever the share
    assert router(100).divert("alipay", edge) == "alipay"  # another channel's purchases: untouched
    # Pinned: a different hash would move merchants between the two sides in the middle of a cut-over.
    assert [share_of(m) for m in ("898310048990001", "898310048990002", "898310048990003")] == [50, 8, 43]
