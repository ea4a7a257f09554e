"""The operators' console (``switch.console``) against a real switch, a real console process, the
real journal and a real browser (Debian's chromium, driven by Selenium through chromedriver):
sign-in and sessions, CSRF, roles, the limit on failed sign-ins, the audit log; and an operator's
day: a transaction found and its timeline read, a channel disabled and enabled, a reconciliation
difference resolved, a merchant's rate quota changed with no restart."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import random
import re
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote

import asyncpg
import pytest
import requests

from bench.demo_config import DEMO_DIR
from switch.console import accounts
from switch.console.changes import AWAITING as CHANGE_AWAITING
from switch.console.reads import AWAITING
from switch.routing import share_of
from tests.conftest import free_port, run, switch_with, wait_for_port
from tests.debian import debian_binary
from tests.required import required_module
from tests.support import connected, new_purchase

KIOSK, KIOSK_TERMINAL = "898310048990002", "K0000001"
PASSWORDS = {"ada": "admin-password-1", "alan": "admin-password-2", "otto": "operator-password-1",
             "vera": "viewer-password-1"}  # fmt: skip
ROLES = {"ada": "admin", "alan": "admin", "otto": "operator", "vera": "viewer"}
PAGES = ["/", "/transactions", "/transactions/000000000001", "/channels", "/channels/wechat/disable", "/recon",
         "/dead-letters", "/dead-letters/000000000001/retry", "/settlement", "/settlement/settlement-2026-01-01.csv",
         "/merchants", f"/merchants/{KIOSK}", "/terminals", "/terminals/new", "/limits/wechat", "/risk",
         "/changes", "/audit"]  # fmt: skip
ACTIONS = [
    "/sign-out",
    "/channels/wechat/disable",
    "/recon/1/resolve",
    "/recon/1/approve",
    "/dead-letters/000000000001/resolve",
    "/dead-letters/000000000001/retry",
    "/dead-letters/000000000001/approve",
    "/notifications/1/resend",
    f"/merchants/{KIOSK}",
    "/terminals/new",
    "/limits/wechat",
    "/risk/rules",
    "/risk/lists/remove",
    "/risk/removals/approve",
    "/risk/removals/reject",
    "/changes/1/approve",
]


PROXY = "127.0.0.2"  # the console's TLS gateway, say: its X-Forwarded-For is believed


class ConsoleProcess:
    def __init__(self, switch, folder: Path, name: str = "console", settings: str = "") -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.config = folder / f"{name}.toml"
        console = f'\n[console]\nlisten = "127.0.0.1:{self.port}"\ntrusted_proxies = ["{PROXY}"]\n{settings}'
        text = switch.config.read_text() + console
        self.config.write_text(text)
        self.switch = switch
        self.log = (folder / f"{name}.log").open("w")
        self.process: subprocess.Popen | None = None

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "switch.cli", "console", *args, "--config", str(self.config),
                "--data-dir", str(self.switch.data_dir)]  # fmt: skip

    def start(self) -> None:
        self.process = subprocess.Popen(self.command("serve"), env=self.switch.env, stdout=self.log, stderr=self.log)
        wait_for_port(self.port, 30, self.process)

    def stop(self) -> None:
        assert self.process is not None
        self.process.terminate()
        assert self.process.wait(15) == 0


# Gray routing: 40 merchants of their own, UnionPay's purchases of a share of them (and of the demo
# merchants, none of whom pays on UnionPay here) sent to a legacy switch stand-in.
GRAY_MERCHANTS = [(f"8983100477{n:05d}", f"G{n:07d}") for n in range(1, 41)]


def gray_edits(legacy_port: int) -> list[tuple[str, str]]:
    merchants = "".join(
        f'\n[[merchants]]\nid = "{m}"\nname = "Gray {m}"\nchannels = ["unionpay"]\n'
        f'\n[[terminals]]\nid = "{t}"\nmerchant = "{m}"\n'
        for m, t in GRAY_MERCHANTS
    )
    legacy = (
        f'\n[channels.legacy]\nkind = "legacy"\nactor = {{ endpoint = "tcp://127.0.0.1:{legacy_port}" }}\n'
        'account = { institution = "48020000", keys = { sign_algorithm = "hmac-sha256", sign_key = "legacy:mac-key", '
        'verify_algorithm = "hmac-sha256", verify_key = "legacy:mac-key" } }\n'
        '\n[[routing.gray]]\nchannel = "unionpay"\nto = "legacy"\npercent = 10\n'
    )
    return [(r"\Z", merchants + legacy)]


@pytest.fixture(scope="module")
def console(config_dir, database_url, simulators, tmp_path_factory):
    folder = tmp_path_factory.mktemp("console")
    legacy_port = free_port()
    stand_in = subprocess.Popen(
        [sys.executable, "-m", "bench.legacy_switch", "--listen", f"127.0.0.1:{legacy_port}",
         "--key", str(DEMO_DIR / "keys" / "legacy" / "mac_key"), "--ledger", str(folder / "legacy-ledger.jsonl")],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(legacy_port, 30, stand_in)
        for switch in switch_with(config_dir, database_url, folder, "console", gray_edits(legacy_port)):
            running = ConsoleProcess(switch, folder)
            added = subprocess.run(  # the first admin, as an operator makes one
                running.command("add-user", "ada", "--role", "admin", "--password-stdin"),
                input=PASSWORDS["ada"] + "\n", env=switch.env, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert added.returncode == 0 or "exists already" in added.stderr, added.stderr
            run(_accounts(database_url, {name: PASSWORDS[name] for name in ("alan", "otto", "vera")}))
            running.start()
            try:
                yield running
            finally:
                running.stop()
                run(_forget_live_configuration(database_url))
    finally:
        stand_in.terminate()
        stand_in.wait(10)


async def _accounts(database_url: str, passwords: dict[str, str]) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        for name, password in passwords.items():
            if not await conn.fetchval("SELECT 1 FROM console_user WHERE name = $1", name):
                await accounts.add_user(conn, name, password, ROLES[name])
    finally:
        await conn.close()


async def _forget_live_configuration(database_url: str) -> None:
    """The journal's merchants go: every switch on this journal reads its own file again."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("DELETE FROM live_config")
        await conn.execute("SELECT pg_notify('paysw_reload', 'tests')")
    finally:
        await conn.close()


def sql(database_url: str, query: str, *args):
    async def go():
        conn = await asyncpg.connect(database_url)
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()

    return run(go())


class _From(requests.adapters.HTTPAdapter):
    """Connections from a loopback address of our choosing (127.0.0.2, the proxy, say)."""

    def __init__(self, source: str) -> None:
        self._source = source
        super().__init__()

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs, source_address=(self._source, 0))


def signed_in(
    console: ConsoleProcess, name: str, password: str | None = None, source: str = "", forwarded_for: str = ""
) -> tuple[requests.Session, int]:
    """A session signed in over HTTP as a browser does it (the sign-in form's own token), and the
    sign-in's status (303 when signed in); from ``source`` (a loopback address), saying it
    forwards for ``forwarded_for``."""
    session = requests.Session()
    if source:
        session.mount("http://", _From(source))
    if forwarded_for:
        session.headers["X-Forwarded-For"] = forwarded_for
    page = session.get(f"{console.base}/sign-in")
    pre = re.search(r'name="pre" value="([^"]+)"', page.text).group(1)
    form = {"pre": pre, "name": name, "password": PASSWORDS[name] if password is None else password, "next": "/"}
    answer = session.post(f"{console.base}/sign-in", data=form, allow_redirects=False)
    return session, answer.status_code


def csrf(session: requests.Session, console: ConsoleProcess) -> str:
    page = session.get(f"{console.base}/channels")
    return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)


def approved(console: ConsoleProcess, database_url: str, asked: requests.Response) -> requests.Response:
    """The change an admin's form just asked (four eyes, the console's default) approved by
    another admin, alan; the Changes page after it."""
    said = asked.text if asked.status_code == 200 else unquote(asked.headers.get("Location", ""))
    assert asked.status_code in (200, 303) and "change asked" in said, (asked.status_code, said[:300])
    request = sql(database_url, "SELECT max(id) FROM config_change WHERE decided_at IS NULL")[0][0]
    checker, _ = signed_in(console, "alan")
    decided = checker.post(f"{console.base}/changes/{request}/approve", data={"csrf": csrf(checker, console)})
    assert decided.status_code == 200 and f"change {request} approved" in decided.text, decided.text
    return decided


def audit_count(database_url: str, action: str, outcome: str | None = None) -> int:
    rows = sql(
        database_url,
        "SELECT count(*) FROM console_audit WHERE action = $1 AND ($2::text IS NULL OR outcome = $2)",
        action, outcome,
    )  # fmt: skip
    return rows[0][0]


def channel_enabled(switch, name: str) -> bool:
    status, text = switch.get("/channels")
    assert status == 200
    return requests.models.complexjson.loads(text)[name]["enabled"]


