"""One channel simulator: an HTTP server for one channel's pay, query, cancel and refund calls.

It checks the switch's signature with the switch's key (a bad one gets the channel's own error
answer), decides a payment's outcome from its payment code (``outcomes``), keeps a ledger of
what it charged, closed and reversed (a resent order gets its first outcome; a late pay for a
cancelled order is refused), and signs its answers with the channel's key.

QR orders (the customer scans the merchant's code): a precreate makes an order nobody has paid
(NOTPAY) and answers its code; ``POST /_sim/scan`` on the control address is the customer
scanning and paying it, after which the channel POSTs its notification to the order's
``notify_url`` on the channel's own retry schedule (``ChannelSide.notice_schedule_s``, times
``notice_scale``) until it is acknowledged; the faults ``notice_drop`` and ``notice_twice`` lose
or repeat some.

Its control address (``control_listen``, by default the channel's port + 100) serves
``/_sim/fault`` (``bench.simulators.faults``: faults switched on and off at run time);
``/_sim/stats``, what it saw; ``/_sim/ledger``, the ledger, for comparing with the switch's
journal; and with an audit database URL, ``/_sim/audit``, for each pay request whether the
switch's journal row already existed when it arrived (the write-ahead invariant, observed from
the channel's side). The ``/_sim`` reads are on the channel address too.

The channel address is served by ``bench.simulators.http`` (the hot path under load); the
control address by aiohttp.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import itertools
import math
import random
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated

import asyncpg
import msgspec
from aiohttp import ClientError, ClientSession, ClientTimeout, web
from msgspec import Meta, Struct

from bench.simulators import http
from bench.simulators.faults import FAULT_DECODER, NO_FAULT, Fault
from bench.simulators.http import CUT, HALF, JSON, TEXT, Reply, Request
from bench.simulators.outcomes import Ledger, Order, drops_answer, is_slow
from bench.simulators.side import ChannelVerdict, Paid, RequestSeen, StatementAsk, side_of
from bench.simulators.statement_faults import NO_STATEMENT_FAULTS, STATEMENT_FAULTS_DECODER, spoil
from hsm import algorithms
from protocols.channels.base import HttpAnswer
from protocols.messages import CANCEL, CLOSE, PAY, PRECREATE, REFUND
from protocols.statements import CST


class SimulatorKeys(Struct, forbid_unknown_fields=True, kw_only=True):
    """The channel's side of the keys, as clear files (a simulator plays the other party)."""

    sign_algorithm: str
    sign_key: str  # the channel's own key
    verify_algorithm: str
    verify_key: str  # the switch's key (public, or the shared secret)
    zpk: str = ""  # card channels: the zone PIN key (hex) PIN blocks arrive under
    seal_key: str = ""  # e-CNY: the SM4 data key (hex) payment codes arrive under


class SimulatorSection(Struct, forbid_unknown_fields=True, kw_only=True):
    kind: str
    listen: Annotated[str, Meta(pattern=r"^[^:\s]+:\d{1,5}$")]
    control_listen: Annotated[str, Meta(pattern=r"^([^:\s]+:\d{1,5})?$")] = ""  # "": channel port + 100
    latency_ms: Annotated[float, Meta(ge=0)] = 2.0  # from a request's arrival to its answer, the work inside it
    slow_ms: Annotated[float, Meta(ge=0)] = 3000.0
    paying_ms: Annotated[float, Meta(ge=0)] = 8000.0  # how long a "user paying" customer takes
    keys: SimulatorKeys
    card_pin: str = "123456"  # the PIN every test card has, checked when a PIN block comes
    fee_per_10000: Annotated[int, Meta(ge=0)] = 60  # the channel's fee on each payment (60 = 0.60 %)
    notice_scale: Annotated[float, Meta(gt=0)] = 1.0  # the notification retry schedule's times this (tests: 0.01)


