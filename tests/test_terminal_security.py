"""Spec section 7 end to end over TCP: sign-on hands out working keys under the TMK, MAC'd
requests are approved and their answers MAC'd, a bad MAC is A0 and never reaches a channel, and a
card purchase's PIN reaches UnionPay translated to the zone PIN key. A switch of its own, with the
safe defaults: every terminal needs a master key and MACs its requests, key changes included, and
sign-ons are rate-limited."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import itertools
import os
import random
import re
import subprocess
import sys

import asyncpg
import pytest

from bench.demo_config import DEMO_DIR
from bench.terminal import TerminalKeys
from bench.traffic import card_number, inquiry, network, purchase, refund, reversal
from hsm import HsmSettings, KeyKind, PinBlockError
from hsm import algorithms as clear_keys
from hsm.keys import terminal_label
from hsm.software import SoftwareHsm
from switch.config import SecuritySection
from switch.keystore import KeyStore
from switch.terminal_keys import (
    KEY_REQUEST_FRESH_S,
    RELOAD_AFTER_S,
    PinTriesExceeded,
    TerminalSecurity,
    _Keys,
    mac_matches,
)
from tests.conftest import SwitchProcess, fresh_database, run
from tests.support import MERCHANT, STANS, connected, journal_row, new_purchase, sim_stats

MAC_TERMINAL, ECB_TERMINAL = "M0000001", "M0000002"


def demo_tmk(terminal: str) -> bytes:
    return bytes.fromhex((DEMO_DIR / "keys" / "terminals" / f"{terminal}.tmk").read_text().strip())


async def signed_on(terminal, terminal_id: str, algorithm: str = "x9.19") -> TerminalKeys:
    keys = terminal.keys[terminal_id] = TerminalKeys(terminal_id, demo_tmk(terminal_id), algorithm)
    answer = await terminal.request(network(terminal_id, STANS.next(terminal_id), "001"))  # MAC'd under the TMK
    assert answer["39"] == "00" and len(answer["62"]) == 80
    keys.take_working_keys(answer["62"])  # raises when a check value does not match
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


def test_maced_reversal_and_inquiry_with_fields_past_64(switch, database_url):
    """A 0400 carries field 90 after the MAC (secondary bitmap): the MAC covers it too, so a
    reversal redirected on the way to another purchase is refused ``A0`` and reverses nothing."""

    async def scenario():
        async with connected(switch) as terminal:
            keys = await signed_on(terminal, MAC_TERMINAL)
            original, other = mac_purchase(MAC_TERMINAL), mac_purchase(MAC_TERMINAL)
            approved = await terminal.request(original)
            kept = await terminal.request(other)
            assert approved["39"] == kept["39"] == "00"
            # The terminal's reversal of ``original``, with field 90 rewritten to name ``other``.
            honest = reversal(original, STANS.next(MAC_TERMINAL))
            frame = keys.seal(honest)
            forged = frame[:-42] + reversal(other, honest["11"])["90"].encode()
            await terminal.send_raw(forged)
            refused = await terminal.next_unmatched()
            assert (refused["11"], refused["39"]) == (honest["11"], "A0")
            assert (await journal_row(database_url, kept["37"]))["reversal_requested_at"] is None
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
                assert "64" not in answer  # a request that proved nothing gets no MAC (see below)
            terminal.keys[MAC_TERMINAL] = keys
            assert (await terminal.request(mac_purchase(MAC_TERMINAL)))["39"] == "00"

    run(scenario())


def test_an_answer_to_a_request_that_proved_nothing_carries_no_mac(switch):
    """A stranger's unMAC'd purchase for a terminal is refused ``30`` without field 64. MAC'd under
    the terminal's key, that answer (every byte of it predictable) was a MAC oracle: UnionPay's
    ECB MAC is the encrypted XOR of the message's blocks, so a refund whose blocks XOR to the
    answer's took its field 64 and was approved, keyless (found in review). A MAC'd request's
    answer still carries one, under the key it verified under."""

    async def scenario():
        async with connected(switch) as terminal:
            keys = await signed_on(terminal, ECB_TERMINAL, "unionpay-ecb")
            answered = await terminal.request(mac_purchase(ECB_TERMINAL))  # the client checks its MAC
        async with connected(switch) as stranger:
            refused = await stranger.request(mac_purchase(ECB_TERMINAL))
            invalid = await stranger.request({**mac_purchase(ECB_TERMINAL), "4": "000000000000"})  # refused by rule
        assert answered["39"] == "00" and "64" in answered and terminal.bad_macs == 0 and keys.mak is not None
        assert refused["39"] == "30" and invalid["39"] not in ("00", "09")
        assert "64" not in refused and "64" not in invalid

    run(scenario())


def test_a_strangers_sign_on_issues_no_keys(switch, database_url):
    """Sign-on is MAC'd under the master key's sign-on variant: a stranger, who knows the terminal
    id from a receipt but not its TMK, cannot rotate its keys and lock it out."""

    async def scenario():
        async with connected(switch) as terminal:
            keys = await signed_on(terminal, MAC_TERMINAL)
            rows = await key_rows(database_url, MAC_TERMINAL)
        async with connected(switch) as stranger:
            plain = await stranger.request(network(MAC_TERMINAL, STANS.next(MAC_TERMINAL), "001"))
            stranger.keys[MAC_TERMINAL] = TerminalKeys(MAC_TERMINAL, bytes(range(16)))  # a guessed TMK
            forged = await stranger.request(network(MAC_TERMINAL, STANS.next(MAC_TERMINAL), "001"))
        assert (plain["39"], forged["39"]) == ("30", "A0")
        assert "62" not in plain and "62" not in forged
        assert await key_rows(database_url, MAC_TERMINAL) == rows
        async with connected(switch) as terminal:
            terminal.keys[MAC_TERMINAL] = keys
            assert (await terminal.request(mac_purchase(MAC_TERMINAL)))["39"] == "00"  # not locked out

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
            # Bad MACs reread the keys at most once a second per terminal (an earlier test's A0 may
            # have just done so): this is the first since.
            await asyncio.sleep(RELOAD_AFTER_S)
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


def test_an_unreadable_pin_block_is_answered_as_a_wrong_pin_and_a_terminal_gets_three_an_hour(
    switch, simulators, database_url
):
    """A PIN block bound to another card than field 2's (the Clulow probe: which card numbers
    make a captured block readable tells of its PIN) is answered 05, as the issuer answers a
    wrong PIN, not 30; after three such blocks (one sent twice counts once; one of a purchase
    declined before it is read does not count) the terminal's PIN blocks are not translated for
    the hour, a right one included (58), while a purchase it made before is still told its
    answer. Each refusal is recorded DECLINED and none is sent. The hour outlives the process: the
    switch restarted, the journal tells it. ECB_TERMINAL sends no other PIN block in the tests:
    its hour changes nothing else."""
    rng = random.Random()

    def pin_purchase(keys: TerminalKeys, bound_to: str | None = None, amount_fen: int = 5000) -> dict[str, str]:
        card = card_number(rng)
        message = purchase(ECB_TERMINAL, MERCHANT, card, amount_fen, STANS.next(ECB_TERMINAL), entry_mode="021")
        message["52"] = keys.pin_block("123456", bound_to or card)
        return message

    async def refused(terminal, message: dict[str, str]) -> str:
        answer = await terminal.request(message)
        row = await journal_row(database_url, answer["37"])
        assert row is not None and (row["state"], row["channel_code"]) == ("DECLINED", "PIN"), dict(row or {})
        return answer["39"]

    async def scenario():
        async with connected(switch) as terminal:
            keys = await signed_on(terminal, ECB_TERMINAL, "unionpay-ecb")
            paid = pin_purchase(keys)
            first = await terminal.request(paid)
            assert first["39"] == "00"
            # Declined before its block is read (the demo's rule: over 50,000 yuan, 61), a purchase
            # is answered so whatever the block holds, and its block is not one of the three.
            for _ in range(3):
                over = await terminal.request(pin_purchase(keys, bound_to=card_number(rng), amount_fen=5_000_001))
                assert over["39"] == "61", over
            probe = pin_purchase(keys, bound_to=card_number(rng))
            # Sent again (its answer lost) it is told the same, and is not a second unreadable block.
            probes = [await refused(terminal, probe), await refused(terminal, probe)]
            probes += [await refused(terminal, pin_purchase(keys, bound_to=card_number(rng))) for _ in range(2)]
            assert probes == ["05", "05", "05", "05"]
            assert await refused(terminal, pin_purchase(keys)) == "58"
            # Its answer lost, the paid one sent again is told what it was, not refused for the hour.
            again = await terminal.request(paid)
            assert (again["39"], again["37"]) == ("00", first["37"])
        return keys

    async def after_restart(keys: TerminalKeys):
        async with connected(switch) as terminal:
            terminal.keys[ECB_TERMINAL] = keys  # kept in the key store across the restart
            # A new process has counted none: it lets one through, then reads the journal's three.
            assert await refused(terminal, pin_purchase(keys, bound_to=card_number(rng))) == "05"
            assert await refused(terminal, pin_purchase(keys)) == "58"

    before = sim_stats(simulators, "unionpay").get("pay", 0)
    keys = run(scenario())
    assert switch.stop() == 0
    switch.start()
    run(after_restart(keys))
    assert sim_stats(simulators, "unionpay").get("pay", 0) == before + 1


def test_a_pin_purchase_in_flight_at_a_key_change_reads_under_the_pik_before(switch, simulators):
    """Built before a key change (MAC and PIN block under the keys before) and read after it: the
    MAK before is accepted for a request deadline, and so is the PIK before, so the purchase is
    paid, not refused 05 and counted against the terminal."""
    rng = random.Random()

    async def scenario():
        async with connected(switch) as terminal:
            keys = await signed_on(terminal, MAC_TERMINAL)
            built_before = copy.copy(keys)
            change = await terminal.request(network(MAC_TERMINAL, STANS.next(MAC_TERMINAL), "101"))
            assert change["39"] == "00"
            keys.take_working_keys(change["62"])
            assert keys.pik != built_before.pik
            before = sim_stats(simulators, "unionpay").get("pin:ok", 0)
            card = card_number(rng)
            message = purchase(MAC_TERMINAL, MERCHANT, card, 5000, STANS.next(MAC_TERMINAL), entry_mode="021")
            message["52"] = built_before.pin_block("123456", card)
            terminal.keys[MAC_TERMINAL] = built_before  # MAC'd as it was built
            assert (await terminal.request(message))["39"] == "00"
            assert sim_stats(simulators, "unionpay").get("pin:ok", 0) == before + 1

    run(scenario())


def test_a_terminals_allowance_of_unreadable_pin_blocks_is_a_rolling_hour():
    """``translate_pin`` alone, on a software HSM and the test's clock: the fourth unreadable
    block within the hour is refused untried, whatever it holds; an hour after the first, one
    more is tried; another terminal is never held up; the journal's (other front ends') count
    with this process's, a request once."""
    hsm = SoftwareHsm(os.urandom(32))
    tmk_clear = clear_keys.random_des_key()
    tmk = hsm.import_key("tmk:T0000009", KeyKind.TMK, tmk_clear)
    now = [1000.0]
    policy = SecuritySection(hsm=HsmSettings(), pin_failures_per_hour=3)
    zpk = hsm.import_key("zpk:unionpay", KeyKind.ZPK, clear_keys.random_des_key())
    security = TerminalSecurity(hsm, None, {}, {"unionpay": zpk}, 60.0, policy, clock=lambda: now[0])  # type: ignore[arg-type]
    piks = {}
    for terminal_id in ("T0000009", "T0000010"):
        pik = hsm.generate(f"pik:{terminal_id}", KeyKind.PIK)
        piks[terminal_id] = clear_keys.tdes_ecb_decrypt(tmk_clear, bytes.fromhex(hsm.export_under(pik, tmk)))
        security.set_terminals({}, {terminal_id: _Keys(pik=pik)})
    pan, other = "6222021234567890123", "6222029999567890123"
    stans = itertools.count(1)

    def translate(terminal_id: str, bound_to: str, stan: int | None = None) -> str:
        block = clear_keys.tdes_ecb_encrypt(piks[terminal_id], clear_keys.pin_block("123456", bound_to)).hex()
        request = (f"{stan or next(stans):06d}", "1207101010")
        return security.translate_pin(terminal_id, block, pan, "unionpay", request, None)

    assert translate("T0000009", pan)
    assert not security.pin_failures_counted("T0000009")
    for minute in range(3):
        now[0] = 1000.0 + 60 * minute
        with pytest.raises(PinBlockError):
            translate("T0000009", other)
    assert security.pin_failures_counted("T0000009") and security.pin_locked("T0000009")
    now[0] = 1000.0 + 3599
    with pytest.raises(PinTriesExceeded):
        translate("T0000009", pan)
    assert translate("T0000010", pan)  # its own allowance
    now[0] = 1000.0 + 3600  # the first is an hour old: one more is tried
    assert translate("T0000009", pan)
    with pytest.raises(PinBlockError):
        translate("T0000009", other)
    with pytest.raises(PinTriesExceeded):  # the second is not an hour old yet
        translate("T0000009", pan)
    # T0000010's first here (STAN 900001), and the journal's: two other front ends' within the hour,
    # and this one's, recorded since (at its arrival, a little earlier), which counts once.
    now[0] = 9000.0
    with pytest.raises(PinBlockError):
        translate("T0000010", other, stan=900001)
    security.recall_pin_failures("T0000010", {("000007", "1207101010"): 8000.0, ("900001", "1207101010"): 8999.5})
    assert translate("T0000010", pan)  # two so far
    security.recall_pin_failures("T0000010", {("000008", "1207101010"): 8500.0})
    with pytest.raises(PinTriesExceeded):
        translate("T0000010", pan)
    now[0] = 8000.0 + 3600  # the oldest recorded is an hour old
    assert translate("T0000010", pan)
    # Pipelined probes: the journal read after one returns before any is recorded; none is lost.
    now[0] = 20000.0
    for _ in range(2):
        with pytest.raises(PinBlockError):
            translate("T0000010", other)
    security.recall_pin_failures("T0000010", {})
    with pytest.raises(PinBlockError):
        translate("T0000010", other)
    with pytest.raises(PinTriesExceeded):
        translate("T0000010", pan)


