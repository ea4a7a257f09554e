"""What a reload applies live and what only a restart does (``switch.live.restart_needed``)."""

import msgspec

from bench.demo_config import DEMO_SWITCH_CONFIG
from switch.config import load_config
from switch.live import restart_needed

RUNNING = load_config(DEMO_SWITCH_CONFIG)


def test_merchants_terminals_and_routing_apply_live_and_the_rest_needs_a_restart():
    merchants = [msgspec.structs.replace(m, suspended=True, rate_per_s={"wechat": 1.0}) for m in RUNNING.merchants]
    live = msgspec.structs.replace(RUNNING, merchants=merchants, terminals=RUNNING.terminals[:1])
    assert restart_needed(RUNNING, live) == []
    later = msgspec.structs.replace(
        live, switch=msgspec.structs.replace(RUNNING.switch, listen="127.0.0.1:1"), source="/elsewhere.toml"
    )
    assert restart_needed(RUNNING, later) == ["$.switch"]


def test_a_merchants_api_key_needs_a_restart_whether_changed_given_or_taken_away():
    keyed = RUNNING.merchants[0]
    assert keyed.api_key
    changed = [msgspec.structs.replace(keyed, api_key="merchant:other"), *RUNNING.merchants[1:]]
    given = [*RUNNING.merchants[:1], msgspec.structs.replace(RUNNING.merchants[1], api_key="merchant:new")]
    taken = [msgspec.structs.replace(keyed, api_key=""), *RUNNING.merchants[1:]]
    for merchants, who in ((changed, keyed.id), (given, RUNNING.merchants[1].id), (taken, keyed.id)):
        read = msgspec.structs.replace(RUNNING, merchants=merchants)
        assert restart_needed(RUNNING, read) == [f"$.merchants[{who}].api_key"]


def test_routes_and_merchants_may_name_only_channels_running():
    import pytest

    from switch.app import _channels_running
    from switch.config import ConfigError

    _channels_running(RUNNING, set(RUNNING.channels))
    with pytest.raises(ConfigError, match=r"needs a restart.*: inbank"):
        _channels_running(RUNNING, set(RUNNING.channels) - {"inbank"})
