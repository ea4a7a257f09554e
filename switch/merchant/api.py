"""The merchants' HTTP API and the channels' notifications, on the merchant listener
(``[merchant_api] listen``); described by ``docs/merchant-api.json``.

- ``POST /v1/orders``: a QR order (``scene = "qr"``), answering the code the customer scans; or
  a payment by the code the customer presents (``scene = "code"``, ``auth_code``), through the
  steps of a terminal's 0200.
- ``GET /v1/orders/{order_no}``: the order as the journal has it.
- ``POST /v1/orders/{order_no}/close``: close it unpaid.
- ``POST /v1/orders/{order_no}/refunds``, ``GET /v1/orders/{order_no}/refunds/{refund_no}``: a
  refund, through the steps of a terminal's refund (what is left to refund reserved as it is
  written), and how it stands.
- ``POST /notify/{channel}``: a channel's payment notification (``switch.merchant.notices``).

Every merchant request is signed (``switch.merchant.signing``: its method and path, and its
parameters, the path's order number among them as ``order_no``), within the signature window of
now, with a nonce never seen before. Errors are ``{"code", "message"}`` with an HTTP status; never a traceback."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

import msgspec
from aiohttp import web
from msgspec import Meta, Struct

from protocols.channels.base import Verify
from switch.config import Merchant
from switch.journal.orders import Order, Refund, find_order, find_refund, fresh_nonce
from switch.merchant.notices import Notices
from switch.merchant.orders import CODE, QR, CodeAsk, Orders, QrAsk, Refused
from switch.merchant.settings import MerchantApiSection
from switch.merchant.signing import request_signing_input

log = logging.getLogger("paysw.merchant_api")
OrderNo = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,32}$")]
MAX_BODY = 16 * 1024
# How far ahead of the switch's clock a request's timestamp may be (a merchant's clock a little
# fast; half the window at most). Not the whole window: a nonce is kept for two windows by the
# journal's clock, and a timestamp a window ahead, read by a front end whose clock lags, outlived
# its nonce.
AHEAD_S = 30


class Signed(Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    merchant_id: Annotated[str, Meta(min_length=15, max_length=15)]
    timestamp: Annotated[int, Meta(gt=0)]  # epoch milliseconds
    nonce: Annotated[str, Meta(pattern=r"^[A-Za-z0-9]{16,64}$")]
    sign_type: str
    sign: Annotated[str, Meta(pattern=r"^[0-9A-Fa-f]{64}$")]  # HMAC-SHA256 and HMAC-SM3: 32 bytes, hex


S = TypeVar("S", bound=Signed)


class CreateOrder(Signed, forbid_unknown_fields=True, kw_only=True, frozen=True):
    order_no: OrderNo
    scene: str
    amount_fen: Annotated[int, Meta(ge=1, le=100_000_000)]
    subject: Annotated[str, Meta(min_length=1, max_length=128)]
    channel: str = ""  # qr: the channel (else the merchant's first that takes QR orders); code: by the code
    notify_url: Annotated[str, Meta(pattern=r"^(https?://\S{1,250})?$")] = ""
    expires_in_s: Annotated[int, Meta(ge=60, le=7200)] | None = None  # qr
    auth_code: Annotated[str, Meta(pattern=r"^([0-9]{10,24})?$")] = ""  # code: the customer's payment code


class RefundOrder(Signed, forbid_unknown_fields=True, kw_only=True, frozen=True):
    order_no: OrderNo
    refund_no: OrderNo
    amount_fen: Annotated[int, Meta(ge=1, le=100_000_000)]


class RefundAction(Signed, forbid_unknown_fields=True, kw_only=True, frozen=True):
    order_no: OrderNo
    refund_no: OrderNo


class OrderAction(Signed, forbid_unknown_fields=True, kw_only=True, frozen=True):
    order_no: OrderNo


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def view(order: Order) -> dict[str, Any]:
    """An order as the API shows it."""
    return {
        "merchant_id": order.merchant_id,
        "order_no": order.order_no,
        "scene": order.scene,
        "rrn": order.rrn,
        "channel": order.channel,
        "amount_fen": order.amount_fen,
        "subject": order.subject,
        "state": order.state,
        "response_code": order.response_code or "",
        "qr_code": order.qr_code or "",
        "expires_at": order.expires_at.isoformat() if order.expires_at else "",
        "channel_txn_id": order.channel_txn_id or "",
        "refunded_fen": order.refunded_fen,
        "created_at": order.received_at.isoformat(),
    }


def refund_view(refund: Refund) -> dict[str, Any]:
    return {
        "refund_no": refund.refund_no,
        "order_no": refund.order_no,
        "rrn": refund.rrn,
        "amount_fen": refund.amount_fen,
        "state": refund.state,
        "response_code": refund.response_code or "",
    }


class MerchantApi:
    def __init__(
        self, section: MerchantApiSection, merchants: list[Merchant], verifiers: dict[tuple[str, str], Verify],
        orders: Orders, notices: Notices,
    ) -> None:  # fmt: skip
        self._section = section
        self._merchants = {m.id: m for m in merchants}
        self._verifiers = verifiers  # (merchant id, sign_type) -> its key's verifier
        self._orders = orders
        self._notices = notices
        self._pool = orders.pool

    def set_merchants(self, merchants: list[Merchant]) -> None:
        """The merchants of a reloaded configuration (their keys stay those opened at start)."""
        self._merchants = {m.id: m for m in merchants}

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[_errors])
        app.router.add_post("/v1/orders", self.create)
        app.router.add_get("/v1/orders/{order_no}", self.get)
        app.router.add_post("/v1/orders/{order_no}/close", self.close)
        app.router.add_post("/v1/orders/{order_no}/refunds", self.refund)
        app.router.add_get("/v1/orders/{order_no}/refunds/{refund_no}", self.get_refund)
        app.router.add_post("/notify/{channel}", self.notify)
        return app

    async def create(self, request: web.Request) -> web.Response:
        ask, merchant = await self._signed(request, await _json_params(request), CreateOrder)
        if ask.notify_url and _origin(ask.notify_url) != _origin(merchant.notify_url):
            # The switch POSTs there: only to the host the operator configured for the merchant.
            raise ApiError(400, "INVALID_REQUEST", "notify_url: must be on the host of the merchant's configured URL")
        if ask.scene not in (QR, CODE) or (ask.scene == CODE) != bool(ask.auth_code):
            raise ApiError(400, "INVALID_REQUEST", "scene is 'qr', or 'code' with the customer's auth_code")
        try:
            if ask.scene == QR:
                qr = QrAsk(
                    ask.order_no, ask.amount_fen, ask.subject, ask.channel, ask.notify_url, ask.expires_in_s or 0
                )
                order = await self._orders.create_qr(merchant, qr)
            else:
                code = CodeAsk(ask.order_no, ask.amount_fen, ask.subject, ask.auth_code, ask.notify_url)
                order = await self._orders.pay_code(merchant, code)
        except Refused as exc:
            raise ApiError(exc.status, exc.code, exc.message) from None
        return _json(view(order))

    async def get(self, request: web.Request) -> web.Response:
        params = {**request.query, "order_no": request.match_info["order_no"]}
        ask, merchant = await self._signed(request, params, OrderAction, strings=True)
        order = await find_order(self._pool, merchant.id, ask.order_no)
        if order is None:
            raise ApiError(404, "ORDER_NOT_FOUND", f"no order {ask.order_no}")
        return _json(view(order))

    async def close(self, request: web.Request) -> web.Response:
        params = {**await _json_params(request), "order_no": request.match_info["order_no"]}
        ask, merchant = await self._signed(request, params, OrderAction)
        try:
            order = await self._orders.close(merchant, ask.order_no)
        except Refused as exc:
            raise ApiError(exc.status, exc.code, exc.message) from None
        return _json(view(order))

    async def refund(self, request: web.Request) -> web.Response:
        params = {**await _json_params(request), "order_no": request.match_info["order_no"]}
        ask, merchant = await self._signed(request, params, RefundOrder)
        try:
            refund = await self._orders.refund(merchant, ask.order_no, ask.refund_no, ask.amount_fen)
        except Refused as exc:
            raise ApiError(exc.status, exc.code, exc.message) from None
        return _json(refund_view(refund))

    async def get_refund(self, request: web.Request) -> web.Response:
        params = {**request.query, **request.match_info}
        ask, merchant = await self._signed(request, params, RefundAction, strings=True)
        refund = await find_refund(self._pool, merchant.id, ask.refund_no)
        if refund is None or refund.order_no != ask.order_no or refund.state is None:
            raise ApiError(404, "REFUND_NOT_FOUND", f"no refund {ask.refund_no} of order {ask.order_no}")
        return _json(refund_view(refund))

    async def notify(self, request: web.Request) -> web.Response:
        body = await request.read()
        answer = await self._notices.receive(request.match_info["channel"], body, dict(request.headers))
        return web.Response(status=answer.status, body=answer.body, headers=dict(answer.headers))

    async def _signed(
        self, request: web.Request, params: Mapping[str, object], shape: type[S], strings: bool = False
    ) -> tuple[S, Merchant]:
        """The request's parameters as ``shape``, once its signature (of its method and path, and
        its parameters), time and nonce hold."""
        try:
            ask = msgspec.convert(params, shape, strict=not strings)
        except msgspec.ValidationError as exc:
            raise ApiError(400, "INVALID_REQUEST", str(exc)) from None
        merchant = self._merchants.get(ask.merchant_id)
        verify = self._verifiers.get((ask.merchant_id, ask.sign_type))
        if merchant is None or verify is None:
            raise ApiError(401, "UNAUTHORISED", "unknown merchant, sign_type, or a merchant without an API key")
        if not verify(request_signing_input(request.method, request.path, params), ask.sign):
            raise ApiError(401, "BAD_SIGNATURE", "the signature does not verify")
        window = self._section.signature_window_s
        early, ahead = ask.timestamp - time.time() * 1000, min(AHEAD_S, window // 2)
        if early > ahead * 1000 or -early > window * 1000:
            raise ApiError(401, "STALE_REQUEST", f"timestamp more than {window} s before now, or {ahead} s after")
        if not await fresh_nonce(self._pool, merchant.id, ask.nonce, window):
            raise ApiError(401, "REPLAYED", "this nonce was used before")
        return ask, merchant


async def _json_params(request: web.Request) -> dict[str, object]:
    try:
        params = msgspec.json.decode(await request.read())
    except msgspec.DecodeError:
        raise ApiError(400, "INVALID_JSON", "the body is not JSON") from None
    if not isinstance(params, dict) or any(isinstance(v, dict | list) for v in params.values()):
        raise ApiError(400, "INVALID_REQUEST", "the body is an object of plain values")
    return params


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


def _json(value: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=msgspec.json.encode(value), content_type="application/json")


@web.middleware
async def _errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
    try:
        return await handler(request)
    except ApiError as exc:
        return _json({"code": exc.code, "message": exc.message}, exc.status)
    except web.HTTPException as exc:  # aiohttp's own: not found, too large, method not allowed
        return _json({"code": "HTTP_" + str(exc.status), "message": exc.reason}, exc.status)
    except Exception:
        log.exception("merchant API request failed", extra={"path": request.path})
        return _json({"code": "SYSTEM_ERROR", "message": "the switch could not handle the request"}, 500)


async def start(api: MerchantApi, listen: str, reuse_port: bool = False) -> web.AppRunner:
    """Serve ``api`` on ``listen``; with ``reuse_port``, beside the other workers of a ``--workers`` switch."""
    runner = web.AppRunner(api.app(), access_log=None)
    await runner.setup()
    host, _, port = listen.rpartition(":")
    await web.TCPSite(runner, host, int(port), reuse_port=reuse_port or None).start()
    return runner