def test_the_pik_before_a_key_change_reads_only_a_request_maced_under_the_mak_before():
    """The MAC check holds the grace (the MAK before is accepted for a request deadline): the
    PIN block of a request MAC'd under it is read under the PIK made with it, and counts nothing;
    under the new MAK, or with no MAC, only the new PIK is tried."""
    hsm = SoftwareHsm(os.urandom(32))
    tmk_clear = clear_keys.random_des_key()
    tmk = hsm.import_key("tmk:T0000011", KeyKind.TMK, tmk_clear)
    zpk = hsm.import_key("zpk:unionpay", KeyKind.ZPK, clear_keys.random_des_key())
    policy = SecuritySection(hsm=HsmSettings(), pin_failures_per_hour=3)
    security = TerminalSecurity(hsm, None, {}, {"unionpay": zpk}, 30.0, policy, clock=lambda: 1000.0)  # type: ignore[arg-type]
    old, new = hsm.generate("pik:T0000011", KeyKind.PIK), hsm.generate("pik:T0000011", KeyKind.PIK)
    mak_old, mak_new = hsm.generate("mak:T0000011", KeyKind.MAK), hsm.generate("mak:T0000011", KeyKind.MAK)
    maks = [(mak_new, float("inf")), (mak_old, 1030.0)]
    security.set_terminals({}, {"T0000011": _Keys(pik=new, previous_pik=old, maks=maks)})
    old_clear = clear_keys.tdes_ecb_decrypt(tmk_clear, bytes.fromhex(hsm.export_under(old, tmk)))
    pan = "6222021234567890123"
    block = clear_keys.tdes_ecb_encrypt(old_clear, clear_keys.pin_block("123456", pan)).hex()
    assert security.translate_pin("T0000011", block, pan, "unionpay", ("000001", "1207101010"), mak_old)
    assert not security.pin_failures_counted("T0000011")
    for n, mak in ((2, mak_new), (3, None)):
        with pytest.raises(PinBlockError):
            security.translate_pin("T0000011", block, pan, "unionpay", (f"{n:06d}", "1207101010"), mak)


