"""The demo's console and gray routing: a legacy switch stand-in upstream (``bench.legacy_switch``)
that the demo's kiosk merchant is gray-routed to, the operators' console on its listener with a
DEMO ONLY accounts, and a drill that signs in over HTTP as a browser does, reads a purchase's
timeline and moves the gray share with no restart, each change asked by one admin and approved by
another (``[console] four_eyes``)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import asyncpg
from aiohttp import web

from bench.client import IsoClient
from bench.demo_config import DEMO_DIR
from bench.legacy_switch import LegacySwitch
from bench.traffic import Stans, payment_code, purchase
from switch.app import SwitchApp
from switch.config import Config, host_port
from switch.console import accounts, changes
from switch.console.channels import Channels
from switch.console.edits import Edits
from switch.console.web import Console
from switch.live import LIVE

LEGACY_LISTEN = "127.0.0.1:9591"
KIOSK, KIOSK_TERMINAL = "898310048990002", "K0000001"
SHOP, SHOP_TERMINAL = "898310048990001", "T0000001"
# DEMO ONLY: published accounts of the demo's console, created on the demo's own journal: the
# second approves what the first asks (four eyes).
DEMO_USER, DEMO_PASSWORD = "demo", "demo-console-password"
DEMO_CHECKER, DEMO_CHECKER_PASSWORD = "demo-checker", "demo-checker-password"
# The demo's copy of its configuration gets a legacy switch upstream and a gray route to it.
LEGACY_CONFIG = f"""
# Added by the demo: a legacy switch upstream (bench/legacy_switch.py), over ISO 8583, and a gray
# route sending the kiosk merchant's WeChat Pay purchases to it (the console moves the share).
[channels.legacy]
kind = "legacy"
actor = {{ endpoint = "tcp://{LEGACY_LISTEN}" }}

[channels.legacy.account]
institution = "48020000"

[channels.legacy.account.keys]
sign_algorithm = "hmac-sha256"
sign_key = "legacy:mac-key"
verify_algorithm = "hmac-sha256"
verify_key = "legacy:mac-key"

[[routing.gray]]
channel = "wechat"
to = "legacy"
merchants = ["{KIOSK}"]
percent = 0
"""


@contextlib.asynccontextmanager
async def legacy_switch() -> AsyncIterator[None]:
    """The legacy switch stand-in, in this process, with the demo's shared MAC key (DEMO TEST KEY)."""
    host, port = host_port(LEGACY_LISTEN)
    server = await LegacySwitch((DEMO_DIR / "keys" / "legacy" / "mac_key").read_bytes().strip()).serve(host, port)
    try:
        yield
    finally:
        server.close()


@contextlib.asynccontextmanager
async def console(config: Config, url: str, token: str) -> AsyncIterator[str]:
    """The console on ``[console] listen``, with the DEMO ONLY accounts; its address."""
    pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
    async with pool.acquire() as conn:
        for user, password in ((DEMO_USER, DEMO_PASSWORD), (DEMO_CHECKER, DEMO_CHECKER_PASSWORD)):
            if not await conn.fetchval("SELECT 1 FROM console_user WHERE name = $1", user):
                await accounts.add_user(conn, user, password, "admin")
    channels = Channels([config.switch.admin_listen], token)
    edits = Edits(pool, Path(config.source), config.console)
    app = Console(pool, config.console, channels, edits, secure=False).app()
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, *host_port(config.console.listen)).start()
    try:
        yield f"http://{config.console.listen}"
    finally:
        await runner.cleanup()
        await channels.close()
        await pool.close()


async def forget_live_sections(url: str) -> list[str]:
    """The demo starts from its file: sections an earlier run's console kept in the journal go, and
    changes it left awaiting approval are withdrawn."""
    conn = await asyncpg.connect(url)
    try:
        if not await conn.fetchval("SELECT to_regclass('live_config') IS NOT NULL"):
            return []
        if await conn.fetchval("SELECT to_regclass('config_change') IS NOT NULL"):  # (an older release's journal)
            for section in LIVE:
                await changes.lapse_section(conn, section, "demo", "the demo starts from its file")
        return [r["section"] for r in await conn.fetch("DELETE FROM live_config RETURNING section")]
    finally:
        await conn.close()


async def black_listed(
    maker: aiohttp.ClientSession,
    checker: aiohttp.ClientSession,
    csrf: str,
    checker_csrf: str,
    pay: Callable[[], Awaitable[tuple[str, str, str]]],
) -> tuple[str, str]:
    """The kiosk's terminal put on the black list in the console, then taken off: asked by one
    account, approved by the other. What its purchase is answered on the list, and off it."""

    async def until(changed: Callable[[str], bool]) -> str:
        for _ in range(50):  # every front end hears of a list change by NOTIFY, within a second
            code = (await pay())[0]
            if changed(code):
                break
            await asyncio.sleep(0.1)
        return code

    entry = {"csrf": csrf, "colour": "black", "of": "terminal", "value": KIOSK_TERMINAL}
    added = await maker.post("/risk/lists/add", data=entry | {"reason": "demo: a skimmer found on it"})
    assert "added" in await added.text(), await added.text()
    on = await until(lambda code: code != "00")
    asked = await (await maker.post("/risk/lists/remove", data=entry | {"reason": "demo: terminal swapped"})).text()
    request = re.search(r'name="request" value="(\d+)"', asked)
    assert request is not None, asked
    decision = {"csrf": checker_csrf, "of": "terminal", "value": KIOSK_TERMINAL, "request": request.group(1)}
    approved = await (await checker.post("/risk/removals/approve", data=decision)).text()
    assert "removed" in approved, approved
    return on, await until(lambda code: code == "00")


