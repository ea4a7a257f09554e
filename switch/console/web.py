"""The console's HTTP side: sign-in, the session and CSRF checks, who may do what, and the pages.

Every route but the sign-in page and the style sheet needs a session (a GET without one goes to
the sign-in page; a POST is refused). Every POST carries the session's CSRF token and, when the
browser sends an ``Origin``, comes from this console's own; a refusal is audited. Roles rank
viewer < operator < admin: a viewer reads; an operator also acts on channels, reconciliation
differences and notifications; an admin also edits the live configuration (merchants, terminals,
routing, limits, risk rules) and decides another admin's change of it (four eyes). Every action,
sign-in and sign-out included, writes an audit row (``switch.console.audit``)."""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote, urlsplit

import asyncpg
import jinja2
import msgspec
from aiohttp import web

from protocols.masking import scrub, typed
from risk.lists import change_list
from switch.console import accounts, changes, reads
from switch.console.accounts import ROLES, Role, Session
from switch.console.audit import Entry, record
from switch.console.channels import Channels
from switch.console.edits import MAX_RULES_TEXT, NEW, Edits, MerchantEdit, version_of
from switch.console.settings import ConsoleSection
from switch.forwarded import client_address, networks
from switch.journal import machine, resolve_dead_letter, retry_dead_letter
from switch.live import LIMITS
from switch.lograte import RateLimitedLog
from switch.merchant.outbox import resend
from switch.recon.handling import resolve_by_hand
from switch.settlement import csv_text, file_name, settled
from switch.shedding import peer_of

log = logging.getLogger("paysw.console")

COOKIE = "paysw_console"
PRE_COOKIE = "paysw_console_signin"  # the sign-in form's own CSRF token (double submit)
RANK = {role: i for i, role in enumerate(ROLES)}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def needs(role: Role) -> Callable[[Handler], Handler]:
    """Mark a handler as needing a session of at least ``role`` (unmarked: a viewer's)."""

    def mark(handler: Handler) -> Handler:
        handler.role = role  # type: ignore[attr-defined]
        return handler

    return mark


def public(handler: Handler) -> Handler:
    """Mark a handler as open without a session (the sign-in form only)."""
    handler.public = True  # type: ignore[attr-defined]
    return handler


