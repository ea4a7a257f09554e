"""Statements fetched the way the switch fetches them: each channel's download call, signed and
verified with the switch's keys, against the real simulators; the file is the channel's own
format and holds what its ledger holds, plus whatever discrepancies a test orders."""

from __future__ import annotations

import datetime as dt
import json
import urllib.request

import pytest

from actors.channel_actor import ChannelWorker
from bench.traffic import CODE_SHAPES
from protocols.channels import channel_of
from protocols.channels.base import StatementRefused
from protocols.statements import CST, PAY, REVOKED
from switch.config import load_config
from tests.conftest import demo_actor_setup, run
from tests.support import connected, new_purchase, out_trade_no

# Each pays, then reads the channel's statement of the day it read off the clock.
pytestmark = pytest.mark.usefixtures("one_hour")


def statement_faults(ports: dict[str, int], channel: str, faults: dict) -> None:
    control = ports[channel]
    request = urllib.request.Request(
        f"http://127.0.0.1:{control}/_sim/statement-faults", json.dumps(faults).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def worker(config_dir, channel: str) -> ChannelWorker:
    return ChannelWorker(channel, demo_actor_setup(channel, load_config(config_dir / "switch.toml")), 0)


async def fetch(config_dir, channel: str, day: dt.date):
    w = worker(config_dir, channel)
    try:
        return channel_of(channel).statement.read(await w.statement(day))
    finally:
        await w.close()


@pytest.mark.parametrize("channel", CODE_SHAPES)
def test_each_channels_statement_holds_what_it_charged(channel, switch, config_dir, ports):
    async def scenario():
        async with connected(switch) as terminal:
            paid = await terminal.request(new_purchase(channel, amount=4321))
            reversed_ = await terminal.request(new_purchase(channel, "96", amount=999))  # charged, then reversed
        assert paid["39"] == "00" and reversed_["39"] == "91"
        order = out_trade_no(paid["37"])
        today = dt.datetime.now(CST).date()
        statement_faults(
            ports.controls, channel, {"drop": [], "extra": {"EXTRA-" + channel: 100}, "amounts": {order: 4322}}
        )
        try:
            rows = {r.out_trade_no: r for r in await fetch(config_dir, channel, today) if r.entry == PAY}
        finally:
            statement_faults(ports.controls, channel, {})
        assert rows[order].amount_fen == 4322  # the ordered discrepancy, in the channel's own format
        assert rows["EXTRA-" + channel].amount_fen == 100
        clean = {r.out_trade_no: r for r in await fetch(config_dir, channel, today) if r.entry == PAY}
        assert clean[order].amount_fen == 4321 and clean[order].status == "SUCCESS" and clean[order].fee_fen >= 0
        assert "EXTRA-" + channel not in clean
        return out_trade_no(reversed_["37"]), clean

    reversed_order, rows = run(scenario())
    # The resolver reverses the charged-but-errored payment within seconds; then it is REVOKED.
    import time

    for _ in range(40):
        if reversed_order in rows and rows[reversed_order].status == REVOKED:
            break
        time.sleep(0.5)
        rows = {
            r.out_trade_no: r for r in run(fetch(config_dir, channel, dt.datetime.now(CST).date())) if r.entry == PAY
        }
    assert rows[reversed_order].status == REVOKED


def test_a_statement_signed_with_the_wrong_key_is_refused(config_dir, simulators):
    import msgspec

    setup = demo_actor_setup("inbank", load_config(config_dir / "switch.toml"))
    wrong = msgspec.structs.replace(setup.keys, sign=demo_actor_setup("wechat").keys.sign)
    w = ChannelWorker("inbank", msgspec.structs.replace(setup, keys=wrong), 0)

    async def scenario():
        try:
            with pytest.raises(StatementRefused):
                await w.statement(dt.datetime.now(CST).date())
        finally:
            await w.close()

    run(scenario())
