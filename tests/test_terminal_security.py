"""Spec section 7 end to end over TCP: sign-on hands out working keys under the TMK, MAC'd
requests are approved and their answers MAC'd, a bad MAC is A0 and never reaches a channel, and a
card purchase's PIN reaches UnionPay translated to the zone PIN key."""

from __future__ import annotations

import json
import random
import urllib.request

import asyncpg

from bench.demo_config import DEMO_DIR
from bench.terminal import TerminalKeys
from bench.traffic import card_number, inquiry, network, purchase, reversal
from hsm import KeyKind
from hsm.keys import terminal_label
from hsm.software import SoftwareHsm
from switch.keystore import KeyStore
from tests.conftest import run
from tests.support import MERCHANT, STANS, connected, journal_row, new_purchase

MAC_TERMINAL, ECB_TERMINAL = "M0000001", "M0000002"


def demo_tmk(terminal: str) -> bytes:
    return bytes.fromhex((DEMO_DIR / "keys" / "terminals" / f"{terminal}.tmk").read_text().strip())


def sim_stats(simulators: dict[str, int], channel: str) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{simulators[channel]}/_sim/stats", timeout=5) as response:
        return json.load(response)


async def signed_on(terminal, terminal_id: str, algorithm: str = "x9.19") -> TerminalKeys:
    keys = TerminalKeys(terminal_id, demo_tmk(terminal_id), algorithm)
    answer = await terminal.request(network(terminal_id, STANS.next(terminal_id), "001"))
    assert answer["39"] == "00" and len(answer["62"]) == 80
    keys.take_working_keys(answer["62"])  # raises when a check value does not match
    terminal.keys[terminal_id] = keys
    return keys


def mac_purchase(terminal_id: str, channel: str = "wechat") -> dict[str, str]:
    return new_purchase(channel, terminal=terminal_id)


def test_sign_on_then_maced_purchases_on_both_mac_algorithms(switch, database_url):
    async def scenario():
        async with connected(switch) as terminal:
            for terminal_id, algorithm in ((MAC_TERMINAL, "x9.19"), (ECB_TERMINAL, "unionpay-ecb")):
                await signed_on(terminal, terminal_id, algorithm)
                for channel in ("wechat", "alipay", "ecny"):
                    answer = await terminal.request(mac_purchase(terminal_id, channel))
                    assert answer["39"] == "00" and "64" in answer, (channel, answer)
            assert terminal.bad_macs == 0

    run(scenario())


def test_maced_reversal_and_inquiry_with_fields_past_64(switch):
    """A 0400 carries field 90 after the MAC (secondary bitmap): the MAC covers the message up to
    field 64 only, with the bitmaps as sent."""

    async def scenario():
        async with connected(switch) as terminal:
            await signed_on(terminal, MAC_TERMINAL)
            original = mac_purchase(MAC_TERMINAL)
            approved = await terminal.request(original)
            assert approved["39"] == "00"
            reversed_ = await terminal.request(reversal(original, STANS.next(MAC_TERMINAL)))
            assert reversed_["39"] == "00" and "64" in reversed_
            asked = await terminal.request(inquiry(MAC_TERMINAL, MERCHANT, approved["37"], STANS.next(MAC_TERMINAL)))
            assert asked["39"] in ("00", "05") and "64" in asked
            assert terminal.bad_macs == 0

    run(scenario())


def test_a_bad_or_missing_mac_never_reaches_a_channel(switch, database_url, simulators):
    async def scenario():
        async with connected(switch) as terminal:
            keys = await signed_on(terminal, MAC_TERMINAL)
            pays_before = sim_stats(simulators, "wechat").get("pay", 0)
            forged = TerminalKeys(MAC_TERMINAL, demo_tmk(MAC_TERMINAL))
            forged.mak, forged.pik = bytes(reversed(keys.mak)), keys.pik
            terminal.keys[MAC_TERMINAL] = forged
            bad = await terminal.request(mac_purchase(MAC_TERMINAL))
            assert bad["39"] == "A0"
            del terminal.keys[MAC_TERMINAL]  # sends without field 64
            missing = await terminal.request(mac_purchase(MAC_TERMINAL))
            assert missing["39"] == "30"
            assert sim_stats(simulators, "wechat").get("pay", 0) == pays_before
            for answer in (bad, missing):
                assert await journal_row(database_url, answer["37"]) is None
            terminal.keys[MAC_TERMINAL] = keys
            assert (await terminal.request(mac_purchase(MAC_TERMINAL)))["39"] == "00"

    run(scenario())