class Console:
    def __init__(
        self, pool: asyncpg.Pool, section: ConsoleSection, channels: Channels, edits: Edits, secure: bool
    ) -> None:
        self._pool = pool
        self._hosts = {section.listen, *section.hosts}
        self._section = section
        self._proxies = networks(section.trusted_proxies)
        self._channels = channels
        self._edits = edits
        self._secure = secure
        self._refusals = RateLimitedLog(60.0)
        self._idle = dt.timedelta(minutes=section.idle_minutes)
        self._longest = dt.timedelta(hours=section.max_hours)
        self._templates = jinja2.Environment(
            loader=jinja2.PackageLoader("switch.console", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self._templates.filters["yuan"] = lambda fen: "" if fen is None else f"{fen / 100:,.2f}"
        self._templates.filters["at"] = lambda t: "" if t is None else f"{t:%Y-%m-%d %H:%M:%S}"
        self._templates.filters["scrub"] = lambda text: "" if text is None else scrub(str(text))

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=64 * 1024)
        app.router.add_static("/static", Path(__file__).parent / "static")
        routes = [
            ("GET", "/sign-in", self.sign_in_page),
            ("POST", "/sign-in", self.sign_in),
            ("POST", "/sign-out", self.sign_out),
            ("GET", "/", self.home),
            ("GET", "/transactions", self.transactions),
            ("GET", "/transactions/{rrn}", self.timeline),
            ("GET", "/channels", self.channels),
            ("GET", "/channels/{name}/{action}", self.channel_confirm),
            ("POST", "/channels/{name}/{action}", self.channel_act),
            ("GET", "/limits/{name}", self.limits),
            ("POST", "/limits/{name}", self.limits_save),
            ("GET", "/recon", self.recon),
            ("POST", "/recon/{item}/resolve", self.recon_resolve),
            ("POST", r"/recon/{item:[1-9][0-9]{0,17}}/{decision:approve|reject}", self.recon_decide),
            ("GET", "/dead-letters", self.dead_letters),
            ("GET", "/dead-letters/{rrn}/retry", self.dead_letter_confirm),
            ("POST", "/dead-letters/{rrn}/{action:resolve|retry}", self.dead_letter_act),
            ("POST", r"/dead-letters/{rrn:\d{12}}/{decision:approve|reject}", self.dead_letter_decide),
            ("POST", "/notifications/{rrn}/resend", self.notification_resend),
            ("GET", "/settlement", self.settlement),
            ("GET", r"/settlement/settlement-{day:\d{4}-\d{2}-\d{2}}.csv", self.settlement_file),
            ("GET", "/merchants", self.merchants),
            ("GET", "/merchants/{id}", self.merchant),
            ("POST", "/merchants/{id}", self.merchant_save),
            ("GET", "/routing", self.routing),
            ("POST", "/routing/gray/{channel}", self.gray_save),
            ("GET", "/risk", self.risk),
            ("POST", "/risk/lists/{action}", self.risk_list),
            ("POST", "/risk/removals/{decision:approve|reject}", self.risk_removal_decide),
            ("POST", "/risk/rules", self.rules_save),
            ("GET", "/terminals", self.terminals),
            ("GET", "/terminals/{id}", self.terminal),
            ("POST", "/terminals/{id}", self.terminal_save),
            ("GET", "/changes", self.changes),
            ("POST", r"/changes/{request:\d{1,18}}/{decision:approve|reject}", self.change_decide),
            ("GET", "/audit", self.audit),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
        return app

    # -- the guard: session, CSRF, role, headers --------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every route needs a session (a viewer's, unless marked otherwise) but the sign-in form
        and the style sheet: a route added without a mark is closed, not open."""
        route = getattr(request.match_info, "handler", None)
        # Open: the sign-in form, the style sheet, and no route at all (404, 405: nothing to guard,
        # and a browser's favicon asked for must not start a fresh sign-in form under the user's).
        no_route = request.match_info.http_exception is not None
        open_ = getattr(route, "public", False) or request.path.startswith("/static/") or no_route
        try:
            if request.host not in self._hosts:  # DNS rebinding: another site's name for this address
                response: web.StreamResponse = web.Response(status=421, text="misdirected request")
            elif open_:
                response = await handler(request)
            else:
                response = await self._checked(request, handler, getattr(route, "role", "viewer"))
        except web.HTTPException as exc:
            response = exc
        except Exception:
            log.exception("console request failed", extra={"path": request.path})
            response = web.Response(status=500, text="the console failed: see its log")
        response.headers.update(HEADERS)
        return response

    async def _checked(self, request: web.Request, handler: Handler, role: Role) -> web.StreamResponse:
        token = request.cookies.get(COOKIE, "")
        session = await accounts.session_of(self._pool, token, self._idle, self._longest) if token else None
        if session is None:
            if request.method == "GET":
                raise web.HTTPSeeOther(f"/sign-in?next={quote(request.path_qs)}")
            return self._refusal(request, None, 401, "sign in first")
        request["session"] = session
        if request.method == "POST":
            form = await request.post()
            request["form"] = form
            given = str(form.get("csrf", "")).encode()
            if not hmac.compare_digest(given, session.csrf.encode()) or not self._same_origin(request):
                await self._refused(request, session, "csrf")
                return self._refusal(
                    request, session, 403, "the form is stale or came from elsewhere: load the page again"
                )
        if RANK[session.account.role] < RANK[role]:
            if request.method == "POST":
                await self._refused(request, session, "role")
            return self._refusal(request, session, 403, f"this needs the {role} role; you are a {session.account.role}")
        return await handler(request)

    async def _refused(self, request: web.Request, session: Session, why: str) -> None:
        """A form refused (``csrf``, ``role``), audited with where it came from: a forged one's lead."""
        target = f"{request.path} from {self._whence(request)}"
        await record(self._pool, Entry(session.account.name, why, target, outcome="refused"))

    def _same_origin(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        return origin is None or urlsplit(origin).netloc == request.host

    async def _lapsed(self, conn: asyncpg.Connection, asked: asyncpg.Record) -> str:
        """Why a request waiting for a second operator (a hand-back, a resolution, a removal; its audit row) may
        no longer be approved, if so: asked more than ``change_max_hours`` ago, or its asker no
        longer an operator. A decision then ends it, nothing done, and it is asked again."""
        hours, name = self._section.change_max_hours, asked["user_name"]
        old, role, made_since = await conn.fetchrow(  # by the journal's clock, which dated the request
            "SELECT now() - $1::timestamptz > make_interval(hours => $2), "
            "(SELECT role FROM console_user WHERE name = $3), "
            "(SELECT created_at > $1 FROM console_user WHERE name = $3)",
            asked["at"], hours, name,
        )  # fmt: skip
        if old:
            return f"asked more than {hours} hours ago"
        if RANK.get(role, -1) < RANK["operator"] or made_since:  # (an account of that name made since: not theirs)
            return f"{name} is no longer an operator"
        return ""

    async def _ask(
        self,
        request: web.Request,
        kind: _Kind,
        target: str,
        audited: str,
        reason: Any,
        asked_of: Callable[[asyncpg.Connection], Awaitable[dict[Any, asyncpg.Record]]],
        key: Any,
        still: Callable[[asyncpg.Connection], Awaitable[dict[str, Any] | None]],
        gone: str,
    ) -> str:
        """A request of ``kind`` on ``target`` asked (``four_eyes``): audited on ``audited`` as
        awaiting a second operator, nothing done. Refused while another waits (``asked_of``, by
        ``key``), unless that one has lapsed (the new one takes its place), and when ``still`` finds
        nothing to ask about (``gone``; else what to name in the request). What the page says."""
        who = request["session"].account.name
        async with self._pool.acquire() as conn, conn.transaction(isolation="read_committed"):
            await _decisions_of(conn, f"{kind.action}:{audited}")
            names, asked = await still(conn), (await asked_of(conn)).get(key)
            if names is None:
                return gone
            if asked is not None and not await self._superseded(conn, asked, who, kind.action, audited, names):
                return f"{target}: {kind.what} awaits approval already (asked by {asked['user_name']})"
            await record(conn, Entry(who, kind.action, audited, names or None, reason, reads.AWAITING))
            return f"{target}: {kind.what} asked; another operator approves it on this page"

    async def _decide(
        self,
        conn: asyncpg.Connection,
        request: web.Request,
        kind: _Kind,
        asked: asyncpg.Record | None,
        target: str,
        audited: str,
        reason: Any,
        names: dict[str, Any],
        carry_out: Callable[[], Awaitable[tuple[str, str]]],
    ) -> str:
        """The session's decision (approve or reject, from the route) on ``asked``, a request of
        ``kind`` on ``target``: refused (``_undecidable``), lapsed, withdrawn or rejected, or carried
        out (``carry_out``: its outcome and what to say); audited on ``audited`` with ``names``, the
        request and who asked. What the page says."""
        decision, who = request.match_info["decision"], request["session"].account.name
        read = str(request["form"].get("request", ""))
        refused = await _undecidable(conn, asked, decision, read, who, target, audited, kind)
        if refused or asked is None:
            return refused
        lapsed = await self._lapsed(conn, asked) if decision == "approve" else ""
        if lapsed:
            outcome, said = f"lapsed: {lapsed}", f"{target}: {kind.what} lapsed ({lapsed}): ask again"
        elif decision == "reject":
            outcome = "withdrawn" if who == asked["user_name"] else "rejected"
            said = f"{target}: {kind.what} {outcome}"
        else:
            outcome, said = await carry_out()
        named = names | {"request": asked["id"], "asked_by": asked["user_name"]}
        await record(conn, Entry(who, kind.action, audited, named, reason, outcome))
        return said

    async def _superseded(
        self, conn: asyncpg.Connection, asked: asyncpg.Record, who: str, action: str, target: str, names: dict
    ) -> bool:
        """Whether a request asked anew may take the place of ``asked``: only one that has lapsed
        (``_lapsed``), audited as such first, so that a lapsed request blocks no one."""
        lapsed = await self._lapsed(conn, asked)
        if lapsed:
            named = names | {"request": asked["id"], "asked_by": asked["user_name"]}
            await record(conn, Entry(who, action, target, named, outcome=f"lapsed: {lapsed}"))
        return bool(lapsed)

    def _told(self, request: web.Request, path: str, said: str) -> web.HTTPSeeOther:
        """Back to ``path``, saying ``said`` there (``_said``)."""
        said = said[:300]  # (what a page shows of it)
        return web.HTTPSeeOther(f"{path}?said={quote(said)}&sig={_signed(request['session'], said)}")

    def _refusal(self, request: web.Request, session: Session | None, status: int, why: str) -> web.Response:
        return self._page(request, "refused.html", status=status, session=session, why=why)

    def _page(
        self, request: web.Request, template: str, status: int = 200, session: Session | None = None, **values: Any
    ) -> web.Response:
        session = session or request.get("session")
        values |= {
            "me": session.account if session else None,
            "csrf": session.csrf if session else "",
            "can_act": session is not None and RANK[session.account.role] >= RANK["operator"],
            "is_admin": session is not None and session.account.role == "admin",
            "said": _said(request, session),
            "path": request.path,
        }
        text = self._templates.get_template(template).render(**values)
        return web.Response(text=text, status=status, content_type="text/html")

    def _client(self, request: web.Request) -> str:
        """The user's address: the connection's, or through ``trusted_proxies`` what they forwarded."""
        return client_address(request.remote, request.headers.getall("X-Forwarded-For", []), self._proxies)

    def _whence(self, request: web.Request) -> str:
        """The user's address as the audit and the log say it: with the proxy that forwarded it."""
        client = self._client(request)
        return client if client == request.remote or request.remote is None else f"{client} via {request.remote}"

    async def _audit(self, request: web.Request, action: str, target: str, **fields: Any) -> None:
        await record(self._pool, Entry(request["session"].account.name, action, target, **fields))

    # -- sign-in ----------------------------------------------------------------------------

    @public
    async def sign_in_page(self, request: web.Request) -> web.Response:
        return self._sign_in_form(request, "", 200)

    def _sign_in_form(self, request: web.Request, error: str, status: int) -> web.Response:
        pre = secrets.token_urlsafe(24)
        response = self._page(request, "sign_in.html", status=status, pre=pre, error=error, next=_local(request))
        response.set_cookie(PRE_COOKIE, pre, httponly=True, samesite="Strict", secure=self._secure, path="/sign-in")
        return response

    @public
    async def sign_in(self, request: web.Request) -> web.StreamResponse:
        if not self._same_origin(request):
            return self._sign_in_form(request, "the sign-in form came from elsewhere", 403)
        form = await request.post()
        name, password = str(form.get("name", ""))[:64], str(form.get("password", ""))[:1024]
        pre = request.cookies.get(PRE_COOKIE, "")
        if not pre or not hmac.compare_digest(str(form.get("pre", "")).encode(), pre.encode()):
            return self._sign_in_form(request, "the sign-in form is stale: try again", 403)
        client, whence = self._client(request), self._whence(request)
        window, failures = dt.timedelta(minutes=self._section.sign_in_window_minutes), self._section.sign_in_failures
        async with self._pool.acquire() as conn:
            # Counted by address, an IPv6 one by its /64 (one site's: taken apart, a budget each).
            outcome = await accounts.sign_in(conn, name, password, peer_of(client), failures, window)
            if outcome.account is None:
                name = name if outcome.known else accounts.UNKNOWN
                if outcome.limited:  # not audited one by one: a flood would grow the audit log for nothing
                    self._refusals.warn(
                        log, name, "console sign-in refused: too many failures", user=name, remote=whence
                    )
                    return self._sign_in_form(request, outcome.refusal, 429)
                await record(conn, Entry(name, "sign-in", whence, outcome=outcome.refusal))
                log.warning("console sign-in refused", extra={"user": name, "remote": whence, "why": outcome.refusal})
                return self._sign_in_form(request, outcome.refusal, 401)
            token = await accounts.open_session(conn, outcome.account, self._idle)
            await record(conn, Entry(name, "sign-in", whence))
        log.info("console sign-in", extra={"user": name, "remote": whence})
        response = web.HTTPSeeOther(_local(request, str(form.get("next", ""))))
        response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", secure=self._secure, path="/")
        response.del_cookie(PRE_COOKIE, path="/sign-in")
        return response

    @needs("viewer")
    async def sign_out(self, request: web.Request) -> web.StreamResponse:
        await accounts.close_session(self._pool, request.cookies.get(COOKIE, ""))
        await self._audit(request, "sign-out", self._whence(request))
        response = web.HTTPSeeOther("/sign-in")
        response.del_cookie(COOKIE, path="/")
        return response

    # -- pages ------------------------------------------------------------------------------

    @needs("viewer")
    async def home(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPSeeOther("/transactions")

    @needs("viewer")
    async def transactions(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            filters = reads.Filters(
                rrn=q.get("rrn", "").strip(),
                terminal=q.get("terminal", "").strip(),
                merchant=q.get("merchant", "").strip(),
                channel=q.get("channel", ""),
                state=q.get("state", ""),
                since=_moment(q.get("since", "")),
                until=_moment(q.get("until", "")),
            )
        except ValueError as exc:
            return self._page(
                request, "transactions.html", status=400, rows=[], filters=q, error=str(exc), **self._choices()
            )
        rows = await reads.search(self._pool, filters)
        return self._page(request, "transactions.html", rows=rows, filters=q, error="", **self._choices())

    def _choices(self) -> dict[str, Any]:
        return {"channel_names": self._edits.channel_names(), "states": [s.value for s in machine.State]}

    @needs("viewer")
    async def timeline(self, request: web.Request) -> web.Response:
        found = await reads.story(self._pool, request.match_info["rrn"])
        if found is None:
            return self._refusal(request, None, 404, f"no transaction with RRN {request.match_info['rrn']}")
        return self._page(request, "timeline.html", txn=found.txn, events=found.events)

    @needs("viewer")
    async def channels(self, request: web.Request) -> web.Response:
        limits, version = await self._edits.limits()
        return self._page(
            request, "channels.html", endpoints=await self._channels.status(), limits=limits, version=version
        )

    @needs("viewer")
    async def limits(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        limits, version = await self._edits.limits()
        if name not in limits:
            return self._refusal(request, None, 404, f"no channel {name!r}")
        return self._page(request, "limits.html", name=name, limits=limits[name], version=version, error="")

    @needs("admin")
    async def limits_save(self, request: web.Request) -> web.StreamResponse:
        name, form = request.match_info["name"], request["form"]
        error = await self._edits.set_limits(name, form, request["session"].account.name)
        if error:
            await self._audit(request, "channel.limits", name, outcome=error[:300])
            in_force, _ = await self._edits.limits()
            limits = in_force.get(name, {}) | {k: form[k] for k in LIMITS if k in form and k != "breaker"}
            breaker = limits.get("breaker", {})
            limits["breaker"] = breaker | {k: form[f"breaker.{k}"] for k in breaker if f"breaker.{k}" in form}
            return self._page(
                request, "limits.html", status=400, name=name, limits=limits, version=version_of(form), error=error
            )
        said = self._saved(name, f"{name}: limits and breaker saved: every front end applies them now")
        raise self._told(request, "/channels", said)

    @needs("operator")
    async def channel_confirm(self, request: web.Request) -> web.Response:
        name, action = request.match_info["name"], request.match_info["action"]
        if action not in Channels.ACTIONS or name not in self._edits.channel_names():
            return self._refusal(request, None, 404, f"no channel {name!r} or no action {action!r}")
        return self._page(request, "confirm.html", name=name, action=action)

    @needs("operator")
    async def channel_act(self, request: web.Request) -> web.StreamResponse:
        name, action = request.match_info["name"], request.match_info["action"]
        if action not in Channels.ACTIONS or name not in self._edits.channel_names():
            return self._refusal(request, None, 404, f"no channel {name!r} or no action {action!r}")
        # Audited before it goes out, then with its outcome: a console that dies in between leaves
        # the attempt on record, with front ends possibly switched already.
        await self._audit(request, f"channel.{action}", name, outcome="started")
        before, after, outcome = await self._channels.act(name, action)
        await self._audit(request, f"channel.{action}", name, before=before, after=after, outcome=outcome)
        raise self._told(request, "/channels", f"{name}: {action} {outcome}")

    @needs("viewer")
    async def recon(self, request: web.Request) -> web.Response:
        batches, open_ = await reads.batches(self._pool), await reads.open_differences(self._pool)
        asked = await reads.resolutions_asked(self._pool)
        return self._page(
            request, "recon.html", batches=batches, differences=open_, asked=asked, four_eyes=self._section.four_eyes
        )

    @needs("operator")
    async def recon_resolve(self, request: web.Request) -> web.StreamResponse:
        item, reason = request.match_info["item"], typed(str(request["form"].get("reason", "")), 500)
        if not re.fullmatch(r"[1-9][0-9]{0,17}", item) or not reason:  # (as the audit and the locks name it)
            raise self._told(request, "/recon", "a resolution needs a reason")
        if self._section.four_eyes:  # a difference resolved is settled as one fixed: it can pay a merchant

            async def open_(conn: asyncpg.Connection) -> dict[str, Any] | None:
                return {} if await conn.fetchval(_OPEN_ITEM, int(item)) else None

            asked = partial(reads.resolutions_asked, item=int(item))
            said = await self._ask(request, _RESOLUTION, f"difference {item}", item, reason, asked, item, open_,
                                   f"no open difference {item}")  # fmt: skip
            raise self._told(request, "/recon", said)
        async with self._pool.acquire() as conn, conn.transaction():
            done = await resolve_by_hand(conn, int(item), reason)
            outcome = "ok" if done else "no open difference"
            await record(
                conn, Entry(request["session"].account.name, "recon.resolve", item, after=reason, outcome=outcome)
            )
        raise self._told(request, "/recon", f"difference {item}: resolved" if done else f"no open difference {item}")

    @needs("operator")
    async def recon_decide(self, request: web.Request) -> web.StreamResponse:
        """A difference's resolution asked by another operator approved (resolved with the reason
        asked) or rejected; the one who asked may only withdraw it. An approval names the request
        its approver read, and is refused if another has taken its place since."""
        item = request.match_info["item"]
        async with self._pool.acquire() as conn, conn.transaction(isolation="read_committed"):
            await _decisions_of(conn, f"recon.resolve:{item}")
            asked = (await reads.resolutions_asked(conn, int(item))).get(item)

            async def resolve() -> tuple[str, str]:
                if await resolve_by_hand(conn, int(item), asked["reason"]):
                    return "ok", f"difference {item}: resolved"
                return "no open difference", f"no open difference {item}"

            why, target = asked["reason"] if asked else None, f"difference {item}"
            said = await self._decide(conn, request, _RESOLUTION, asked, target, item, why, {}, resolve)
        raise self._told(request, "/recon", said)

    @needs("viewer")
    async def dead_letters(self, request: web.Request) -> web.Response:
        letters, notices = await reads.dead_letters(self._pool), await reads.dead_notifications(self._pool)
        asked = await reads.hand_backs_asked(self._pool)
        return self._page(request, "dead_letters.html", letters=letters, notices=notices, asked=asked)

    @needs("operator")
    async def dead_letter_confirm(self, request: web.Request) -> web.Response:
        """Handing a transaction back can return money: asked, and approved, on a page of its own,
        which shows why it was given up on, what a person did about it before, its amount and
        state now, and the request awaiting approval if one does."""
        rrn = request.match_info["rrn"]
        letter = await reads.dead_letter(self._pool, rrn)
        if letter is None:
            return self._refusal(request, None, 404, f"no open dead letter {rrn}")
        asked = (await reads.hand_backs_asked(self._pool, rrn)).get(rrn) if self._section.four_eyes else None
        return self._page(request, "retry_confirm.html", letter=letter, four_eyes=self._section.four_eyes, asked=asked)

    @needs("operator")
    async def dead_letter_act(self, request: web.Request) -> web.StreamResponse:
        """A transaction the resolver gave up on: what a person did about it (``resolve``), or it
        handed back to the resolver to be tried afresh (``retry``: its cancel may return money);
        audited with who and what (a card number typed into it is masked before it is kept)."""
        rrn, action = request.match_info["rrn"], request.match_info["action"]
        resolution = typed(str(request["form"].get("resolution", "")), 500)
        if not re.fullmatch(r"[0-9]{12}", rrn) or not resolution:
            raise self._told(request, "/dead-letters", "say what was done, or why it is tried again")
        if action == "retry" and self._section.four_eyes:  # its cancel may return money

            async def open_(conn: asyncpg.Connection) -> dict[str, Any] | None:
                return {} if await reads.dead_letter(conn, rrn) is not None else None

            asked = partial(reads.hand_backs_asked, rrn=rrn)
            gone = f"no open dead letter {rrn} to be handed back to the resolver"
            said = await self._ask(request, _HAND_BACK, rrn, rrn, resolution, asked, rrn, open_, gone)
            raise self._told(request, "/dead-letters", said)
        act = resolve_dead_letter if action == "resolve" else retry_dead_letter
        async with self._pool.acquire() as conn, conn.transaction(isolation="read_committed"):
            await _decisions_of(conn, f"dead_letter.retry:{rrn}")
            who, asked = request["session"].account.name, (await reads.hand_backs_asked(conn, rrn)).get(rrn)
            if asked is not None and not await self._superseded(conn, asked, who, "dead_letter.retry", rrn, {}):
                said = f"{rrn}: a hand-back awaits approval: approve or reject it first"  # (asked first, by another)
                raise self._told(request, "/dead-letters", said)
            done = await act(conn, rrn, resolution)
            outcome = "ok" if done else "no open dead letter"
            await record(conn, Entry(who, f"dead_letter.{action}", rrn, after=resolution, outcome=outcome))
        said = {"resolve": "resolved", "retry": "handed back to the resolver"}[action]
        said = f"{rrn}: {said}" if done else f"no open dead letter {rrn} to be {said}"
        raise self._told(request, "/dead-letters", said)

    @needs("operator")
    async def dead_letter_decide(self, request: web.Request) -> web.StreamResponse:
        """A hand-back asked by another operator approved (the dead letter handed back to the
        resolver, with the reason asked) or rejected; the one who asked may only reject (withdraw)
        it. An approval names the request its approver read (``request``: its audit row), and is
        refused if another has taken its place since. Each decision audited with who asked."""
        rrn = request.match_info["rrn"]
        async with self._pool.acquire() as conn, conn.transaction(isolation="read_committed"):
            await _decisions_of(conn, f"dead_letter.retry:{rrn}")
            asked = (await reads.hand_backs_asked(conn, rrn)).get(rrn)

            async def hand_back() -> tuple[str, str]:
                if await retry_dead_letter(conn, rrn, asked["resolution"]):
                    return "ok", f"{rrn}: handed back to the resolver"
                return "no open dead letter", f"no open dead letter {rrn} to be handed back"

            why = asked["resolution"] if asked else None
            said = await self._decide(conn, request, _HAND_BACK, asked, rrn, rrn, why, {}, hand_back)
        raise self._told(request, "/dead-letters", said)

    @needs("operator")
    async def notification_resend(self, request: web.Request) -> web.StreamResponse:
        rrn = request.match_info["rrn"]
        async with self._pool.acquire() as conn, conn.transaction():
            count = await resend(conn, rrn, "")
            await self._audit(request, "notification.resend", rrn, after=count, outcome="ok" if count else "none dead")
        raise self._told(request, "/dead-letters", f"{count} notification(s) of {rrn} sent again")

    @needs("viewer")
    async def settlement(self, request: web.Request) -> web.Response:
        rows = await reads.settlement_days(self._pool)
        days = sorted({r["settled_on"] for r in rows}, reverse=True)
        return self._page(request, "settlement.html", rows=rows, files=[(d, file_name(d)) for d in days])

    @needs("viewer")
    async def settlement_file(self, request: web.Request) -> web.Response:
        """A day's settlement file, as ``paysw settle`` wrote it, from the journal."""
        try:
            day = dt.date.fromisoformat(request.match_info["day"])
        except ValueError:
            return self._refusal(request, None, 404, "no such day")
        config = await self._edits.config()
        text = csv_text(await settled(self._pool, config, day))
        await self._audit(request, "settlement.download", str(day))
        return web.Response(
            text=text,
            content_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{file_name(day)}"'},
        )

    @needs("viewer")
    async def merchants(self, request: web.Request) -> web.Response:
        listed = await self._edits.listed()
        return self._page(
            request, "merchants.html", merchants=listed.merchants, kept=listed.kept, version=listed.version
        )

    @needs("viewer")
    async def merchant(self, request: web.Request) -> web.Response:
        edit = await self._edits.edit(request.match_info["id"])
        if edit is None:
            return self._refusal(request, None, 404, f"no merchant {request.match_info['id']}")
        return self._merchant_form(request, edit, "", 200)

    def _merchant_form(self, request: web.Request, edit: MerchantEdit, error: str, status: int) -> web.Response:
        return self._page(
            request,
            "merchant.html",
            status=status,
            edit=edit,
            error=error,
            channel_names=self._edits.channel_names(),
        )

    @needs("admin")
    async def merchant_save(self, request: web.Request) -> web.StreamResponse:
        merchant_id, form = request.match_info["id"], request["form"]
        saved = await self._edits.save(merchant_id, form, request["session"].account.name)
        if saved.error:
            await self._audit(
                request, "merchant.edit", merchant_id, after=saved.edit.merchant, outcome=saved.error[:300]
            )
            return self._merchant_form(request, saved.edit, saved.error, 400)
        what = f"merchant {saved.edit.merchant['id']}"
        said = self._saved(what, f"{what} saved (version {saved.edit.version}): every front end applies it now")
        raise self._told(request, "/merchants", said)

    @needs("viewer")
    async def routing(self, request: web.Request) -> web.Response:
        routing, version = await self._edits.routing()
        return self._page(request, "routing.html", routing=routing, version=version)

    @needs("admin")
    async def gray_save(self, request: web.Request) -> web.StreamResponse:
        channel, form = request.match_info["channel"], request["form"]
        seen = version_of(form)
        percent = str(form.get("percent", "")).strip()[:10]
        error = await self._edits.set_gray(channel, percent, seen, request["session"].account.name)
        if error:
            await self._audit(request, "routing.gray", channel, after=percent, outcome=error[:300])
        said = error or self._saved(
            f"{channel}: gray route to {percent} %",
            f"{channel}: gray route moved to {percent} %: every front end applies it now",
        )
        raise self._told(request, "/routing", said)

    @needs("viewer")
    async def risk(self, request: web.Request) -> web.Response:
        return await self._risk_page(request, None, "", 200)

    async def _risk_page(self, request: web.Request, text: str | None, error: str, status: int) -> web.Response:
        toml, rules, version, problem = await self._edits.rules()
        lists, changes = await reads.risk_lists(self._pool), await reads.risk_changes(self._pool)
        return self._page(
            request,
            "risk.html",
            status=status,
            rules=rules,
            toml=toml if text is None else text,
            version=version,
            problem=problem,
            error=error,
            lists=lists,
            changes=changes,
            removals=await reads.removals_asked(self._pool),
            four_eyes=self._section.four_eyes,
        )

    @needs("admin")
    async def rules_save(self, request: web.Request) -> web.StreamResponse:
        """The risk rules replaced as a whole (TOML, as the rules file), kept in the journal."""
        form = request["form"]
        text, none_meant = str(form.get("rules", "")), form.get("no_rules") == "on"
        error = await self._edits.set_rules(text, version_of(form), request["session"].account.name, none_meant)
        if error:
            await self._audit(request, "risk.rules", "rules", outcome=error[:300])
            return await self._risk_page(request, text[:MAX_RULES_TEXT], error, 400)
        said = self._saved("risk rules", "risk rules saved: every front end applies them now")
        raise self._told(request, "/risk", said)

    @needs("operator")
    async def risk_list(self, request: web.Request) -> web.StreamResponse:
        """A terminal or merchant put on a list, or any entry taken off (a code goes on by
        ``paysw risk list --code-stdin``: the console never takes a code or card number); with
        ``four_eyes``, an entry's removal from the black list is asked, and another operator
        approves it."""
        action, form = request.match_info["action"], request["form"]
        colour, of = str(form.get("colour", "")), str(form.get("of", ""))
        value, reason = str(form.get("value", "")).strip(), typed(str(form.get("reason", "")), 200)
        if len(value) > MAX_LISTED:
            raise self._told(request, "/risk", f"a list entry's value is at most {MAX_LISTED} characters")
        add = action == "add"
        allowed = ("terminal", "merchant") if add else ("code", "terminal", "merchant")
        if action not in ("add", "remove") or colour not in ("black", "grey") or of not in allowed or not value:
            raise self._told(request, "/risk", "a list entry needs its list, what it is and its value")
        if add and not reason:
            raise self._told(request, "/risk", "an entry needs a reason")
        if not add and colour == "black" and self._section.four_eyes:  # off the list, it pays again
            if not reason:
                raise self._told(request, "/risk", "say why it comes off the black list: another operator reads it")

            async def listed(conn: asyncpg.Connection) -> dict[str, Any] | None:
                entry = await conn.fetchval(_LISTED, of, value)
                return None if entry is None else {"entry": entry}

            target = f"black {of} {value}"
            asked = partial(reads.removals_asked, of=of, value=value)
            gone = f"{target}: not on the black list"
            said = await self._ask(
                request, _REMOVAL, target, target, {"reason": reason}, asked, (of, value), listed, gone
            )
            raise self._told(request, "/risk", said)
        user = request["session"].account.name
        async with self._pool.acquire() as conn, conn.transaction():
            changed = await change_list(
                conn, add, colour, of, value, reason or "removed in the console", f"console:{user}"
            )
            entry = {"colour": colour, "of": of, "value": value, "reason": reason}
            outcome, target = "ok" if changed else "no change", f"{colour} {of} {value}"
            await record(conn, Entry(user, f"risk.list.{action}", target, after=entry, outcome=outcome))
        said = f"{colour} list of {of}s: {value} {'added' if add else 'removed'}" if changed else "nothing changed"
        raise self._told(request, "/risk", said)

    @needs("operator")
    async def risk_removal_decide(self, request: web.Request) -> web.StreamResponse:
        """A black list entry's removal asked by another operator approved (taken off, with the
        reason asked) or rejected; the one who asked may only reject (withdraw) it. An approval
        names the request its approver read (``request``: its audit row), and is refused if another
        has taken its place since. Each decision audited with who asked."""
        form, who = request["form"], request["session"].account.name
        of, value = str(form.get("of", "")), str(form.get("value", "")).strip()
        if len(value) > MAX_LISTED:
            raise self._told(request, "/risk", f"a list entry's value is at most {MAX_LISTED} characters")
        target = f"black {of} {value}"
        async with self._pool.acquire() as conn, conn.transaction(isolation="read_committed"):
            await _decisions_of(conn, f"risk.list.remove:{target}")
            asked = (await reads.removals_asked(conn, of, value)).get((of, value))

            async def remove() -> tuple[str, str]:
                by = f"console:{asked['user_name']}+{who}"
                if await change_list(conn, False, "black", of, value, asked["reason"], by, asked["entry"]):
                    return "ok", f"black list of {of}s: {value} removed"
                return "no change", f"{target}: not on the black list"  # taken off meanwhile, outside the console

            why, names = ({"reason": asked["reason"]}, {"entry": asked["entry"]}) if asked else (None, {})
            said = await self._decide(conn, request, _REMOVAL, asked, target, target, why, names, remove)
        raise self._told(request, "/risk", said)

    @needs("viewer")
    async def terminals(self, request: web.Request) -> web.Response:
        terminals, version = await self._edits.terminals()
        keys = await reads.terminal_keys(self._pool, [t.id for t in terminals])
        return self._page(request, "terminals.html", terminals=terminals, keys=keys, version=version)

    @needs("viewer")
    async def terminal(self, request: web.Request) -> web.Response:
        terminal_id = request.match_info["id"]
        terminals, version = await self._edits.terminals()
        found = next((t for t in terminals if t.id == terminal_id), None)
        if found is None and terminal_id != NEW:
            return self._refusal(request, None, 404, f"no terminal {terminal_id}")
        shown = {"id": "", "merchant": "", "mac_algorithm": "x9.19"} if found is None else msgspec.to_builtins(found)
        return await self._terminal_form(request, shown, found is None, version, "", 200)

    async def _terminal_form(
        self, request: web.Request, terminal: dict[str, Any], new: bool, version: int, error: str, status: int
    ) -> web.Response:
        merchants = [m.id for m in (await self._edits.config()).merchants]
        return self._page(
            request, "terminal.html", status=status, t=terminal, new=new, version=version, error=error,
            merchant_ids=merchants,
        )  # fmt: skip

    @needs("admin")
    async def terminal_save(self, request: web.Request) -> web.StreamResponse:
        terminal_id, form = request.match_info["id"], request["form"]
        error = await self._edits.save_terminal(terminal_id, form, request["session"].account.name)
        if error:
            await self._audit(request, "terminal.edit", terminal_id, outcome=error[:300])
            shown = {k: form.get(k, "") for k in ("id", "merchant", "mac_algorithm")} | {
                "id": form.get("id", "") if terminal_id == NEW else terminal_id,
                "suspended": form.get("suspended") == "on",
            }
            return await self._terminal_form(request, shown, terminal_id == NEW, version_of(form), error, 400)
        what = f"terminal {form.get('id') or terminal_id}"
        said = self._saved(what, f"{what} saved: every front end applies it now")
        raise self._told(request, "/terminals", said)

    def _saved(self, what: str, done: str) -> str:
        """What a saved edit says: ``done``; with four eyes, that ``what`` was asked."""
        if self._edits.four_eyes:
            return f"{what}: change asked: it applies once another admin approves it on the Changes page"
        return done

    @needs("viewer")
    async def changes(self, request: web.Request) -> web.Response:
        waiting, decided = await self._edits.asked()
        changed = {c["id"]: changes.changed(c) for c in waiting}
        return self._page(
            request, "changes.html", waiting=waiting, changed=changed, decided=decided, four_eyes=self._edits.four_eyes
        )

    @needs("admin")
    async def change_decide(self, request: web.Request) -> web.StreamResponse:
        """A change asked approved (kept as asked) or rejected; its asker may only withdraw it."""
        approve = request.match_info["decision"] == "approve"
        user = request["session"].account.name
        said = await self._edits.decide(int(request.match_info["request"]), user, approve)
        raise self._told(request, "/changes", said)

    @needs("operator")
    async def audit(self, request: web.Request) -> web.Response:
        return self._page(request, "audit.html", rows=await reads.audit_rows(self._pool))


class _Kind(NamedTuple):
    """A request that waits for a second operator: the audit action of it and of its decisions,
    that of a refused approval, and what the pages call it."""

    action: str
    refusal: str
    what: str


_HAND_BACK = _Kind("dead_letter.retry", "dead_letter.approve", "handing back")
_RESOLUTION = _Kind("recon.resolve", "recon.approve", "resolution")
_REMOVAL = _Kind("risk.list.remove", "risk.list.approve", "removal")


def _signed(session: Session, said: str) -> str:
    return hmac.new(session.csrf.encode(), said.encode(), "sha256").hexdigest()[:32]


def _said(request: web.Request, session: Session | None) -> str:
    """What the page says an action came to: only what this console said, to this session (signed
    with its CSRF secret), never words a link from elsewhere puts on it ("approved by security")."""
    said = request.query.get("said", "")
    signature = request.query.get("sig", "").encode()  # (text with other than ASCII would raise)
    if session is None or not hmac.compare_digest(signature, _signed(session, said).encode()):
        return ""
    return said[:300]


async def _undecidable(
    conn: asyncpg.Connection,
    asked: asyncpg.Record | None,
    decision: str,
    read: str,
    who: str,
    target: str,
    audited: str,
    kind: _Kind,
) -> str | None:
    """Why ``who`` cannot make ``decision`` on the request ``asked`` (its audit row), or None: none
    awaits, an approval of another request than the one ``read``, or of one's own (audited on
    ``audited`` as ``kind``'s refusal: the request still waits)."""
    if asked is None:
        return f"{target}: no {kind.what} awaits approval"
    if decision == "approve" and read != str(asked["id"]):
        return f"{target}: the request ({kind.what}) is not the one you read: read it again"
    if decision == "approve" and asked["user_name"] == who:
        named = {"request": asked["id"], "asked_by": asked["user_name"]}
        await record(conn, Entry(who, kind.refusal, audited, named, outcome="refused: the one who asked"))
        return f"{target}: {kind.what} is approved by another operator than the one who asked"
    return None


_OPEN_ITEM = "SELECT true FROM recon_item WHERE id = $1 AND status = 'OPEN'"
# A black list entry's id: a removal asked names it, and its approval removes that entry only (one
# removed and listed again meanwhile, outside the console, is another).
_LISTED = "SELECT id FROM risk_list WHERE colour = 'black' AND list_of = $1 AND value = $2"
MAX_LISTED = 64  # the longest value a list entry takes (a code's fingerprint: 64 hex digits)


async def _decisions_of(conn: asyncpg.Connection, asked: str) -> None:
    """The decisions on what was ``asked`` (a hand-back, a resolution, a removal from the black list) held to this
    transaction: two operators approving at once are taken one after the other, the second finding
    it decided."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", asked)


def _local(request: web.Request, given: str | None = None) -> str:
    """Where to go after sign-in: a path on this console only (never another site: no scheme, no
    host, nothing a browser or URL library would drop or read as one, such as a tab or a backslash)."""
    target = request.query.get("next", "") if given is None else given
    url = urlsplit(target)
    if not re.fullmatch(r"/[!-~]*", target) or "\\" in target or target.startswith("//") or url.scheme or url.netloc:
        return "/transactions"
    return target


def _moment(text: str) -> dt.datetime | None:
    """A search's time bound, ``YYYY-MM-DDTHH:MM`` as the browser's picker sends it, in China time."""
    if not text:
        return None
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a time: {text[:40]!r} (YYYY-MM-DD HH:MM)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone(dt.timedelta(hours=8)))
