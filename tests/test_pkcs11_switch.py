"""The whole switch on the PKCS#11 backend: its LMK inside a real SoftHSM2 token, its keys
provisioned into a journal of its own under that LMK, channel actors signing through it (RSA for
Alipay and UnionPay, SM2 for e-CNY), and a terminal signing on, MACing and sending a PIN."""

from __future__ import annotations

import random
import re

import pytest

from bench.traffic import card_number, purchase
from tests.conftest import (
    CHANNELS,
    DEMO,
    Ports,
    SwitchProcess,
    free_port,
    fresh_database,
    localise,
    run,
    simulators_running,
    tolerant_admission,
)
from tests.support import MERCHANT, STANS, connected, new_purchase
from tests.test_terminal_security import MAC_TERMINAL, signed_on


@pytest.fixture(scope="module")
def pkcs11_switch(database_url, softhsm, tmp_path_factory):
    """A journal and simulators of its own, so the session's ledgers stay the session switch's."""
    folder = tmp_path_factory.mktemp("pkcs11")
    library, label, pin = softhsm
    (folder / "token.pin").write_text(pin + "\n")
    (folder / "token.pin").chmod(0o600)
    ports = Ports({n: free_port() for n in CHANNELS}, {n: free_port() for n in CHANNELS})
    text, n = re.subn(
        r"hsm = \{ backend = \"software\", lmk_file = \"[^\"]*\" \}",
        f'hsm = {{ backend = "pkcs11", pkcs11_library = "{library}", token_label = "{label}", '
        f'pin_file = "{folder / "token.pin"}" }}',
        tolerant_admission(localise((DEMO / "switch.toml").read_text(), ports)),
    )
    assert n == 1, "could not switch the test configuration to PKCS#11"
    (folder / "switch-pkcs11.toml").write_text(text)
    (folder / "simulators.toml").write_text(localise((DEMO / "simulators.toml").read_text(), ports))
    url = run(fresh_database(database_url, "paysw_pkcs11"))
    switch = SwitchProcess(folder / "switch-pkcs11.toml", url, folder / "pkcs11.log")
    with simulators_running(folder / "simulators.toml", ports, url):
        switch.start()
        yield switch
        assert switch.stop() == 0


def test_every_channel_and_the_terminal_keys_work_through_the_token(pkcs11_switch):
    rng = random.Random()

    async def scenario():
        async with connected(pkcs11_switch) as terminal:
            for channel in ("wechat", "alipay", "unionpay", "ecny", "inbank"):
                assert (await terminal.request(new_purchase(channel)))["39"] == "00", channel
            keys = await signed_on(terminal, MAC_TERMINAL)
            assert (await terminal.request(new_purchase("alipay", terminal=MAC_TERMINAL)))["39"] == "00"
            card = card_number(rng)
            message = purchase(MAC_TERMINAL, MERCHANT, card, 4200, STANS.next(MAC_TERMINAL), entry_mode="021")
            message["52"] = keys.pin_block("123456", card)
            assert (await terminal.request(message))["39"] == "00"
            assert terminal.bad_macs == 0

    run(scenario())