def control_address(section: SimulatorSection) -> str:
    if section.control_listen:
        return section.control_listen
    host, _, port = section.listen.rpartition(":")
    return f"{host}:{int(port) + 100}"


class SimulatorConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    simulators: dict[str, SimulatorSection]
    base_dir: str = ""


def load_simulator_config(path: str) -> SimulatorConfig:
    from switch.config import ConfigError

    p = Path(path)
    try:
        config = msgspec.toml.decode(p.read_bytes(), type=SimulatorConfig)
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror}") from None
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ConfigError(f"{p}: {exc}") from None
    return msgspec.structs.replace(config, base_dir=str(p.resolve().parent))


class Simulator:
    def __init__(self, name: str, section: SimulatorSection, base_dir: str, audit_dsn: str = "") -> None:
        self.name = name
        self.side = side_of(section.kind)
        self._fee_per_10000 = section.fee_per_10000
        self.statement_faults = NO_STATEMENT_FAULTS
        self._bill_files: dict[str, bytes] = {}
        keys, base = section.keys, Path(base_dir)
        self._sign = algorithms.signer(keys.sign_algorithm, (base / keys.sign_key).read_bytes())
        self._verify = algorithms.verifier(keys.verify_algorithm, (base / keys.verify_key).read_bytes())
        self._zpk = bytes.fromhex((base / keys.zpk).read_text().strip()) if keys.zpk else b""
        self._dek = bytes.fromhex((base / keys.seal_key).read_text().strip()) if keys.seal_key else b""
        self._card_pin = section.card_pin
        self._latency = section.latency_ms / 1000
        self._slow = section.slow_ms / 1000
        self.ledger = Ledger(section.paying_ms / 1000)
        self._notice_scale = section.notice_scale
        self._qr_orders: dict[str, RequestSeen] = {}  # out_trade_no -> its precreate request
        self._notifying: set[asyncio.Task[None]] = set()
        self._client: ClientSession | None = None
        self._ids = itertools.count(1)
        self.stats: Counter[str] = Counter()
        self._audit_dsn = audit_dsn
        self._audit_pool: asyncpg.Pool | None = None
        self.audit: list[dict[str, object]] = []
        self.fault: Fault = NO_FAULT
        self._released = asyncio.Event()
        self._released.set()
        self._reads: dict[str, Callable[[], object]] = {
            "/_sim/stats": lambda: dict(self.stats),
            "/_sim/ledger": self.ledger.snapshot,
            "/_sim/audit": lambda: self.audit,
        }
        self._route: dict[tuple[str, str], Callable[[Request], Reply | Awaitable[Reply]]] = {
            ("POST", path): self.handle for path in self.side.paths
        }
        self._route.update((("GET", path), self._read) for path in self._reads)

    def answer(self, request: Request) -> Reply | Awaitable[Reply]:
        """The channel address: its APIs, the statement files, the ``/_sim`` reads."""
        route = self._route.get((request.method, request.path))
        if route is not None:
            return route(request)
        if request.method == "GET" and request.path.startswith("/_bill/"):
            return self.bill_file(request.path.removeprefix("/_bill/"))
        if any(path == request.path for _, path in self._route):
            return Reply(405, b"method not allowed", TEXT)
        return Reply(404, b"not found", TEXT)

    def control_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/_sim/fault", self.get_fault)
        app.router.add_post("/_sim/fault", self.set_fault)
        app.router.add_post("/_sim/statement-faults", self.set_statement_faults)
        app.router.add_post("/_sim/scan", self.scan)
        for path in self._reads:
            app.router.add_get(path, self._control_read)
        return app

    def _read(self, request: Request) -> Reply:
        return Reply(200, msgspec.json.encode(self._reads[request.path]()), JSON)

    async def _control_read(self, request: web.Request) -> web.Response:
        return _json(self._reads[request.path]())

    async def serve(self, listen: str, control_listen: str) -> None:
        """Serve the channel and its control address until cancelled."""
        if self._audit_dsn:
            self._audit_pool = await asyncpg.create_pool(self._audit_dsn, min_size=1, max_size=4)
        control = web.AppRunner(self.control_app(), access_log=None)
        await control.setup()
        self._listen = listen
        await self._open_channel()
        host, _, port = control_listen.rpartition(":")
        await web.TCPSite(control, host, int(port)).start()
        self._client = ClientSession(timeout=ClientTimeout(total=10))
        try:
            await asyncio.Event().wait()
        finally:
            self._channel.close()
            for task in self._notifying:
                task.cancel()
            await self._client.close()
            await control.cleanup()
            if self._audit_pool is not None:
                await self._audit_pool.close()

    async def _open_channel(self) -> None:
        host, _, port = self._listen.rpartition(":")
        self._channel = await http.listen(self.answer, host, int(port))

    async def get_fault(self, _: web.Request) -> web.Response:
        return _json(msgspec.structs.asdict(self.fault))

    async def set_fault(self, request: web.Request) -> web.Response:
        try:
            fault = FAULT_DECODER.decode(await request.read() or b"{}")
        except msgspec.DecodeError as exc:  # ValidationError included
            return _json({"error": str(exc)}, status=400)
        was_refusing = self.fault.refuse
        self.fault = fault
        if fault.hang:
            self._released.clear()
        else:
            self._released.set()  # hung requests go, unanswered
        if fault.refuse and not was_refusing:
            self._channel.close()  # open connections stay; their next request is cut
        elif was_refusing and not fault.refuse:
            await self._open_channel()
        print(f"simulator {self.name}: fault {fault.describe()}", flush=True)
        return _json(msgspec.structs.asdict(fault))

    def handle(self, request: Request) -> Reply | Awaitable[Reply]:
        fault = self.fault
        if fault.refuse or fault.reset:
            self.stats["fault:cut"] += 1
            return Reply(0, ending=CUT)
        if fault.hang:
            self.stats["fault:hung"] += 1
            return self._hang()
        if fault.error_rate and random.random() < fault.error_rate:
            self.stats["fault:error"] += 1
            return Reply(500, b"Internal Server Error", TEXT)
        if fault.unread:
            self.stats["fault:unread"] += 1
            return _reply(self.side.write_error("fault: request refused unread", self._sign))
        seen = self.side.read(request.path, request.body, request.headers, self._verify)
        if isinstance(seen, StatementAsk):
            return _reply(self._statement(request, seen))
        if self._dek and isinstance(seen, RequestSeen) and seen.auth_code:
            seen = self._decrypt_code(seen)
        if isinstance(seen, str):
            self.stats["rejected"] += 1
            return _reply(self.side.write_error(seen, self._sign))
        self.stats[seen.op] += 1
        if seen.op == PAY and self._audit_pool is not None:
            return self._audited(seen, fault)
        return self._act(seen, fault)

    async def _hang(self) -> Reply:
        await self._released.wait()
        return Reply(0, ending=CUT)

    async def _audited(self, seen: RequestSeen, fault: Fault) -> Reply:
        await self._record_audit(seen)
        return self._act(seen, fault)

    def _act(self, seen: RequestSeen, fault: Fault) -> Reply:
        """Do what ``seen`` asks to the ledger and answer it, after the channel's latency."""
        if seen.op == PAY:
            delay = self._latency + (self._slow if is_slow(seen.auth_code) else 0.0)
            if seen.pin_block and not self._pin_matches(seen):
                verdict = ChannelVerdict("DECLINED")  # wrong PIN: refused, nothing charged
            else:
                order = self.ledger.pay(seen.out_trade_no, seen.auth_code, seen.amount_fen, self._transaction_id())
                verdict = ChannelVerdict(_pay_verdict(order), order.channel_txn_id)
        elif seen.op == REFUND:
            verdict = ChannelVerdict(
                self.ledger.refund(seen.out_trade_no, seen.refund_no, seen.amount_fen), self._transaction_id()
            )
            delay = self._latency
        elif seen.op == CANCEL:
            verdict = ChannelVerdict(self.ledger.cancel(seen.out_trade_no))
            delay = self._latency
        elif seen.op == PRECREATE:
            verdict, delay = self._precreate(seen), self._latency
        elif seen.op == CLOSE:
            verdict = ChannelVerdict(self.ledger.close(seen.out_trade_no, self.side.closes_unscanned))
            delay = self._latency
        else:
            order = self.ledger.query(seen.out_trade_no)
            verdict = ChannelVerdict(_query_verdict(order), order.channel_txn_id if order else "")
            delay = self._latency
        self.stats[f"{seen.op}:{verdict.status}"] += 1
        delay += fault.latency_ms / 1000
        if seen.op == PAY and drops_answer(seen.auth_code):
            return Reply(0, delay=delay, ending=CUT)  # charged, but the answer is lost on the way
        answer = self.side.write(seen, verdict, self._sign)
        if fault.partial:
            self.stats["fault:partial"] += 1
            return _reply(answer, delay, ending=HALF)
        return _reply(answer, delay)

    def _precreate(self, seen: RequestSeen) -> ChannelVerdict:
        notify_url, expires_at = str(seen.fields.get("notify_url", "")), float(seen.fields.get("expires_at", 0))
        qr_code = self.side.qr_prefix + secrets.token_urlsafe(12)
        order = self.ledger.precreate(seen.out_trade_no, seen.amount_fen, qr_code, notify_url, expires_at or math.inf)
        self._qr_orders.setdefault(seen.out_trade_no, seen)
        return ChannelVerdict("CREATED", qr_code=order.qr_code)

    async def scan(self, request: web.Request) -> web.Response:
        """The customer scans a QR order's code (``{"qr_code": ...}`` or ``{"out_trade_no": ...}``)
        and pays: ``{"status": "PAID", ...}`` and its notifications start; or why not."""
        try:
            ask = msgspec.json.decode(await request.read(), type=dict[str, str])
        except msgspec.DecodeError as exc:
            return _json({"error": str(exc)}, status=400)
        out_trade_no = ask.get("out_trade_no") or next(
            (no for no, seen in self._qr_orders.items() if self.ledger.query(no).qr_code == ask.get("qr_code")), ""
        )
        paid = self.ledger.scan(out_trade_no, self._transaction_id())
        if isinstance(paid, str):
            self.stats[f"scan:{paid}"] += 1
            return _json({"status": paid, "out_trade_no": out_trade_no}, status=409)
        self.stats["scan:PAID"] += 1
        notice = Paid(paid.channel_txn_id, paid.amount_fen, paid.created_at)
        task = asyncio.get_running_loop().create_task(self._notify(self._qr_orders[out_trade_no], notice, self.fault))
        self._notifying.add(task)
        task.add_done_callback(self._notifying.discard)
        return _json({"status": "PAID", "out_trade_no": out_trade_no, "channel_txn_id": paid.channel_txn_id})

    async def _notify(self, order: RequestSeen, paid: Paid, fault: Fault) -> None:
        """POST the order's notification until acknowledged, on the channel's schedule; the first
        ``notice_drop`` attempts are lost on the way, and with ``notice_twice`` each goes twice."""
        assert self._client is not None
        notification = self.side.notice(order, paid, self._sign)
        url = str(order.fields.get("notify_url", ""))
        for attempt, wait in enumerate((0.0, *self.side.notice_schedule_s)):
            await asyncio.sleep(wait * self._notice_scale)
            if attempt < fault.notice_drop:
                self.stats["notice:dropped"] += 1
                continue
            for _ in range(2 if fault.notice_twice else 1):
                self.stats["notice:sent"] += 1
                try:
                    headers = {"Content-Type": notification.content_type}
                    async with self._client.post(url, data=notification.body, headers=headers) as answer:
                        acked = self.side.notice_acked(answer.status, await answer.read())
                except (TimeoutError, OSError, ClientError):
                    acked = False
            if acked:
                self.stats["notice:acked"] += 1
                return
        self.stats["notice:given_up"] += 1

    async def _record_audit(self, seen: RequestSeen) -> None:
        assert self._audit_pool is not None
        state = await self._audit_pool.fetchval("SELECT state FROM txn WHERE out_trade_no = $1", seen.out_trade_no)
        self.audit.append({"out_trade_no": seen.out_trade_no, "journal_state": state, "at": time.time()})

    def _transaction_id(self) -> str:
        return f"{self.name[:2].upper()}{time.strftime('%Y%m%d')}{next(self._ids):012d}"

    def _statement(self, request: Request, ask: StatementAsk) -> HttpAnswer:
        """The statement of the day asked for, from the ledger, with any discrepancies ordered."""
        start = dt.datetime.combine(ask.day, dt.time(), CST).timestamp()
        rows = self.ledger.statement(start, start + 86400, self._fee_per_10000)
        rows = spoil(rows, self.statement_faults, ask.day)
        content = self.side.statement(rows, ask)
        token = secrets.token_hex(16)
        self._bill_files[token] = content
        self.stats["bill"] += 1
        host = request.headers.get("host") or self._listen
        return self.side.write_statement(content, self._sign, f"http://{host}/_bill/{token}")

    def bill_file(self, token: str) -> Reply:
        content = self._bill_files.pop(token, None)
        if content is None:
            return Reply(404, b"no such file", TEXT)
        return Reply(200, content, {"Content-Type": "application/zip"})

    async def set_statement_faults(self, request: web.Request) -> web.Response:
        try:
            self.statement_faults = STATEMENT_FAULTS_DECODER.decode(await request.read() or b"{}")
        except msgspec.DecodeError as exc:
            return _json({"error": str(exc)}, status=400)
        return _json(msgspec.structs.asdict(self.statement_faults))

    def _decrypt_code(self, seen: RequestSeen) -> RequestSeen | str:
        try:
            code = algorithms.sm4_cbc_decrypt(self._dek, bytes.fromhex(seen.auth_code)).decode("ascii")
        except (ValueError, UnicodeDecodeError):
            return "付款码解密失败"  # the payment code did not decrypt under the data key
        self.stats["code:decrypted"] += 1
        return dataclasses.replace(seen, auth_code=code)

    def _pin_matches(self, seen: RequestSeen) -> bool:
        """Decrypt the PIN block under the zone PIN key, as the card issuer would: it only reads
        right if the switch translated it from the terminal's PIK."""
        try:
            clear = algorithms.tdes_ecb_decrypt(self._zpk, bytes.fromhex(seen.pin_block))
            matches = algorithms.pin_of_block(clear, seen.auth_code) == self._card_pin
        except ValueError:
            matches = False
        self.stats["pin:ok" if matches else "pin:wrong"] += 1
        return matches


def _pay_verdict(order: Order) -> str:
    if order.status == "PAID":
        return "SYSTEMERROR" if order.pay_verdict == "SYSTEMERROR" else "SUCCESS"
    if order.status in ("PAYING", "NOTPAY"):
        return "USERPAYING"
    if order.status == "FAILED":
        return order.pay_verdict
    return "ORDERCLOSED"  # closed or reversed before this pay arrived


def _query_verdict(order: Order | None) -> str:
    if order is None:
        return "NOTEXIST"
    return {"PAID": "PAID", "PAYING": "PAYING", "NOTPAY": "NOTPAY"}.get(order.status, "CLOSED")


def _reply(answer: HttpAnswer, delay: float = 0.0, ending: str = http.SEND) -> Reply:
    return Reply(answer.status, answer.body, answer.headers, delay, ending)


def _json(value: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=msgspec.json.encode(value), content_type="application/json")
