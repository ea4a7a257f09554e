"""The channel's front-end bulkhead: past its limit a new purchase is answered 91 at once (and
journaled, never sent), while an identical retransmission of one under way still gets the
original's answer."""

from __future__ import annotations

import asyncio
import re

from tests.conftest import SwitchProcess, run
from tests.support import connected, journal_row, new_purchase, out_trade_no, sim_audit


def test_full_bulkhead_sheds_new_purchases_but_not_retransmissions(config_dir, database_url, simulators, tmp_path):
    text = (config_dir / "switch.toml").read_text()
    text, n = re.subn(r"(\[channels\.unionpay\]\n)", r"\1frontend_in_flight = 1\n", text)
    assert n == 1
    config = tmp_path / "switch-bulkhead.toml"
    config.write_text(text)
    switch = SwitchProcess(config, database_url, tmp_path / "bulkhead.log")
    switch.start()

    async def scenario():
        slow = new_purchase("unionpay", "98")  # holds the one place for about 6 s
        async with connected(switch) as first, connected(switch) as second:
            original = asyncio.ensure_future(first.request(slow))
            await asyncio.sleep(0.5)
            shed = await asyncio.wait_for(second.request(new_purchase("unionpay")), 2)
            retransmission = asyncio.ensure_future(second.request(dict(slow)))
            other_channel = await second.request(new_purchase("wechat"))
            first_answer, again = await original, await retransmission
        assert shed["39"] == "91"
        assert (await journal_row(database_url, shed["37"]))["state"] == "DECLINED"
        assert sim_audit(simulators, "unionpay", out_trade_no(shed["37"])) == []  # never sent
        assert other_channel["39"] == "00"  # another channel is not affected
        assert {k: again.get(k) for k in ("37", "39")} == {k: first_answer.get(k) for k in ("37", "39")}
        assert len(sim_audit(simulators, "unionpay", out_trade_no(first_answer["37"]))) == 1

    try:
        run(scenario())
    finally:
        assert switch.stop() == 0