def test_after_a_key_change_only_messages_in_flight_keep_the_old_mak(switch):
    async def scenario():
        async with connected(switch) as terminal:
            first = await signed_on(terminal, MAC_TERMINAL)
            change = await terminal.request(network(MAC_TERMINAL, STANS.next(MAC_TERMINAL), "101"))
            assert change["39"] == "00"
            second = TerminalKeys(MAC_TERMINAL, demo_tmk(MAC_TERMINAL))
            second.take_working_keys(change["62"])
            assert second.mak != first.mak
            # A message MAC'd under the key just replaced (in flight at the change) still verifies...
            assert (await terminal.request(mac_purchase(MAC_TERMINAL)))["39"] == "00"
            # ...but after another change, a key two generations old does not.
            third = await terminal.request(network(MAC_TERMINAL, STANS.next(MAC_TERMINAL), "101"))
            assert third["39"] == "00"
            assert (await terminal.request(mac_purchase(MAC_TERMINAL)))["39"] == "A0"
            terminal.keys[MAC_TERMINAL] = second
            assert (await terminal.request(mac_purchase(MAC_TERMINAL)))["39"] == "00"

    run(scenario())


def test_keys_changed_by_another_front_end_are_picked_up(switch, database_url):
    """Another front end's sign-on writes new keys to the shared store: this one reloads them
    when a MAC fails to verify under what it holds."""

    async def scenario():
        async with connected(switch) as terminal:
            await signed_on(terminal, MAC_TERMINAL)
            hsm = SoftwareHsm.from_file(DEMO_DIR / "keys" / "lmk", demo=True)
            pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
            try:
                store = KeyStore(pool)
                tmk = await store.current(terminal_label(KeyKind.TMK, MAC_TERMINAL))
                field62 = ""
                for kind in (KeyKind.PIK, KeyKind.MAK):
                    label = terminal_label(kind, MAC_TERMINAL)
                    record = hsm.generate(label, kind, await store.next_version(label))
                    await store.add(record)
                    field62 += hsm.export_under(record, tmk) + record.check_value
            finally:
                await pool.close()
            elsewhere = TerminalKeys(MAC_TERMINAL, demo_tmk(MAC_TERMINAL))
            elsewhere.take_working_keys(field62)
            terminal.keys[MAC_TERMINAL] = elsewhere
            assert (await terminal.request(mac_purchase(MAC_TERMINAL)))["39"] == "00"
            assert terminal.bad_macs == 0

    run(scenario())


def test_card_pin_reaches_unionpay_translated_to_the_zone_key(switch, simulators, database_url):
    rng = random.Random()

    async def scenario():
        async with connected(switch) as terminal:
            keys = await signed_on(terminal, MAC_TERMINAL)
            before = sim_stats(simulators, "unionpay")
            for pin, expected in (("123456", "00"), ("654321", "05")):
                card = card_number(rng)
                message = purchase(MAC_TERMINAL, MERCHANT, card, 5000, STANS.next(MAC_TERMINAL), entry_mode="021")
                message["52"] = keys.pin_block(pin, card)
                answer = await terminal.request(message)
                assert answer["39"] == expected, answer
                row = await journal_row(database_url, answer["37"])
                assert row is not None and row["channel"] == "unionpay"
                assert card not in str(dict(row)) and message["52"] not in str(dict(row))
            after = sim_stats(simulators, "unionpay")
            assert after.get("pin:ok", 0) == before.get("pin:ok", 0) + 1
            assert after.get("pin:wrong", 0) == before.get("pin:wrong", 0) + 1
            # A PIN block from a terminal that has no PIK cannot be translated: refused, not sent.
            card = card_number(rng)
            plain = purchase("T0000001", MERCHANT, card, 5000, STANS.next("T0000001"), entry_mode="021")
            plain["52"] = keys.pin_block("123456", card)
            assert (await terminal.request(plain))["39"] == "30"
            assert sim_stats(simulators, "unionpay").get("pay", 0) == after.get("pay", 0)

    run(scenario())


def test_terminals_without_a_master_key_sign_on_plainly(switch):
    async def scenario():
        async with connected(switch) as terminal:
            sign_on = await terminal.request(network("T0000001", STANS.next("T0000001"), "001"))
            assert sign_on["39"] == "00" and "62" not in sign_on
            change = await terminal.request(network("T0000001", STANS.next("T0000001"), "101"))
            assert change["39"] == "12"
            answer = await terminal.request(new_purchase("wechat"))
            assert answer["39"] == "00" and "64" not in answer

    run(scenario())


def test_ecny_payment_codes_travel_sm4_encrypted(switch, simulators):
    async def scenario():
        async with connected(switch) as terminal:
            before = sim_stats(simulators, "ecny").get("code:decrypted", 0)
            assert (await terminal.request(new_purchase("ecny")))["39"] == "00"
            declined = await terminal.request(new_purchase("ecny", "51"))  # the channel read the code
            assert declined["39"] == "51"
            assert sim_stats(simulators, "ecny").get("code:decrypted", 0) == before + 2

    run(scenario())