async def console_drill(host: str, port: int, base: str, app: SwitchApp) -> None:
    stans = Stans()
    client = await IsoClient.connect(host, port)

    async def pay(terminal: str, merchant: str) -> tuple[str, str, str]:
        code = payment_code("wechat", "00", random.Random())
        answer = await client.request(purchase(terminal, merchant, code, 100, stans.next(terminal)))
        assert app.journal is not None
        went = await app.journal.pool.fetchval("SELECT channel FROM txn WHERE rrn = $1", answer["37"])
        return answer["39"], answer["37"], went

    async def sign_in(web_client: aiohttp.ClientSession, user: str, password: str, then: str) -> str:
        page = await (await web_client.get("/sign-in")).text()
        pre = re.search(r'name="pre" value="([^"]+)"', page).group(1)
        form = {"pre": pre, "name": user, "password": password, "next": then}
        return await (await web_client.post("/sign-in", data=form)).text()

    async def approved(maker_said: aiohttp.ClientResponse, checker: aiohttp.ClientSession, csrf: str) -> None:
        """The change just asked, approved by the second admin (four eyes)."""
        assert maker_said.status == 200 and "change asked" in await maker_said.text(), await maker_said.text()
        page = await (await checker.get("/changes")).text()
        request = re.search(r'id="approve-(\d+)"', page).group(1)
        decided = await checker.post(f"/changes/{request}/approve", data={"csrf": csrf})
        assert "approved" in await decided.text(), await decided.text()

    jar = aiohttp.CookieJar(unsafe=True)  # cookies for 127.0.0.1, as a browser keeps them
    try:
        async with (
            aiohttp.ClientSession(base, cookie_jar=jar) as web_client,
            aiohttp.ClientSession(base, cookie_jar=aiohttp.CookieJar(unsafe=True)) as checker,
        ):
            kiosk = await pay(KIOSK_TERMINAL, KIOSK)
            shop = await pay(SHOP_TERMINAL, SHOP)
            print(f"gray routing (WeChat Pay to a legacy switch upstream over ISO 8583, on {LEGACY_LISTEN}):")
            print(f"  kiosk {KIOSK} (named in the gray route): {kiosk[0]}, handled by {kiosk[2]}")
            print(f"  shop {SHOP}: {shop[0]}, handled by {shop[2]}")
            timeline = await sign_in(web_client, DEMO_USER, DEMO_PASSWORD, f"/transactions/{shop[1]}")
            events = timeline.count("<tr><td>")  # the rows of its timeline
            print(f"console on {base} (DEMO ONLY accounts {DEMO_USER} / {DEMO_PASSWORD} and {DEMO_CHECKER} / "
                  f"{DEMO_CHECKER_PASSWORD}):")  # fmt: skip
            print(f"  signed in; the shop's purchase {shop[1]}: {events} events on its timeline")
            changes = await sign_in(checker, DEMO_CHECKER, DEMO_CHECKER_PASSWORD, "/changes")
            checker_csrf = re.search(r'name="csrf" value="([^"]+)"', changes).group(1)
            routing = await (await web_client.get("/routing")).text()
            csrf = re.search(r'name="csrf" value="([^"]+)"', routing).group(1)
            version = re.search(r'name="version" value="(\d+)"', routing).group(1)
            moved = await web_client.post(
                "/routing/gray/wechat", data={"csrf": csrf, "version": version, "percent": "100"}
            )
            await approved(moved, checker, checker_csrf)
            await app.reload()  # what every front end does on the console's broadcast (the demo waits for none)
            everyone = await pay(SHOP_TERMINAL, SHOP)
            print(
                f"  gray share moved to 100 % in the console, asked by {DEMO_USER} and approved by {DEMO_CHECKER} "
                f"(four eyes): the shop's next purchase {everyone[0]}, by {everyone[2]}"
            )
            suspended = []
            for on in (True, False):  # the kiosk's terminal suspended in the console, then active again
                page = await (await web_client.get(f"/terminals/{KIOSK_TERMINAL}")).text()
                version = re.search(r'name="version" value="(\d+)"', page).group(1)
                form = {"csrf": csrf, "version": version, "merchant": KIOSK, "mac_algorithm": "x9.19"}
                form |= {"suspended": "on"} if on else {}
                saved = await web_client.post(f"/terminals/{KIOSK_TERMINAL}", data=form)
                await approved(saved, checker, checker_csrf)
                await app.reload()
                suspended.append((await pay(KIOSK_TERMINAL, KIOSK))[0])
            print(f"  terminal {KIOSK_TERMINAL} suspended in the console: {suspended[0]}; active again: {suspended[1]}")
            listed = await black_listed(web_client, checker, csrf, checker_csrf, lambda: pay(KIOSK_TERMINAL, KIOSK))
            print(f"  terminal {KIOSK_TERMINAL} black-listed in the console: {listed[0]}; taken off, asked by "
                  f"{DEMO_USER} and approved by {DEMO_CHECKER} (four eyes): {listed[1]}")  # fmt: skip
            audit = await (await web_client.get("/audit")).text()
            print(f"  audit log: {audit.count('<tr><td>')} rows (sign-in, routing.gray, ...), none can be changed")
    finally:
        await client.close()
        assert app.journal is not None
        await app.journal.pool.execute("DELETE FROM live_config WHERE section IN ('routing', 'terminals')")
        unlisted = "DELETE FROM risk_list WHERE list_of = 'terminal' AND value = $1"  # should the drill have stopped
        await app.journal.pool.execute(unlisted, KIOSK_TERMINAL)
        await app.reload()