def test_no_page_and_no_action_without_a_session(console):
    for path in PAGES:
        answer = requests.get(console.base + path, allow_redirects=False)
        assert answer.status_code == 303 and answer.headers["Location"].startswith("/sign-in"), path
        assert (
            answer.headers["X-Frame-Options"] == "DENY"
            and "default-src 'self'" in answer.headers["Content-Security-Policy"]
        )
    for path in ACTIONS:
        answer = requests.post(console.base + path, data={"csrf": "x"}, allow_redirects=False)
        assert answer.status_code == 401, path
    # A cookie that is not a session's is no session.
    answer = requests.get(f"{console.base}/channels", cookies={"paysw_console": "forged"}, allow_redirects=False)
    assert answer.status_code == 303
    assert channel_enabled(console.switch, "wechat")


def test_an_account_name_names_one_person(console, database_url):
    """A new account's name is letters, digits, '.', '-' and '_': an approval's provenance names
    two (console:ada+alan), which a name with a '+' would make ambiguous."""
    added = subprocess.run(
        console.command("add-user", "ada+alan", "--role", "admin", "--password-stdin"),
        input="a long enough password\n", env=console.switch.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert added.returncode == 2 and "a name is letters, digits" in added.stderr, added.stderr
    assert sql(database_url, "SELECT count(*) FROM console_user WHERE name = 'ada+alan'")[0][0] == 0


def test_a_viewer_reads_but_cannot_act(console, database_url):
    session, status = signed_in(console, "vera")
    assert status == 303
    assert session.get(f"{console.base}/transactions").status_code == 200
    token = csrf(session, console)
    refused = audit_count(database_url, "role", "refused")
    acts = ("/channels/wechat/disable", f"/merchants/{KIOSK}", "/recon/1/resolve", "/recon/1/approve",
            "/dead-letters/000000000001/resolve", "/dead-letters/000000000001/retry",
            "/dead-letters/000000000001/approve", "/terminals/new", "/limits/wechat", "/risk/rules",
            "/risk/lists/remove", "/risk/removals/approve", "/risk/removals/reject", "/changes/1/approve",
            "/changes/1/reject")  # fmt: skip
    for path in acts:
        answer = session.post(
            console.base + path, data={"csrf": token, "name": "x", "reason": "x"}, allow_redirects=False
        )
        assert answer.status_code == 403 and "needs the" in answer.text, path
    assert channel_enabled(console.switch, "wechat")
    assert audit_count(database_url, "role", "refused") == refused + len(acts)
    last = sql(database_url, "SELECT target FROM console_audit WHERE action = 'role' ORDER BY at DESC LIMIT 1")
    assert last[0][0] == f"{acts[-1]} from 127.0.0.1"
    # The merchant form is shown to a viewer, but cannot be sent.
    page = session.get(f"{console.base}/merchants/{KIOSK}").text
    assert "<fieldset disabled>" in page and 'id="save"' not in page


def test_csrf_is_refused_and_audited(console, database_url):
    session, status = signed_in(console, "otto")
    assert status == 303
    token = csrf(session, console)
    refused = audit_count(database_url, "csrf", "refused")
    for data, headers in (
        ({}, {}),  # no token
        ({"csrf": token[:-2] + "xx"}, {}),  # a wrong one
        ({"csrf": token}, {"Origin": "http://evil.example"}),  # the right one, sent by another site's page
    ):
        answer = session.post(
            f"{console.base}/channels/wechat/disable", data=data, headers=headers, allow_redirects=False
        )
        assert answer.status_code == 403, (data, headers)
    assert channel_enabled(console.switch, "wechat")
    assert audit_count(database_url, "csrf", "refused") == refused + 3
    froms = sql(database_url, "SELECT target FROM console_audit WHERE action = 'csrf' ORDER BY at DESC LIMIT 3")
    assert [row[0] for row in froms] == ["/channels/wechat/disable from 127.0.0.1"] * 3  # where each came from
    # The sign-in form has its own token: a sign-in posted from elsewhere (no token cookie) is refused.
    forged = requests.post(f"{console.base}/sign-in", data={"pre": "x", "name": "otto", "password": PASSWORDS["otto"]},
                           allow_redirects=False)  # fmt: skip
    assert forged.status_code == 403 and "paysw_console" not in forged.cookies


def test_wrong_passwords_are_rate_limited(console, database_url):
    wrong = audit_count(database_url, "sign-in", "wrong name or password")
    for _ in range(4):
        assert signed_in(console, "vera", "not-her-password")[1] == 401
    # Eight at once: each counts as failed before its password is checked, so one of them at most
    # is checked (counted after their checks, all eight were: found in review).
    with ThreadPoolExecutor(8) as threads:
        burst = list(threads.map(lambda _: signed_in(console, "vera", "not-her-password")[1], range(8)))
    assert set(burst) <= {401, 429} and burst.count(401) <= 1, burst
    if 401 not in burst:
        assert signed_in(console, "vera", "not-her-password")[1] == 401
    assert audit_count(database_url, "sign-in", "wrong name or password") == wrong + 5
    # The sixth try is refused whatever the password, the right one included; other accounts are not.
    for _ in range(3):
        assert signed_in(console, "vera")[1] == 429
    assert signed_in(console, "otto")[1] == 303
    # A refusal for too many is not audited one by one: a flood of them would only grow the log.
    assert audit_count(database_url, "sign-in", "too many failed sign-ins: try again later") == 0
    unlocked = subprocess.run(console.command("unlock", "vera"), env=console.switch.env, capture_output=True, text=True)
    assert unlocked.returncode == 0, unlocked.stderr
    assert signed_in(console, "vera")[1] == 303
    assert audit_count(database_url, "user.unlock") == 1


def test_behind_a_trusted_proxy_each_user_is_the_address_it_forwards_and_nobody_else_can_say_so(console, database_url):
    """Through the console's gateway (``trusted_proxies``) the sign-in limits count the address
    the gateway forwards, not the gateway's: a stranger's failures lock out the stranger alone,
    and the audit says who signed in from where. From anywhere else X-Forwarded-For is ignored:
    a guesser cannot escape the limit by naming other addresses."""
    stranger, colleague, operator = "198.51.100.7", "198.51.100.8", "203.0.113.9"
    try:
        tries = [signed_in(console, "vera", "not-her-password", PROXY, f"10.9.9.9, {stranger}")[1] for _ in range(6)]
        assert tries == [401] * 5 + [429]  # sign_in_failures = 5 for one account from one address
        assert signed_in(console, "vera", "not-her-password", PROXY, colleague)[1] == 401  # not locked out
        session, status = signed_in(console, "vera", None, PROXY, operator)
        assert status == 303
        session.post(f"{console.base}/sign-out", data={"csrf": csrf(session, console)}, allow_redirects=False)
        audited = sql(database_url, "SELECT action, target FROM console_audit WHERE user_name = 'vera' "
                      "AND action IN ('sign-in', 'sign-out') AND outcome = 'ok' ORDER BY at DESC LIMIT 2")  # fmt: skip
        via = f"{operator} via {PROXY}"
        assert [tuple(row) for row in audited] == [("sign-out", via), ("sign-in", via)]
        spoofed = [signed_in(console, "vera", "not-her-password", "127.0.0.3", f"192.0.2.{n}")[1] for n in range(6)]
        assert spoofed == [401] * 5 + [429]  # all 127.0.0.3's
    finally:
        sql(database_url, "DELETE FROM console_sign_in_failure WHERE user_name = 'vera'")  # the other tests' vera


def test_a_name_that_is_no_accounts_is_never_logged_nor_kept(console, database_url):
    typed = "Otto-password-typed-as-the-name"  # a password typed in the wrong field
    session = requests.Session()
    page = session.get(f"{console.base}/sign-in")
    pre = re.search(r'name="pre" value="([^"]+)"', page.text).group(1)
    answer = session.post(f"{console.base}/sign-in", data={"pre": pre, "name": typed, "password": "x"},
                          allow_redirects=False)  # fmt: skip
    assert answer.status_code == 401
    console.log.flush()
    assert typed not in Path(console.log.name).read_text()
    for table, column in (("console_audit", "user_name"), ("console_sign_in_failure", "user_name")):
        assert not sql(database_url, f"SELECT 1 FROM {table} WHERE {column} = $1", typed), table
    assert sql(database_url, "SELECT 1 FROM console_audit WHERE user_name = '(not an account)'")


def test_sign_in_goes_nowhere_but_this_console_and_other_hosts_are_refused(console):
    elsewhere = ("//evil.example/x", "/\\evil.example", "/\t/evil.example/x", "https://evil.example/", "/\n/evil.x")
    for next_ in elsewhere:
        session = requests.Session()
        page = session.get(f"{console.base}/sign-in", params={"next": next_})
        pre = re.search(r'name="pre" value="([^"]+)"', page.text).group(1)
        hidden = re.search(r'name="next" value="([^"]*)"', page.text).group(1)
        form = {"pre": pre, "name": "otto", "password": PASSWORDS["otto"], "next": next_}
        answer = session.post(f"{console.base}/sign-in", data=form, allow_redirects=False)
        assert answer.status_code == 303 and answer.headers["Location"] == "/transactions", (next_, hidden)
    # Another site's name for this address (DNS rebinding) reaches nothing.
    rebound = requests.get(f"{console.base}/sign-in", headers={"Host": "rebind.evil.example"})
    assert rebound.status_code == 421


def test_a_session_expires_and_signing_out_ends_it(console, database_url):
    session, _ = signed_in(console, "otto")
    assert session.get(f"{console.base}/channels", allow_redirects=False).status_code == 200
    sql(database_url, "UPDATE console_session SET expires_at = now() - interval '1 second' WHERE user_name = 'otto'")
    assert session.get(f"{console.base}/channels", allow_redirects=False).status_code == 303
    session, _ = signed_in(console, "otto")
    token = csrf(session, console)
    cookie = session.cookies["paysw_console"]
    assert session.post(f"{console.base}/sign-out", data={"csrf": token}, allow_redirects=False).status_code == 303
    stolen = requests.get(f"{console.base}/channels", cookies={"paysw_console": cookie}, allow_redirects=False)
    assert stolen.status_code == 303


def test_the_audit_log_cannot_be_changed(console, database_url):
    signed_in(console, "otto")
    for statement in (
        "UPDATE console_audit SET outcome = 'edited'",
        "DELETE FROM console_audit",
        "TRUNCATE console_audit",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            sql(database_url, statement)
    assert audit_count(database_url, "sign-in", "ok") >= 1


def test_an_invalid_merchant_edit_is_refused_with_its_path(console, database_url):
    session, _ = signed_in(console, "ada")
    token = csrf(session, console)
    before = sql(database_url, "SELECT version FROM live_config WHERE section = 'merchants'")
    form = {"csrf": token, "version": str(before[0][0] if before else 0), "name": "Demo Kiosk", "takes_wechat": "on",
            "rate_wechat": "-1"}  # fmt: skip
    answer = session.post(f"{console.base}/merchants/{KIOSK}", data=form, allow_redirects=False)
    assert answer.status_code == 400 and "$.merchants[" in answer.text and "rate_per_s" in answer.text
    assert sql(database_url, "SELECT version FROM live_config WHERE section = 'merchants'") == before


# -- in a real browser --------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = required_module("selenium.webdriver")
    chromium = debian_binary("chromium", "chromium")
    driver_binary = debian_binary("chromedriver", "chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tmp_path_factory.mktemp("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1000", f"--user-data-dir={profile}"):  # fmt: skip
        options.add_argument(flag)
    from selenium.webdriver.chrome.service import Service

    driver = webdriver.Chrome(service=Service(driver_binary), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def shot(browser, name: str) -> None:
    """A screenshot of the page; PAYSW_SCREENSHOTS=folder keeps it there (the README's)."""
    folder = os.environ.get("PAYSW_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(Path(folder) / f"{name}.png"))


def pay(switch, channel: str, terminal: str = "T0000001", merchant: str = "898310048990001") -> dict:
    async def one() -> dict:
        async with connected(switch) as client:
            return await client.request(new_purchase(channel, terminal=terminal, merchant=merchant))

    return run(one())


def pay_many(switch, count: int, channel: str, terminal: str, merchant: str) -> list[str]:
    async def many() -> list[str]:
        async with connected(switch) as client:
            asks = [client.request(new_purchase(channel, terminal=terminal, merchant=merchant)) for _ in range(count)]
            return [answer["39"] for answer in await asyncio.gather(*asks)]

    return run(many())


def test_an_operators_day_in_a_browser(console, browser, database_url):
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    def text(element_id: str) -> str:
        return browser.find_element(By.ID, element_id).text

    def follow(by: str, value: str) -> None:
        """Click, and wait for the page it leads to (the old page's root gone: stale, or, as
        chromedriver 156 sometimes words it, a node that does not belong to the document)."""
        page = browser.find_element(By.TAG_NAME, "html")
        browser.find_element(by, value).click()

        def left(_) -> bool:
            try:
                page.is_enabled()
            except StaleElementReferenceException:
                return True
            except WebDriverException as exc:
                if "does not belong to the document" in str(exc):
                    return True
                raise
            return False

        WebDriverWait(browser, 10).until(left)

    def until(predicate, what: str, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while not (found := predicate()):
            assert time.monotonic() < deadline, what
            time.sleep(0.2)
        return found

    base, switch = console.base, console.switch
    # Sign in: the page asked for comes after.
    browser.get(f"{base}/transactions")
    assert "/sign-in" in browser.current_url
    shot(browser, "sign-in")
    browser.find_element(By.ID, "name").send_keys("ada")
    browser.find_element(By.ID, "password").send_keys(PASSWORDS["ada"])
    follow(By.ID, "sign-in")
    assert browser.current_url == f"{base}/transactions", browser.page_source[-600:]

    # A transaction the test just made: found by its RRN, its timeline read.
    answer = pay(switch, "alipay")
    assert answer["39"] == "00"
    rrn = answer["37"]
    browser.find_element(By.ID, "rrn").send_keys(rrn)
    follow(By.ID, "search")
    assert rrn in text("results") and "APPROVED" in text("results")
    shot(browser, "transactions")
    follow(By.LINK_TEXT, rrn)
    assert text("state") == "APPROVED"
    timeline = text("timeline")
    assert "(new) → RECEIVED" in timeline and "RECEIVED → APPROVED" in timeline and "channel answer" in timeline
    assert answer["2"] not in browser.page_source  # the payment code is never shown whole
    shot(browser, "timeline")

    # A channel disabled (with a confirmation): its purchases are answered 91; enabled again: 00.
    browser.get(f"{base}/channels")
    follow(By.ID, "disable-wechat")
    assert "disable wechat?" in browser.find_element(By.TAG_NAME, "h1").text
    follow(By.ID, "confirm")
    assert "wechat: disable ok" in text("said")
    assert "NO" in browser.find_element(By.CSS_SELECTOR, "#channel-wechat .on").text
    shot(browser, "channels")
    assert pay(switch, "wechat")["39"] == "91"
    follow(By.ID, "enable-wechat")
    follow(By.ID, "confirm")
    assert "wechat: enable ok" in text("said")
    assert pay(switch, "wechat")["39"] == "00"

    # A reconciliation difference resolved with a reason: asked, and approved by a second operator
    # (a difference resolved is settled as one fixed: it can pay a merchant).
    item = _open_difference(database_url)
    browser.get(f"{base}/recon")
    shot(browser, "recon")
    browser.find_element(By.ID, f"reason-{item}").send_keys("paid at the counter; receipt 42")
    follow(By.ID, f"resolve-{item}")
    assert f"difference {item}: resolution asked" in text("said") and "asked by ada" in text(f"asked-{item}")
    assert not browser.find_elements(By.ID, f"approve-{item}")  # not by the one who asked
    assert sql(database_url, "SELECT status FROM recon_item WHERE id = $1", item)[0][0] == "OPEN"
    asked = "SELECT max(id) FROM console_audit WHERE action = 'recon.resolve' AND target = $1"
    request = str(sql(database_url, asked, str(item))[0][0])
    own, _ = signed_in(console, "ada")
    refused = own.post(f"{console.base}/recon/{item}/approve", data={"csrf": csrf(own, console), "request": request})
    assert "approved by another operator than the one who asked" in refused.text
    second, _ = signed_in(console, "otto")
    decision = {"csrf": csrf(second, console), "request": request}
    assert f"difference {item}: resolved" in second.post(f"{console.base}/recon/{item}/approve", data=decision).text
    status, note = sql(database_url, "SELECT status, note FROM recon_item WHERE id = $1", item)[0]
    assert (status, note) == ("RESOLVED", "paid at the counter; receipt 42")
    assert sql(database_url, "SELECT rule FROM recon_action WHERE item_id = $1", item)[0][0] == "operator"

    # A transaction the resolver gave up on: what was done about it said; off the list, audited.
    letter = _dead_letter(database_url)
    browser.get(f"{base}/dead-letters")
    shot(browser, "dead-letters")
    browser.find_element(By.ID, f"resolution-{letter}").send_keys("cancelled by phone with UnionPay; ticket 7")
    follow(By.ID, f"resolve-{letter}")
    assert f"{letter}: resolved" in text("said") and letter not in browser.find_element(By.TAG_NAME, "table").text
    resolved = sql(database_url, "SELECT resolved_at, resolution FROM dead_letter WHERE rrn = $1", letter)[0]
    assert resolved["resolved_at"] and resolved["resolution"] == "cancelled by phone with UnionPay; ticket 7"
    audited = "SELECT user_name, after #>> '{}' FROM console_audit WHERE action = 'dead_letter.resolve' AND target = $1"
    assert tuple(sql(database_url, audited, letter)[0]) == ("ada", "cancelled by phone with UnionPay; ticket 7")
    # "Try again" asks first, showing why it was given up on (this letter's transaction is not in
    # the journal: refused, the letter kept open).
    other = _dead_letter(database_url, "refused (given up on before, at UNKNOWN: x; resolved 2026-01-02: paid back)")
    browser.get(f"{base}/dead-letters")
    follow(By.ID, f"retry-{other}")
    assert "paid back" in text("reason") and text("state") == "not in this journal"
    shot(browser, "dead-letter-retry")
    browser.find_element(By.ID, "resolution").send_keys("UnionPay's outage is over")
    follow(By.ID, "confirm")  # asked: another operator approves it (four_eyes)
    assert f"{other}: handing back asked" in text("said") and "Handing back asked by ada" in text(f"asked-{other}")
    assert not browser.find_elements(By.ID, f"approve-{other}")  # not by the one who asked
    assert sql(database_url, audited.replace("resolve", "retry"), other)[0][1] == "UnionPay's outage is over"
    follow(By.ID, f"reject-{other}")  # withdrawn
    assert f"{other}: handing back withdrawn" in text("said") and browser.find_elements(By.ID, f"retry-{other}")

    # A terminal black-listed; taking it off takes two: asked, saying why; the asker may only withdraw it.
    browser.get(f"{base}/risk")
    browser.find_element(By.ID, "list-value").send_keys("T9999999")
    browser.find_element(By.ID, "list-reason").send_keys("card skimmer reported")
    follow(By.ID, "list-add")
    assert "black list of terminals: T9999999 added" in text("said")
    browser.find_element(By.ID, "remove-reason-black-terminal-T9999999").send_keys("skimmer removed; terminal swapped")
    follow(By.ID, "remove-black-terminal-T9999999")
    assert "black terminal T9999999: removal asked" in text("said")
    assert "removal asked by ada" in text("removal-black-terminal-T9999999") and "terminal swapped" in text("lists")
    assert not browser.find_elements(By.ID, "approve-removal-black-terminal-T9999999")  # not by the one who asked
    shot(browser, "risk")
    follow(By.ID, "reject-removal-black-terminal-T9999999")  # withdrawn: still listed
    assert "removal withdrawn" in text("said") and browser.find_elements(By.ID, "remove-black-terminal-T9999999")
    listed = "SELECT count(*) FROM risk_list WHERE colour = 'black' AND value = 'T9999999'"
    assert sql(database_url, listed)[0][0] == 1

    # A merchant's rate quota changed: it holds at once, with no restart; then taken away again.
    assert set(pay_many(switch, 6, "wechat", KIOSK_TERMINAL, KIOSK)) == {"00"}
    browser.get(f"{base}/merchants/{KIOSK}")
    shot(browser, "merchant")
    browser.find_element(By.ID, "rate-wechat").send_keys("1")
    follow(By.ID, "save")
    assert "change asked" in text("said")  # four eyes: another admin approves it
    assert "wechat 1.0" not in browser.find_element(By.CSS_SELECTOR, f"#merchant-{KIOSK} .rates").text
    browser.get(f"{base}/changes")
    waiting = text("waiting")
    assert "merchant.edit" in waiting and KIOSK in waiting and "Withdraw" in waiting and "Approve" not in waiting
    request = sql(database_url, "SELECT max(id) FROM config_change WHERE decided_at IS NULL")[0][0]
    assert text(f"changed-{request}") == "rate_per_s.wechat: (none) → 1.0"  # the one figure, not the whole merchant
    shot(browser, "changes")
    checker, _ = signed_in(console, "alan")
    decided = checker.post(f"{console.base}/changes/{request}/approve", data={"csrf": csrf(checker, console)})
    assert f"change {request} approved" in decided.text
    browser.get(f"{base}/merchants")
    assert "wechat 1.0" in browser.find_element(By.CSS_SELECTOR, f"#merchant-{KIOSK} .rates").text
    shot(browser, "merchants")

    def limited() -> list[str] | None:
        answers = pay_many(switch, 6, "wechat", KIOSK_TERMINAL, KIOSK)
        return answers if "91" in answers else None

    answers = until(limited, "the new quota did not hold within 10 s")
    assert answers.count("00") <= 2, answers
    browser.get(f"{base}/merchants/{KIOSK}")
    browser.find_element(By.ID, "rate-wechat").clear()
    follow(By.ID, "save")
    browser.get(f"{base}/changes")
    follow(By.ID, f"reject-{request + 1}")  # withdrawn by the one who asked: the quota stays
    assert f"change {request + 1} withdrawn" in text("said") and "none" in text("waiting")
    browser.get(f"{base}/merchants/{KIOSK}")
    browser.find_element(By.ID, "rate-wechat").clear()
    follow(By.ID, "save")
    again = checker.post(f"{console.base}/changes/{request + 2}/approve", data={"csrf": csrf(checker, console)})
    assert f"change {request + 2} approved" in again.text
    until(lambda: set(pay_many(switch, 6, "wechat", KIOSK_TERMINAL, KIOSK)) == {"00"}, "the quota stayed")

    browser.get(f"{base}/routing")
    assert "Gray routes" in browser.page_source
    shot(browser, "routing")
    browser.get(f"{base}/terminals")
    assert "KCV" in text("terminals")  # keys by their check values, never the keys
    shot(browser, "terminals")
    browser.get(f"{base}/risk")
    assert "single-payment-cap" in browser.find_element(By.ID, "rules-text").get_attribute("value")
    shot(browser, "risk")
    browser.get(f"{base}/limits/wechat")
    assert browser.find_element(By.ID, "breaker-open_ms").get_attribute("value")
    shot(browser, "limits")

    # Every action is in the audit log, with who did it, and the merchant's values before and after.
    browser.get(f"{base}/audit")
    shot(browser, "audit")
    log = text("audit")
    for action in ("channel.disable", "channel.enable", "recon.resolve", "merchant.edit", "sign-in"):
        assert action in log, action
    disabled = sql(database_url, "SELECT outcome FROM console_audit WHERE action = 'channel.disable' ORDER BY id")
    assert [r["outcome"] for r in disabled] == ["started", "ok"]  # the attempt, then what came of it
    edits = sql(database_url, "SELECT before::text, after::text FROM console_audit WHERE action = 'merchant.edit' "
                "AND outcome = 'ok' AND target = $1 ORDER BY id DESC LIMIT 2", KIOSK)  # fmt: skip
    rates = [(json.loads(b)["rate_per_s"].get("wechat"), json.loads(a)["rate_per_s"].get("wechat")) for b, a in edits]
    assert rates == [(1.0, None), (None, 1.0)]
    follow(By.ID, "sign-out")
    assert "/sign-in" in browser.current_url


def _open_difference(database_url: str) -> int:
    """A reconciliation batch with one open difference (a payment the channel has and the journal
    does not), as a batch leaves it for a person."""
    hour = random.randrange(24)
    day = f"2001-01-{random.randrange(1, 29):02d}"
    rows = sql(
        database_url,
        "WITH b AS (INSERT INTO recon_batch (channel, day, hour, step) VALUES ('wechat', $1::text::date, $2, 'done') "
        "ON CONFLICT (channel, day, hour) DO UPDATE SET step = 'done' RETURNING id) "
        "INSERT INTO recon_item (batch_id, class, entry, out_trade_no, channel_status, channel_fen, status) "
        "SELECT id, 'LONG', 'PAY', 'CONSOLE' || $2, 'SUCCESS', 1234, 'OPEN' FROM b RETURNING id",
        day, hour,
    )  # fmt: skip
    return rows[0][0]


def _dead_letter(database_url: str, reason: str = "channel refused to cancel", reopened: bool = False) -> str:
    """The RRN of a transaction the resolver gave up on (on 2026-01-01; ``reopened``: given up on
    again now), as it leaves it for a person."""
    rrn = f"9{uuid.uuid4().int % 10**11:011d}"
    sql(
        database_url,
        "INSERT INTO dead_letter (tx_date, terminal_id, stan, transmitted, rrn, channel, state, reason, created_at, "
        "reopened_at) VALUES ('2026-01-01', $1, '000001', '0101120000', $2, 'unionpay', 'APPROVED', $3, "
        "'2026-01-01T00:00:00Z', CASE WHEN $4 THEN now() END)",
        f"D{uuid.uuid4().hex[:7].upper()}", rrn, reason, reopened,
    )  # fmt: skip
    return rrn


def pay_each(switch, amount: int = 1234) -> dict[str, dict]:
    async def each() -> dict[str, dict]:
        async with connected(switch) as client:
            asks = [
                client.request(new_purchase("unionpay", terminal=t, merchant=m, amount=amount))
                for m, t in GRAY_MERCHANTS
            ]
            return dict(zip([m for m, _ in GRAY_MERCHANTS], await asyncio.gather(*asks), strict=True))

    return run(each())


def channels_of(database_url: str, answers: dict[str, dict]) -> dict[str, str]:
    rows = sql(database_url, "SELECT rrn, channel FROM txn WHERE rrn = ANY($1)", [a["37"] for a in answers.values()])
    by_rrn = {r["rrn"]: r["channel"] for r in rows}
    return {m: by_rrn[a["37"]] for m, a in answers.items()}


def test_a_share_of_merchants_goes_to_the_legacy_switch_and_an_operator_moves_it(console, database_url):
    switch, ledger = console.switch, console.config.parent / "legacy-ledger.jsonl"
    tenth = {m for m, _ in GRAY_MERCHANTS if share_of(m) < 10}
    half = {m for m, _ in GRAY_MERCHANTS if share_of(m) < 50}
    assert 1 <= len(tenth) < len(half) < len(GRAY_MERCHANTS)  # the ids make a fair test

    answers = pay_each(switch)
    assert {a["39"] for a in answers.values()} == {"00"}
    went = channels_of(database_url, answers)
    assert {m for m, ch in went.items() if ch == "legacy"} == tenth
    assert {m for m, ch in went.items() if ch == "unionpay"} == set(went) - tenth
    # The legacy switch saw those purchases, and only those: by terminal, as it knows them.
    seen = [json.loads(line) for line in ledger.read_text().splitlines()]
    terminals = dict((t, m) for m, t in GRAY_MERCHANTS)
    assert {terminals[s["terminal"]] for s in seen} == tenth
    # Its own answer is relayed: a purchase it declines for funds is 51 at the terminal.
    poor = pay_each(switch, amount=1251)
    assert {m for m, a in poor.items() if a["39"] == "51"} == tenth

    # The operator moves the share to 50 % in the console: live, with no restart.
    session, status = signed_in(console, "ada")
    assert status == 303
    page = session.get(f"{console.base}/routing").text
    assert 'id="gray-unionpay"' in page and "10 %" in page
    csrf = page.split('name="csrf" value="')[1].split('"')[0]
    version = page.split('name="version" value="')[1].split('"')[0]
    form = {"csrf": csrf, "version": version, "percent": "50"}
    moved = session.post(f"{console.base}/routing/gray/unionpay", data=form)
    assert "gray route to 50 %: change asked" in moved.text
    approved(console, database_url, moved)
    deadline = time.monotonic() + 10
    while True:
        went = channels_of(database_url, pay_each(switch))
        if {m for m, ch in went.items() if ch == "legacy"} == half:
            break
        assert time.monotonic() < deadline, f"50 % did not take: {sorted(m for m, c in went.items() if c == 'legacy')}"
        time.sleep(0.3)
    assert tenth <= half  # those moved first stayed moved
    audited = "SELECT before::text, after::text FROM console_audit WHERE action = 'routing.gray' ORDER BY id DESC"
    before, after = sql(database_url, audited)[0]
    assert json.loads(before)["percent"] == 10 and json.loads(after)["percent"] == 50
    assert requests.get(f"{console.base}/routing", allow_redirects=False).status_code == 303


def test_an_operator_black_lists_a_terminal_and_takes_it_off_again(console, database_url):
    merchant, terminal = GRAY_MERCHANTS[-1]  # on UnionPay, never gray-routed (its share is 97)

    def pays() -> str:
        async def one() -> str:
            async with connected(console.switch) as client:
                return (await client.request(new_purchase("unionpay", terminal=terminal, merchant=merchant)))["39"]

        return run(one())

    def until(code: str) -> None:
        deadline = time.monotonic() + 10
        while (got := pays()) != code:
            assert time.monotonic() < deadline, f"still {got}, not {code}"
            time.sleep(0.2)

    session, _ = signed_in(console, "otto")
    token = csrf(session, console)
    assert pays() == "00"
    entry = {"csrf": token, "colour": "black", "of": "terminal", "value": terminal, "reason": "skimmer found"}
    page = session.post(f"{console.base}/risk/lists/add", data=entry)
    assert f"black list of terminals: {terminal} added" in page.text and "blacklisted-terminal" in page.text
    until("62")  # the rule's answer, in every front end within a second or two
    assert "code" not in re.findall(r'name="of"[^>]*>((?:<option>\w+</option>)+)', page.text)[0]  # no code entry
    # Off the black list, it pays again: with four eyes, one operator asks (saying why), another approves.
    page = session.post(f"{console.base}/risk/lists/remove", data=entry | {"reason": ""})
    assert "say why it comes off the black list" in page.text
    page = session.post(f"{console.base}/risk/lists/remove", data=entry | {"reason": "terminal swapped"})
    assert f"black terminal {terminal}: removal asked" in page.text and "terminal swapped" in page.text
    asked = re.search(r'name="request" value="(\d+)"', page.text)[1]
    decide = {"csrf": token, "of": "terminal", "value": terminal, "request": asked}
    page = session.post(f"{console.base}/risk/removals/approve", data=decide)
    assert "approved by another operator than the one who asked" in page.text
    checker, _ = signed_in(console, "ada")
    decide["csrf"] = csrf(checker, console)
    page = checker.post(f"{console.base}/risk/removals/approve", data=decide | {"request": "0"})
    assert "not the one you read" in page.text
    assert pays() == "62"  # asked, refused twice: still listed
    page = checker.post(f"{console.base}/risk/removals/approve", data=decide)
    assert f"black list of terminals: {terminal} removed" in page.text
    until("00")
    audited = "SELECT action, outcome FROM console_audit WHERE target = $1 ORDER BY id"
    assert [tuple(r) for r in sql(database_url, audited, f"black terminal {terminal}")] == [
        ("risk.list.add", "ok"),
        ("risk.list.remove", "awaiting a second operator"),
        ("risk.list.approve", "refused: the one who asked"),
        ("risk.list.remove", "ok"),
    ]
    removed = "SELECT by_whom FROM risk_audit WHERE detail LIKE $1 ORDER BY id DESC LIMIT 1"
    by = sql(database_url, removed, f"% {terminal}:%")
    assert [tuple(r) for r in by] == [("console:otto+ada",)]
    # A request names its entry: taken off outside the console and listed again, it is another
    # entry, which the request made before does not remove.
    listed = {"csrf": token, "colour": "black", "of": "terminal", "value": "T9999998", "reason": "skimmer"}
    session.post(f"{console.base}/risk/lists/add", data=listed)
    page = session.post(f"{console.base}/risk/lists/remove", data=listed | {"reason": "swapped"})
    asked = re.search(r'name="request" value="(\d+)"', page.text)[1]
    sql(database_url, "DELETE FROM risk_list WHERE value = 'T9999998'")  # as paysw risk list remove does
    again = "INSERT INTO risk_list (colour, list_of, value, reason) VALUES ('black', 'terminal', 'T9999998', 'again')"
    sql(database_url, again)
    page = checker.post(f"{console.base}/risk/removals/approve", data=decide | {"value": "T9999998", "request": asked})
    assert "black terminal T9999998: no removal awaits approval" in page.text
    assert sql(database_url, "SELECT reason FROM risk_list WHERE value = 'T9999998'")[0][0] == "again"
    page = session.post(f"{console.base}/risk/lists/remove", data=listed | {"value": "T" * 65})
    assert "at most 64 characters" in page.text and 'id="said"' in page.text
    # A page says only what the console said to this session: a link's words are not shown.
    told = page.url.partition("?")[2]
    assert checker.get(f"{console.base}/risk?{told}").text.count('id="said"') == 0  # signed for otto's session
    forged = session.get(f"{console.base}/risk", params={"said": "removal approved by the security team"})
    assert "security team" not in forged.text and 'id="said"' not in forged.text
    assert session.get(f"{console.base}/risk", params={"said": "x", "sig": "é"}).status_code == 200
    # A request whose asker is no longer an operator lapses when approved: nothing removed.
    page = session.post(f"{console.base}/risk/lists/remove", data=listed | {"reason": "swapped again"})
    asked = re.search(r'name="request" value="(\d+)"', page.text)[1]
    approval = decide | {"value": "T9999998", "request": asked}
    sql(database_url, "UPDATE console_user SET role = 'viewer' WHERE name = 'otto'")
    try:
        page = checker.post(f"{console.base}/risk/removals/approve", data=approval)
    finally:
        sql(database_url, "UPDATE console_user SET role = 'operator' WHERE name = 'otto'")
    assert "black terminal T9999998: removal lapsed (otto is no longer an operator): ask again" in page.text
    assert 'id="approve-removal-black-terminal-T9999998"' not in page.text  # no longer waiting
    assert sql(database_url, "SELECT reason FROM risk_list WHERE value = 'T9999998'")[0][0] == "again"
    # Nor does a lapsed request block another's: asked anew, it takes its place.
    session.post(f"{console.base}/risk/lists/remove", data=listed | {"reason": "swapped once more"})
    sql(database_url, "UPDATE console_user SET role = 'viewer' WHERE name = 'otto'")
    try:
        anew = {"csrf": decide["csrf"], "colour": "black", "of": "terminal", "value": "T9999998", "reason": "mine"}
        page = checker.post(f"{console.base}/risk/lists/remove", data=anew)
    finally:
        sql(database_url, "UPDATE console_user SET role = 'operator' WHERE name = 'otto'")
    assert "black terminal T9999998: removal asked" in page.text and "removal asked by ada" in page.text
    outcomes = "SELECT outcome FROM console_audit WHERE target = 'black terminal T9999998' ORDER BY id DESC LIMIT 2"
    assert [r[0] for r in sql(database_url, outcomes)] == [
        "awaiting a second operator",
        "lapsed: otto is no longer an operator",
    ]
    viewer, _ = signed_in(console, "vera")
    refused = viewer.post(f"{console.base}/risk/lists/add", data=entry | {"csrf": csrf(viewer, console)})
    assert refused.status_code == 403


def test_a_new_merchant_starts_today_and_the_file_and_the_journal_trade_places(console, database_url):
    import datetime as dt

    session, _ = signed_in(console, "ada")
    token = csrf(session, console)
    version = sql(database_url, "SELECT version FROM live_config WHERE section = 'merchants'")
    form = {"csrf": token, "version": str(version[0][0] if version else 0), "id": "898310048990077",
            "name": "Console Shop", "takes_wechat": "on", "fee_wechat": "38.5"}  # fmt: skip
    refused = session.post(f"{console.base}/merchants/new", data=form, allow_redirects=False)
    assert refused.status_code == 400 and "fee at wechat: not a whole number" in refused.text
    created = session.post(f"{console.base}/merchants/new", data=form | {"fee_wechat": "38"}, allow_redirects=False)
    approved(console, database_url, created)
    body = json.loads(sql(database_url, "SELECT body::text FROM live_config WHERE section = 'merchants'")[0][0])
    new = next(m for m in body if m["id"] == "898310048990077")
    today = dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).date().isoformat()
    assert new["onboarded"] == today and new["fee_per_10000"] == {"wechat": 38}  # the new-merchant rules apply

    def config(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "switch.cli", "config", *args, "--config", str(console.config)]
        return subprocess.run(command, env=console.switch.env, capture_output=True, text=True, timeout=60)

    shown = config("show")
    assert shown.returncode == 0 and "merchants: the journal's (version" in shown.stdout
    forgotten = config("forget", "--section", "merchants")
    assert forgotten.returncode == 0, forgotten.stderr
    assert not sql(database_url, "SELECT 1 FROM live_config WHERE section = 'merchants'")
    assert "merchants: the file's" in forgotten.stdout
    imported = config("import", "--section", "merchants")
    assert imported.returncode == 0, imported.stderr
    body = json.loads(sql(database_url, "SELECT body::text FROM live_config WHERE section = 'merchants'")[0][0])
    assert "898310048990077" not in {m["id"] for m in body} and KIOSK in {m["id"] for m in body}
    assert audit_count(database_url, "config.forget") >= 1 and audit_count(database_url, "config.import") >= 1
    assert config("forget").returncode == 0


def answer_of(switch, message: dict) -> str:
    async def one() -> str:
        async with connected(switch) as client:
            return (await client.request(message))["39"]

    return run(one())


def until_answered(switch, make, code: str, within_s: float = 10) -> None:
    """``make()``'s purchase answered ``code`` within ``within_s`` (a live change reaching the front end)."""
    deadline = time.monotonic() + within_s
    while (got := answer_of(switch, make())) != code:
        assert time.monotonic() < deadline, f"still {got}, not {code}"
        time.sleep(0.2)


def test_an_admin_changes_a_channels_limits_and_breaker_live(console, database_url):
    session, _ = signed_in(console, "ada")
    token = csrf(session, console)
    page = session.get(f"{console.base}/limits/inbank").text
    form = dict(re.findall(r'<input name="([a-z_.]+)" id="[^"]*" value="([^"]*)"', page))
    assert form["rate_per_s"] == "0" and form["notices_per_s"] == "200" and "breaker.open_ms" in form
    version = re.search(r'name="version" value="(\d+)"', page).group(1)
    post = form | {"csrf": token, "version": version}
    wrong = session.post(f"{console.base}/limits/inbank", data=post | {"breaker.failure_rate": "2"})
    assert wrong.status_code == 400 and "$.limits.inbank" in wrong.text and "failure_rate" in wrong.text
    assert not sql(database_url, "SELECT 1 FROM live_config WHERE section = 'limits'")  # nothing kept
    saved = session.post(
        f"{console.base}/limits/inbank",
        data=post | {"rate_per_s": "1", "frontend_in_flight": "7", "breaker.open_ms": "1234", "notices_per_s": "40"},
        allow_redirects=False,
    )
    approved(console, database_url, saved)
    deadline = time.monotonic() + 10  # every front end, with no restart
    while (shown := json.loads(console.switch.get("/channels")[1])["inbank"])["max_in_flight"] != 7:
        assert time.monotonic() < deadline, shown
        time.sleep(0.2)
    assert (shown["rate_per_s"], shown["notices_per_s"]) == (1, 40)
    refused = [answer_of(console.switch, new_purchase("inbank")) for _ in range(4)]
    assert "91" in refused, refused  # one a second: a burst goes over it
    audited = sql(database_url, "SELECT before::text, after::text FROM console_audit WHERE action = 'channel.limits' "
                  "AND outcome = 'ok' ORDER BY id")  # fmt: skip
    before, after = (json.loads(v) for v in audited[-1])
    assert before["rate_per_s"] == 0 and after["rate_per_s"] == 1 and after["breaker"]["open_ms"] == 1234
    row = re.search(r'<tr id="channel-inbank">.*?</tr>', session.get(f"{console.base}/channels").text, re.S).group(0)
    assert re.search(r'class="n latency">[0-9.]+ / [0-9.]+ ms<', row) and re.search(r'class="n errors">0\.0 %<', row)
    kept = re.search(r'name="version" value="(\d+)"', session.get(f"{console.base}/limits/inbank").text).group(1)
    restored = session.post(f"{console.base}/limits/inbank", data=post | {"version": kept}, allow_redirects=False)
    approved(console, database_url, restored)
    until_answered(console.switch, lambda: new_purchase("inbank"), "00")
    assert json.loads(console.switch.get("/channels")[1])["inbank"]["max_in_flight"] == int(form["frontend_in_flight"])


def test_a_change_shows_its_approver_what_it_changes_field_by_field():
    from switch.console.changes import differences

    before = {"id": "M1", "rate_per_s": {"alipay": 5.0}, "fee_per_10000": {"wechat": 25}, "suspended": False}
    after = {"id": "M1", "rate_per_s": {"alipay": 5.0, "wechat": 1.0}, "fee_per_10000": {}, "suspended": True}
    assert differences(before, after) == [
        ("fee_per_10000.wechat", 25, None),
        ("rate_per_s.wechat", None, 1.0),
        ("suspended", False, True),
    ]
    assert differences(None, {"id": "T1"}) == [("(all)", None, {"id": "T1"})]  # a new one: all of it
    assert differences([1, 2], [1, 3]) == [("(all)", [1, 2], [1, 3])] and differences(before, before) == []


def test_a_configuration_change_applies_only_once_another_admin_approves_it(console, database_url):
    """Four eyes (the default): an admin's change of the live configuration is asked, nothing kept;
    not approved by the one who asked, nor by an operator; one waits per section; another admin's
    approval keeps it as asked, named in the section's provenance and the audit. One whose
    section changed since lapses, nothing kept; one rejected is not kept."""
    session, _ = signed_in(console, "ada")
    page = session.get(f"{console.base}/limits/ecny").text
    form = dict(re.findall(r'<input name="([a-z_.]+)" id="[^"]*" value="([^"]*)"', page))
    version = re.search(r'name="version" value="(\d+)"', page).group(1)
    post = form | {"csrf": csrf(session, console), "version": version}

    def limits() -> asyncpg.Record | None:
        rows = sql(database_url, "SELECT body, version, changed_by FROM live_config WHERE section = 'limits'")
        return rows[0] if rows else None

    def ask(who: requests.Session, **fields: str) -> requests.Response:
        return who.post(f"{console.base}/limits/ecny", data=post | fields, allow_redirects=False)

    def decide(who: requests.Session, request: int, decision: str) -> str:
        answer = who.post(f"{console.base}/changes/{request}/{decision}", data={"csrf": csrf(who, console)})
        return answer.text if answer.status_code == 200 else str(answer.status_code)

    before = limits()  # (another test's kept limits, or none)
    assert form["frontend_in_flight"] != "9"
    asked = ask(session, frontend_in_flight="9")
    assert asked.status_code == 303 and "change asked" in unquote(asked.headers["Location"])
    request = sql(database_url, "SELECT max(id) FROM config_change WHERE decided_at IS NULL")[0][0]
    assert limits() == before  # nothing kept: no front end sees it
    alan, _ = signed_in(console, "alan")
    second = ask(alan, frontend_in_flight="8", csrf=csrf(alan, console))
    assert second.status_code == 400 and f"awaits approval (request {request}, asked by ada)" in second.text
    assert "is approved by another admin than the one who asked" in decide(session, request, "approve")
    otto, _ = signed_in(console, "otto")
    assert decide(otto, request, "approve") == "403"
    assert limits() == before and audit_count(database_url, "channel.limits", f"{CHANGE_AWAITING}: request {request}")
    assert f"change {request} approved" in decide(alan, request, "approve")
    kept = limits()
    assert json.loads(kept["body"])["ecny"]["frontend_in_flight"] == 9 and kept["changed_by"] == "console:ada+alan"
    deadline = time.monotonic() + 10  # every front end, with no restart
    while json.loads(console.switch.get("/channels")[1])["ecny"]["max_in_flight"] != 9:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert f"change {request} approved" not in decide(alan, request, "approve")  # once

    # Asked, then the section forgotten (the file's put in force again): the request lapses.
    asked = ask(session, frontend_in_flight=form["frontend_in_flight"], version=str(kept["version"]))
    assert asked.status_code == 303, asked.text
    forget = [sys.executable, "-m", "switch.cli", "config", "forget", "--section", "limits"]
    forget += ["--config", str(console.config)]
    forgotten = subprocess.run(forget, env=console.switch.env, capture_output=True, text=True, timeout=60)
    assert forgotten.returncode == 0, forgotten.stderr
    assert f"no change {request + 1} awaits approval" in decide(alan, request + 1, "approve") and limits() is None
    # Asked over the file's limits (no version to tell them by), then the file's edited: it lapses.
    assert ask(session, frontend_in_flight="7", version="0").status_code == 303
    text = console.config.read_text()
    console.config.write_text(text.replace("notices_per_s = 200", "notices_per_s = 150", 1))
    try:
        assert "limits changed since it was asked" in decide(alan, request + 2, "approve") and limits() is None
    finally:
        console.config.write_text(text)
    # Asked, and left longer than change_max_hours: it lapses. Then one rejected.
    assert ask(session, frontend_in_flight="7", version="0").status_code == 303
    sql(database_url, "UPDATE config_change SET asked_at = now() - interval '25 hours' WHERE id = $1", request + 3)
    assert "asked more than 24 hours ago" in decide(alan, request + 3, "approve") and limits() is None
    assert ask(session, frontend_in_flight="7", version="0").status_code == 303
    assert f"change {request + 4} rejected" in decide(alan, request + 4, "reject") and limits() is None
    outcomes = sql(database_url, "SELECT decided_by, outcome FROM config_change WHERE id >= $1 ORDER BY id", request)
    assert [(r["decided_by"], r["outcome"].split(":")[0]) for r in outcomes] == [
        ("alan", "ok"), ("cli:" + getpass.getuser(), "lapsed"), ("alan", "lapsed"), ("alan", "lapsed"),
        ("alan", "rejected"),
    ]  # fmt: skip
    # Each decision audited on its request, with who asked and the versions.
    approval = json.loads(sql(database_url, "SELECT after::text FROM console_audit WHERE action = 'config.approve' "
                              "AND target = $1 AND outcome = 'ok'", str(request))[0][0])  # fmt: skip
    assert approval == {"request": request, "asked_by": "ada", "section": "limits", "change": "channel.limits ecny",
                        "seen": int(version), "version": kept["version"]}  # fmt: skip
    assert audit_count(database_url, "config.lapse") >= 3 and audit_count(database_url, "config.reject") >= 1
    # The journal holds the decisions to it, whoever writes: once, and never by the one who asked.
    with pytest.raises(asyncpg.CheckViolationError, match="decided already"):
        sql(database_url, "UPDATE config_change SET decided_at = NULL WHERE id = $1", request)
    assert ask(session, frontend_in_flight="7", version="0").status_code == 303
    with pytest.raises(asyncpg.CheckViolationError, match="config_change_two_people"):
        sql(database_url, "UPDATE config_change SET decided_by = 'ada', decided_at = now(), outcome = 'ok' "
            "WHERE id = $1", request + 5)  # fmt: skip
    assert f"change {request + 5} withdrawn" in decide(session, request + 5, "reject")
    changes = session.get(f"{console.base}/changes").text
    assert f'id="approve-{request}"' not in changes and "none" in changes  # nothing waits


def test_an_admin_edits_the_risk_rules_live_and_the_file_takes_over_again(console, database_url):
    import html

    merchant, terminal = GRAY_MERCHANTS[-1]  # on UnionPay, never gray-routed

    def big() -> dict:
        return new_purchase("unionpay", terminal=terminal, merchant=merchant, amount=5_000)

    session, _ = signed_in(console, "ada")
    assert answer_of(console.switch, big()) == "00"
    page = session.get(f"{console.base}/risk").text
    text = html.unescape(re.search(r'<textarea name="rules"[^>]*>(.*?)</textarea>', page, re.S).group(1))
    version = re.search(r'action="/risk/rules".*?name="version" value="(\d+)"', page, re.S).group(1)
    token = csrf(session, console)
    assert '[[rule]]\nkind = "amount"\nid = "single-payment-cap"' in text  # the file's rules, as TOML
    cap = f'id = "console-cap"\nkind = "amount"\nmax_fen = 4000\nscope = {{ terminal = "{terminal}" }}\n'
    capped = f"{text}\n[[rule]]\n{cap}"
    unknown = capped.replace(f'terminal = "{terminal}"', 'terminal = "Z9999999"')
    refused = session.post(f"{console.base}/risk/rules", data={"csrf": token, "version": version, "rules": unknown})
    said = html.unescape(refused.text)
    assert refused.status_code == 400 and "scope.terminal: 'Z9999999' is not in the switch configuration" in said
    assert not sql(database_url, "SELECT 1 FROM live_config WHERE section = 'rules'")  # nothing kept
    emptied = session.post(f"{console.base}/risk/rules", data={"csrf": token, "version": version, "rules": ""})
    assert emptied.status_code == 400 and "none are left" in emptied.text  # an empty form is not "no rules"
    saved = session.post(f"{console.base}/risk/rules", data={"csrf": token, "version": version, "rules": capped})
    assert saved.status_code == 200 and "risk rules: change asked" in saved.text and "console-cap" not in saved.text
    approved(console, database_url, saved)
    assert "console-cap" in session.get(f"{console.base}/risk").text
    until_answered(console.switch, big, "61")  # over the new cap, in every front end within seconds
    small = new_purchase("unionpay", terminal=terminal, merchant=merchant, amount=3_000)
    assert answer_of(console.switch, small) == "00"
    rows = sql(database_url, "SELECT user_name, outcome FROM console_audit WHERE action = 'risk.rules' "
               "AND (outcome = 'ok' OR outcome LIKE 'awaiting %') ORDER BY id")  # fmt: skip
    assert [(r["user_name"], r["outcome"].split(":")[0]) for r in rows] == [("ada", CHANGE_AWAITING), ("alan", "ok")]
    forgotten = subprocess.run(
        [sys.executable, "-m", "switch.cli", "config", "forget", "--section", "rules", "--config", str(console.config)],
        env=console.switch.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert forgotten.returncode == 0 and "rules: the file's" in forgotten.stdout, forgotten.stderr
    until_answered(console.switch, big, "00")  # the rules file's again


def test_an_admin_adds_a_terminal_and_suspends_it_and_its_reversals_are_still_taken(console, database_url):
    from bench.traffic import reversal
    from tests.support import STANS

    merchant, _ = GRAY_MERCHANTS[-1]
    new_id = "N0000001"

    def from_new() -> dict:
        return new_purchase("unionpay", terminal=new_id, merchant=merchant)

    assert answer_of(console.switch, from_new()) == "03"  # not a terminal yet
    session, _ = signed_in(console, "ada")
    token = csrf(session, console)
    version = sql(database_url, "SELECT version FROM live_config WHERE section = 'terminals'")
    seen = str(version[0][0] if version else 0)
    form = {"csrf": token, "version": seen, "id": new_id, "merchant": merchant, "mac_algorithm": "x9.19"}
    refused = session.post(f"{console.base}/terminals/new", data=form | {"id": "N01"})
    assert refused.status_code == 400 and "a terminal id is 8 letters or digits" in refused.text
    created = session.post(f"{console.base}/terminals/new", data=form, allow_redirects=False)
    approved(console, database_url, created)
    until_answered(console.switch, from_new, "00")
    paid, later = from_new(), from_new()
    assert answer_of(console.switch, paid) == "00" and answer_of(console.switch, later) == "00"

    def edit(**fields: str) -> None:
        version = sql(database_url, "SELECT version FROM live_config WHERE section = 'terminals'")[0][0]
        saved = session.post(f"{console.base}/terminals/{new_id}", data=form | {"version": str(version), **fields},
                             allow_redirects=False)  # fmt: skip
        approved(console, database_url, saved)

    edit(suspended="on")
    until_answered(console.switch, from_new, "57")
    # The purchase made before, sent again (its answer lost): its first answer, not 57.
    assert answer_of(console.switch, paid) == "00"
    # A reversal undoes what the terminal did before it was suspended: it is still taken.
    assert answer_of(console.switch, reversal(paid, STANS.next(new_id))) == "00"
    elsewhere = GRAY_MERCHANTS[-2][0]  # and moved to another merchant: still taken
    edit(suspended="on", merchant=elsewhere)
    until_answered(console.switch, lambda: new_purchase("unionpay", terminal=new_id, merchant=elsewhere), "57")
    assert answer_of(console.switch, reversal(later, STANS.next(new_id))) == "00"
    assert "SUSPENDED" in session.get(f"{console.base}/terminals").text
    audited = sql(database_url, "SELECT action, after::text FROM console_audit WHERE target = $1 "
                  "AND outcome = 'ok' ORDER BY id", new_id)  # fmt: skip
    assert [a for a, _ in audited] == ["terminal.create", "terminal.edit", "terminal.edit"]
    assert json.loads(audited[1][1])["suspended"] and json.loads(audited[2][1])["merchant"] == elsewhere


def test_a_purchase_owing_a_reversal_says_so_beside_its_state(console):
    """A purchase whose reversal was acknowledged is APPROVED until the money is back (here never:
    the channel refuses any cancel, and a person is to give it back): the list and its page say
    the reversal is owed, not a bare APPROVED an operator would read as paid. One paid says nothing."""
    from bench.traffic import reversal
    from tests.support import STANS

    async def scenario() -> tuple[str, str]:
        purchase = new_purchase("unionpay", "07")
        async with connected(console.switch) as client:
            owed = await client.request(purchase)
            answer = await client.request(reversal(purchase, STANS.next(purchase["41"])))
            paid = await client.request(new_purchase("unionpay"))
        assert (owed["39"], answer["39"], paid["39"]) == ("00", "00", "00")
        return owed["37"], paid["37"]

    owed, paid = run(scenario())
    session, _ = signed_in(console, "vera")
    for rrn, says in ((owed, True), (paid, False)):
        listed = session.get(f"{console.base}/transactions", params={"rrn": rrn}).text
        assert rrn in listed and "APPROVED" in listed
        assert ("reversal owed" in listed) is says
        page = session.get(f"{console.base}/transactions/{rrn}").text
        assert ('id="owed">reversal owed<' in page) is says


def test_a_days_settlement_file_is_the_one_paysw_settle_writes(console, database_url, tmp_path):
    import datetime as dt

    today = dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).date()
    settled = subprocess.run(
        [sys.executable, "-m", "switch.cli", "settle", "--date", str(today), "--out-dir", str(tmp_path),
         "--config", str(console.config)],
        env=console.switch.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert settled.returncode in (0, 1), settled.stderr  # 1: a totals mismatch, still written
    written = (tmp_path / f"settlement-{today}.csv").read_bytes()
    session, _ = signed_in(console, "vera")
    page = session.get(f"{console.base}/settlement").text
    assert f'href="/settlement/settlement-{today}.csv"' in page or "none yet" in page
    got = session.get(f"{console.base}/settlement/settlement-{today}.csv")
    assert got.status_code == 200 and got.headers["Content-Type"].startswith("text/csv")
    assert got.content == written  # byte for byte
    assert requests.get(f"{console.base}/settlement/settlement-{today}.csv", allow_redirects=False).status_code == 303


def test_a_reopened_dead_letter_is_listed_when_it_was_reopened_with_what_came_before(console, database_url):
    """A dead letter the resolver reopened (given up on again after a person resolved it) is on
    the open list at the time it was reopened, and its reason still says what the person did; a
    viewer reads it and cannot resolve it."""
    before = "refused again (given up on before, at UNKNOWN: unresolved; resolved 2026-01-02: refunded by hand)"
    rrn = _dead_letter(database_url, before, reopened=True)
    session, status = signed_in(console, "vera")
    assert status == 303
    page = session.get(f"{console.base}/dead-letters").text
    row = next(line for line in page.splitlines() if rrn in line)
    assert "refunded by hand" in row and "2026-01-01" not in row  # listed when reopened, not first given up
    assert f"/dead-letters/{rrn}/resolve" not in page


def resolve_letter(console, rrn: str, resolution: str, action: str = "resolve", who: str = "otto") -> str:
    session, status = signed_in(console, who)
    assert status == 303
    answer = session.post(
        f"{console.base}/dead-letters/{rrn}/{action}", data={"csrf": csrf(session, console), "resolution": resolution}
    )
    assert answer.status_code == 200
    return answer.text


def request_read(console, rrn: str, who: str) -> str:
    """The hand-back request ``who`` reads on its approve page (its id, which the approval sends)."""
    session, _ = signed_in(console, who)
    page = session.get(f"{console.base}/dead-letters/{rrn}/retry").text
    return re.search(r'name="request" value="(\d+)"', page).group(1)


def approve(console, rrn: str, who: str, read: str) -> str:
    session, _ = signed_in(console, who)
    data = {"csrf": csrf(session, console), "request": read}
    return session.post(f"{console.base}/dead-letters/{rrn}/approve", data=data).text


def hand_backs(database_url: str, rrn: str) -> list[tuple]:
    """Each hand-back asked or decided of ``rrn``: who, the outcome, who asked it."""
    rows = sql(database_url, "SELECT user_name, outcome, before->>'asked_by' FROM console_audit "
               "WHERE action = 'dead_letter.retry' AND target = $1 ORDER BY at", rrn)  # fmt: skip
    return [tuple(row) for row in rows]


def test_a_dead_letter_is_handed_back_only_once_another_operator_approves(console, database_url):
    """four_eyes (the default): one operator asks, nothing is done; the same one cannot approve
    (nor ask twice); another approves, and the hand-back is tried then, with the reason asked, and
    audited with who asked; or rejects it."""
    rrn = _dead_letter(database_url)
    asked = resolve_letter(console, rrn, "the channel is back", action="retry", who="otto")
    assert f"{rrn}: handing back asked; another operator approves it on this page" in asked
    assert f"{rrn}: handing back awaits approval already (asked by otto)" in resolve_letter(
        console, rrn, "again", action="retry", who="ada"
    )
    asked_id = request_read(console, rrn, "ada")  # the approve page shows the request: its id goes back with it
    assert "approved by another operator than the one who asked" in approve(console, rrn, "otto", asked_id)
    assert "a hand-back awaits approval: approve or reject it first" in resolve_letter(console, rrn, "paid back")
    assert hand_backs(database_url, rrn) == [("otto", AWAITING, None)]  # nothing done yet
    approved = approve(console, rrn, "ada", asked_id)  # tried: its transaction is not in this journal
    assert f"no open dead letter {rrn} to be handed back" in approved and f'id="retry-{rrn}"' in approved
    assert hand_backs(database_url, rrn) == [("otto", AWAITING, None), ("ada", "no open dead letter", "otto")]
    assert f"{rrn}: no handing back awaits approval" in approve(console, rrn, "ada", asked_id)
    resolve_letter(console, rrn, "once more", action="retry", who="ada")
    stale = request_read(console, rrn, "otto")
    resolve_letter(console, rrn, "", "reject", who="ada")  # withdrawn, and asked again with another reason
    resolve_letter(console, rrn, "for another reason", action="retry", who="ada")
    assert "is not the one you read: read it again" in approve(console, rrn, "otto", stale)
    assert f"{rrn}: handing back rejected" in resolve_letter(console, rrn, "", "reject", who="otto")
    assert hand_backs(database_url, rrn)[-2:] == [("ada", AWAITING, None), ("otto", "rejected", "ada")]
    assert sql(database_url, "SELECT resolved_at FROM dead_letter WHERE rrn = $1", rrn)[0][0] is None


def test_without_four_eyes_one_operator_hands_a_dead_letter_back_and_the_console_says_so(console, database_url):
    """A console with ``four_eyes = false`` (a bank's choice) hands back at the one operator's word,
    and keeps an admin's change of the configuration at once, audited as before; it warns of it
    at start."""
    alone = ConsoleProcess(console.switch, Path(console.log.name).parent, "console-alone", "four_eyes = false\n")
    alone.start()
    try:
        rrn = _dead_letter(database_url)
        page = resolve_letter(alone, rrn, "the channel is back", action="retry")
        assert f"no open dead letter {rrn} to be handed back to the resolver" in page  # tried at once
        assert hand_backs(database_url, rrn) == [("otto", "no open dead letter", None)]
        session, _ = signed_in(alone, "ada")
        page = session.get(f"{alone.base}/limits/ecny").text
        form = dict(re.findall(r'<input name="([a-z_.]+)" id="[^"]*" value="([^"]*)"', page))
        version = re.search(r'name="version" value="(\d+)"', page).group(1)
        form |= {"csrf": csrf(session, alone), "version": version, "frontend_in_flight": "5"}
        saved = session.post(f"{alone.base}/limits/ecny", data=form)
        assert "limits and breaker saved: every front end applies them now" in saved.text
        kept = sql(database_url, "SELECT body, changed_by FROM live_config WHERE section = 'limits'")[0]
        assert json.loads(kept["body"])["ecny"]["frontend_in_flight"] == 5 and kept["changed_by"] == "console:ada"
    finally:
        alone.stop()
        run(_forget_live_configuration(database_url))
    alone.log.flush()
    assert "four_eyes is off" in Path(alone.log.name).read_text()
    assert not sql(database_url, "SELECT 1 FROM config_change WHERE asked_at > now() - interval '1 minute' "
                   "AND section = 'limits' AND decided_at IS NULL")  # fmt: skip


def test_a_dead_letter_whose_transaction_is_no_longer_open_is_not_handed_back(console, database_url):
    """Trying again a transaction that is not the resolver's to settle (final since, or not in this
    journal) is refused and audited once approved, and its letter stays open for a person."""
    rrn = _dead_letter(database_url)
    refused = audit_count(database_url, "dead_letter.retry", "no open dead letter")
    resolve_letter(console, rrn, "the channel is back", action="retry")
    page = approve(console, rrn, "ada", request_read(console, rrn, "ada"))
    assert f"no open dead letter {rrn} to be handed back" in page
    assert f'id="retry-{rrn}"' in page  # still listed, still open
    assert audit_count(database_url, "dead_letter.retry", "no open dead letter") == refused + 1
    assert sql(database_url, "SELECT resolved_at FROM dead_letter WHERE rrn = $1", rrn)[0][0] is None


def test_a_dead_letter_resolved_twice_or_with_nothing_said_is_refused_and_a_card_number_is_masked(
    console, database_url
):
    rrn = _dead_letter(database_url)
    page = resolve_letter(console, rrn, "   ")
    assert "say what was done, or why it is tried again" in page and f"/dead-letters/{rrn}/resolve" in page
    resolve_letter(console, rrn, "refunded at the counter to card 6222 0212 3456 7890 123")
    kept = sql(database_url, "SELECT resolution FROM dead_letter WHERE rrn = $1", rrn)[0][0]
    assert kept == "refunded at the counter to card 622202*********0123"
    refused = audit_count(database_url, "dead_letter.resolve", "no open dead letter")
    assert f"no open dead letter {rrn} to be resolved" in resolve_letter(console, rrn, "again")
    assert audit_count(database_url, "dead_letter.resolve", "no open dead letter") == refused + 1
    assert sql(database_url, "SELECT resolution FROM dead_letter WHERE rrn = $1", rrn)[0][0] == kept