def test_terminals_without_a_master_key_sign_on_plainly(switch):
    """Allowed by the test configuration (as by the demo's), with a warning at start."""
    assert "6 of 8 terminals have no master key and run without MAC" in switch.log_path.read_text()

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


async def key_rows(database_url: str, terminal_id: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval(
            "SELECT count(*) FROM hsm_key WHERE label = ANY($1)",
            [terminal_label(KeyKind.PIK, terminal_id), terminal_label(KeyKind.MAK, terminal_id)],
        )
    finally:
        await conn.close()


async def mak_version(database_url: str, terminal_id: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval(
            "SELECT max(version) FROM hsm_key WHERE label = $1", terminal_label(KeyKind.MAK, terminal_id)
        )
    finally:
        await conn.close()


def test_a_sign_on_or_key_change_sent_again_gives_no_keys(switch, database_url):
    """A sign-on is MAC'd under a key that never changes, a key change under the MAK until the
    next: captured on the line and sent again byte for byte, either one rotated the terminal's
    keys and locked it out, every sign-on interval (found in review). Now one sent again, or with
    a field 7 further from now than ``KEY_REQUEST_FRESH_S``, is refused ``94`` with no keys, and
    the terminal's own next one gets keys as before."""

    async def sent(client, frame: bytes) -> dict:
        await client.send_raw(frame)
        return await client.next_unmatched()

    async def scenario():
        async with connected(switch) as terminal:
            keys = TerminalKeys(MAC_TERMINAL, demo_tmk(MAC_TERMINAL))
            sign_on = keys.seal(network(MAC_TERMINAL, STANS.next(MAC_TERMINAL), "001"))
            first = await sent(terminal, sign_on)
            keys.take_working_keys(first["62"])
            version = await mak_version(database_url, MAC_TERMINAL)
            ahead = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=KEY_REQUEST_FRESH_S + 60)
            far = keys.seal(network(MAC_TERMINAL, STANS.next(MAC_TERMINAL), "001", when=ahead))
            refused = [await sent(terminal, sign_on), await sent(terminal, far)]
            assert await mak_version(database_url, MAC_TERMINAL) == version
            change = keys.seal(network(MAC_TERMINAL, STANS.next(MAC_TERMINAL), "101"))
            changed = await sent(terminal, change)
            keys.take_working_keys(changed["62"])
            refused.append(await sent(terminal, change))  # its MAK is still accepted, for messages in flight
            assert await mak_version(database_url, MAC_TERMINAL) == version + 1
            terminal.keys[MAC_TERMINAL] = keys
            paid = await terminal.request(mac_purchase(MAC_TERMINAL))
        assert first["39"] == changed["39"] == "00"
        assert [(a["39"], "62" in a) for a in refused] == [("94", False)] * 3
        assert paid["39"] == "00" and terminal.bad_macs == 0

    run(scenario())


def test_twenty_sign_ons_keep_two_versions_of_each_working_key(switch, database_url):
    async def scenario():
        async with connected(switch) as terminal:
            for _ in range(20):
                await signed_on(terminal, ECB_TERMINAL, "unionpay-ecb")
            assert await key_rows(database_url, ECB_TERMINAL) == 4  # PIK and MAK, current and previous
            assert (await terminal.request(mac_purchase(ECB_TERMINAL)))["39"] == "00"

    run(scenario())


def test_mac_failures_are_warned_of_once_per_terminal_and_interval(switch):
    def warnings() -> int:
        lines = switch.log_path.read_text().splitlines()
        return sum('"MAC verification failed"' in line and '"M0000002"' in line for line in lines)

    async def scenario():
        async with connected(switch) as terminal:
            keys = await signed_on(terminal, ECB_TERMINAL, "unionpay-ecb")
            before = warnings()
            keys.mak = bytes(16)
            for _ in range(10):
                assert (await terminal.request(mac_purchase(ECB_TERMINAL)))["39"] == "A0"
            assert warnings() - before == 1

    run(scenario())


def test_mac_matches_compares_the_whole_mac_in_either_case():
    mac = bytes.fromhex("0123456789ABCDEF")
    assert mac_matches(mac, "0123456789abcdef") and mac_matches(mac, "0123456789ABCDEF")
    assert not mac_matches(mac, "0123456789ABCDEE")
    assert not mac_matches(mac, "0123456789ABCD")
    assert not mac_matches(mac, "not hex at all!!")


# -- the safe defaults: no terminal without a master key, sign-ons rate-limited ---------------------


def strict_config(config_dir, folder, keep_plain_terminals: bool):
    """The test configuration without the demo's relaxations (and, unless asked, without the
    terminals that have no master key)."""
    text = (config_dir / "switch.toml").read_text()
    text, n = re.subn(r"(?m)^(allow_terminals_without_mac|sign_on_interval_s) = .*\n", "", text)
    assert n == 2
    if not keep_plain_terminals:
        text, n = re.subn(r'\[\[terminals\]\]\nid = "[TKS]\d{7}"\n[^\[]*', "", text)
        assert n == 6
    config = folder / "switch-strict.toml"
    config.write_text(text)
    return config


def test_terminals_without_a_master_key_stop_the_switch_at_start(config_dir, database_url, tmp_path):
    config = strict_config(config_dir, tmp_path, keep_plain_terminals=True)
    result = subprocess.run(
        [sys.executable, "-m", "switch.cli", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "SWITCH_DATABASE_URL": database_url},
    )
    assert result.returncode == 2, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("paysw: configuration error: $.terminals: 6 terminals have no master key"), error
    assert "T0000001" in error and "S0000001" in error and "M0000001" not in error
    assert "allow_terminals_without_mac" in error


@pytest.fixture(scope="module")
def strict_switch(config_dir, database_url, simulators, tmp_path_factory):
    """A switch of its own, on a database of its own (the session switch signs the same
    terminals on), with the default sign-on limit."""
    folder = tmp_path_factory.mktemp("strict")
    url = run(fresh_database(database_url, "paysw_strict"))
    switch = SwitchProcess(strict_config(config_dir, folder, keep_plain_terminals=False), url, folder / "strict.log")
    switch.start()
    yield switch, url
    assert switch.stop() == 0


def test_financial_messages_without_a_mac_are_refused(strict_switch):
    """A refund needs only an RRN: without a MAC it is refused before the journal is asked. (A
    terminal that has a master key but has not signed on yet has no MAK to MAC with.)"""
    switch, url = strict_switch

    async def scenario():
        assert await key_rows(url, MAC_TERMINAL) == 0  # (the first test on this switch)
        async with connected(switch) as terminal:
            original = purchase(MAC_TERMINAL, MERCHANT, card_number(), 1000, STANS.next(MAC_TERMINAL))
            plain = refund(original, "000000000001", 500, STANS.next(MAC_TERMINAL))
            assert (await terminal.request(plain))["39"] == "30"
            assert (await terminal.request(mac_purchase(MAC_TERMINAL)))["39"] == "30"

    run(scenario())


async def last_key_request(database_url: str, terminal_id: str) -> str | None:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval("SELECT stan FROM terminal_key_request WHERE terminal_id = $1", terminal_id)
    finally:
        await conn.close()


def test_sign_on_is_rate_limited_but_a_maced_key_change_is_not(strict_switch):
    """A sign-on refused 65 is noted as the terminal's last key request all the same: else,
    captured, it could be sent again once the interval passed and come after the last one
    noted, and give keys (found in review)."""
    switch, url = strict_switch

    async def scenario():
        async with connected(switch) as terminal:
            keys = await signed_on(terminal, MAC_TERMINAL)
            again = await terminal.request(network(MAC_TERMINAL, STANS.next(MAC_TERMINAL), "001"))
            assert again["39"] == "65" and "62" not in again
            assert await last_key_request(url, MAC_TERMINAL) == again["11"]
            assert await key_rows(url, MAC_TERMINAL) == 2
            change = await terminal.request(network(MAC_TERMINAL, STANS.next(MAC_TERMINAL), "101"))
            assert change["39"] == "00"
            keys.take_working_keys(change["62"])
            assert await key_rows(url, MAC_TERMINAL) == 4

    run(scenario())


def test_a_key_change_needs_the_current_mak_and_changes_nothing_without(strict_switch):
    switch, url = strict_switch

    async def scenario():
        async with connected(switch) as terminal:
            keys = terminal.keys[ECB_TERMINAL] = TerminalKeys(ECB_TERMINAL, demo_tmk(ECB_TERMINAL), "unionpay-ecb")
            first = await terminal.request(network(ECB_TERMINAL, STANS.next(ECB_TERMINAL), "001"))
            keys.take_working_keys(first["62"])
            rows = await key_rows(url, ECB_TERMINAL)
            real_mak = keys.mak
            keys.mak = bytes(16)  # a stranger's guess
            forged = await terminal.request(network(ECB_TERMINAL, STANS.next(ECB_TERMINAL), "101"))
            keys.mak = None  # sends no field 64
            unmaced = await terminal.request(network(ECB_TERMINAL, STANS.next(ECB_TERMINAL), "101"))
            assert (forged["39"], unmaced["39"]) == ("A0", "30")
            assert "62" not in forged and "62" not in unmaced
            assert await key_rows(url, ECB_TERMINAL) == rows
            keys.mak = real_mak  # the terminal's keys still work
            asked = await terminal.request(inquiry(ECB_TERMINAL, MERCHANT, "000000000001", STANS.next(ECB_TERMINAL)))
            assert asked["39"] == "25"

    run(scenario())
