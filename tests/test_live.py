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


def test_the_journals_sections_replace_the_files_and_are_checked_whole():
    import pytest

    from switch.config import ConfigError
    from switch.live import overlaid

    assert overlaid(RUNNING, {}) is RUNNING
    merchants = msgspec.to_builtins(RUNNING.merchants)
    merchants[1]["rate_per_s"] = {"wechat": 2.5}
    read = overlaid(RUNNING, {"merchants": merchants})
    assert read.merchants[1].rate_per_s == {"wechat": 2.5}
    assert read.channels == RUNNING.channels and read.source == RUNNING.source  # the rest is the file's
    merchants[1]["rate_per_s"] = {"wechat": 0}
    with pytest.raises(ConfigError, match=r"journal's live configuration .*\$\.merchants\[1\]\.rate_per_s"):
        overlaid(RUNNING, {"merchants": merchants})
    merchants[1]["rate_per_s"], merchants[1]["channels"] = {}, ["paypal"]  # checked across sections too
    with pytest.raises(ConfigError, match=r"\$\.merchants\[1\]: unknown channel 'paypal'"):
        overlaid(RUNNING, {"merchants": merchants})


def test_an_edit_is_kept_only_over_the_version_it_was_made_on(database_url):
    import asyncio

    import asyncpg
    import pytest

    from switch.journal.schema import migrate
    from switch.live import EditConflict, keep_section, kept_sections, versions
    from tests.conftest import run

    async def go() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await migrate(conn)
            await conn.execute("DELETE FROM live_config WHERE section = 'routing'")
            await conn.execute("LISTEN paysw_reload")
            told: list[str] = []
            await conn.add_listener("paysw_reload", lambda *args: told.append(args[3]))
            body = msgspec.to_builtins(RUNNING.routing)
            async with conn.transaction():
                first = await keep_section(conn, "routing", body, 0, "console:ada")
            with pytest.raises(EditConflict):  # made on what was there before ada's
                async with conn.transaction():
                    await keep_section(conn, "routing", body, 0, "console:bob")
            async with conn.transaction():
                second = await keep_section(conn, "routing", body, first, "console:bob")
            assert second > first and (await versions(conn))["routing"] == second
            assert (await kept_sections(conn))["routing"] == body
            # Forgotten (the file's in force again) and kept anew: an edit made on the version
            # before is refused, whatever number the new one carries (never one used before).
            await conn.execute("DELETE FROM live_config WHERE section = 'routing'")
            with pytest.raises(EditConflict):
                async with conn.transaction():
                    await keep_section(conn, "routing", body, second, "console:carl")
            async with conn.transaction():
                third = await keep_section(conn, "routing", body, 0, "console:dora")
            assert third not in (first, second)
            await conn.execute("DELETE FROM live_config WHERE section = 'routing'")
            await asyncio.sleep(0.2)  # the notifications, read by this loop
            assert told == ["console:ada", "console:bob", "console:dora"]  # a refused edit tells nobody
        finally:
            await conn.close()

    run(go())


def test_a_channels_limits_apply_live_and_the_rest_of_it_needs_a_restart():
    wechat = RUNNING.channels["wechat"]
    limited = msgspec.structs.replace(
        wechat, rate_per_s=7.0, breaker=msgspec.structs.replace(wechat.breaker, open_ms=900), frontend_in_flight=3
    )
    read = msgspec.structs.replace(RUNNING, channels=RUNNING.channels | {"wechat": limited})
    assert restart_needed(RUNNING, read) == []
    moved = msgspec.structs.replace(limited, shards=wechat.shards + 1)
    read = msgspec.structs.replace(RUNNING, channels=RUNNING.channels | {"wechat": moved})
    assert restart_needed(RUNNING, read) == ["$.channels.wechat"]


def test_the_journals_limits_go_over_the_files_channel_and_only_the_limits():
    import pytest

    from switch.config import ConfigError
    from switch.live import file_section, overlaid

    limits = file_section(RUNNING, "limits", {})
    assert set(limits) == set(RUNNING.channels)
    limits["alipay"] = limits["alipay"] | {"merchant_rate_per_s": 4.5}
    limits["alipay"]["breaker"]["min_calls"] = 3
    read = overlaid(RUNNING, {"limits": limits})
    assert read.channels["alipay"].merchant_rate_per_s == 4.5 and read.channels["alipay"].breaker.min_calls == 3
    assert read.channels["alipay"].account == RUNNING.channels["alipay"].account
    with pytest.raises(ConfigError, match=r"\$\.limits\.alipay: only frontend_in_flight, .* apply live"):
        overlaid(RUNNING, {"limits": {"alipay": {"shards": 4}}})
    with pytest.raises(ConfigError, match=r"\$\.limits\.paypal: no such channel"):
        overlaid(RUNNING, {"limits": {"paypal": {}}})
    with pytest.raises(ConfigError, match=r"\$\.limits\.alipay: Expected .* at `\$\.breaker\.failure_rate`"):
        overlaid(RUNNING, {"limits": {"alipay": {"breaker": {"failure_rate": 2}}}})


def test_the_rules_in_force_are_the_journals_once_kept_and_checked_against_the_configuration():
    import pytest

    from switch.config import ConfigError
    from switch.live import file_section, in_force

    _, from_file = in_force(RUNNING, {})
    rules = file_section(RUNNING, "rules", {})
    assert from_file is not None and [r["id"] for r in rules["rule"]] == [r.id for r in from_file.rules]
    rules["rule"] = rules["rule"][:1]
    _, kept = in_force(RUNNING, {"rules": rules})
    assert kept is not None and [r.id for r in kept.rules] == [from_file.rules[0].id]
    rules["rule"][0]["scope"] = {"merchant": "111111111111111"}  # a merchant the configuration has not
    with pytest.raises(ConfigError, match=r"journal's live configuration \(rules.*\$\.rule\[0\]\.scope\.merchant"):
        in_force(RUNNING, {"rules": rules})
    no_rules = msgspec.structs.replace(RUNNING, risk=msgspec.structs.replace(RUNNING.risk, rules=""))
    with pytest.raises(ConfigError, match="names no rules file"):
        in_force(no_rules, {"rules": rules})


def test_the_rules_file_is_checked_even_while_the_journals_rules_are_in_force(tmp_path):
    import pytest

    from switch.config import ConfigError
    from switch.live import file_section, in_force

    kept = {"rules": file_section(RUNNING, "rules", {})}
    broken = tmp_path / "rules.toml"
    broken.write_text('[[rule]]\nid = "x"\nkind = "amount"\nmax_fen = 1\nscope = { merchant = "111111111111111" }\n')
    elsewhere = msgspec.structs.replace(RUNNING, risk=msgspec.structs.replace(RUNNING.risk, rules=str(broken)))
    with pytest.raises(ConfigError, match=r"rules\.toml: \$\.rule\[0\]\.scope\.merchant"):
        in_force(elsewhere, kept)  # what `paysw config forget` would put back, and a restart reads first
