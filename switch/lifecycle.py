"""The transaction lifecycle: what happens to one request, from decoded message to answer.

``handle_frame`` decodes a frame, classifies and validates it, and runs its transaction type's
list of steps (``switch/steps.py``, the one table of every type's path); the steps are the
``_step_<name>`` methods here. A step that refuses ends the transaction with its response code.
Invariants kept here: nothing reaches a channel before its journal row is committed (write-ahead);
the outcome is committed before the answer leaves; a terminal + STAN + field 7 is one transaction
(identical retransmissions get the original answer, conflicting ones ``94``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import time
from collections.abc import Callable, Iterator

import asyncpg
import msgspec

from hsm import HsmError, PinBlockError
from protocols import response_codes as rc
from protocols.iso8583 import DecodeFailure, Message, Unparseable, answer_mti, decode
from protocols.masking import mask_pan
from protocols.messages import NOT_FOUND, PAY, PRECREATE, QUERY, ChannelResult, Outcome
from protocols.validation import (
    DECODES,
    MAC_VERIFIES,
    NETWORK_CODES,
    Rejection,
    TxnType,
    classify,
    mac_present,
    original_of_reversal,
    transmission_date,
    transmitted_at,
    transmitted_on,
    validate,
)
from risk.control import Risk
from risk.engine import Decision, Facts
from switch import undo
from switch.answers import answer, auth_id_for
from switch.config import ChannelSection, Config
from switch.gateway import PIN_REFUSED, SUSPENDED, ChannelGateway, PaymentRef, pin_refused, refused, risk_declined
from switch.journal import Journal, NewTxn, Report, State, TxnKey
from switch.journal.machine import EVENT_OF_OUTCOME, FINAL, GONE_BACK, TOLD_KEEP
from switch.journal.orders import keep_qr_code
from switch.lograte import RateLimitedLog
from switch.metrics import Metrics
from switch.routing import Router
from switch.shedding import LoadShedder
from switch.steps import HTTP_STEPS, STEPS, Context, Path, QrTerms, Reply, bind
from switch.terminal_keys import (
    PIN_FAILURE_WINDOW_S,
    KeyRequestReplayed,
    MacMismatch,
    NoPinKey,
    PinTriesExceeded,
    SignOnTooSoon,
    TerminalSecurity,
)

log = logging.getLogger("paysw.txn")
_ignored_log = RateLimitedLog(60.0)  # a peer sending answers by the thousand gets one line a minute

# Field 39 of an inquiry's answer (spec section 3): the original is paid, in progress, or failed / closed.
INQUIRY_CODE_OF_STATE = {
    State.APPROVED: rc.APPROVED,
    State.DECLINED: rc.DO_NOT_HONOUR,
    State.CANCELLED: rc.DO_NOT_HONOUR,
    State.REVERSED: rc.DO_NOT_HONOUR,
    State.VOIDED: rc.DO_NOT_HONOUR,
}
REQUEST_MTIS = frozenset({"0100", "0200", "0400", "0800"})
ANSWER_MARGIN_S = 0.25  # kept back from the deadline for recording the outcome and answering
# A request sent (field 7) this long before it came may be a terminal's resend of one finished:
# shedding it would answer 91 to a purchase the channel may have approved. Such requests are looked
# up in the journal before being shed, a few at once and briefly: past that (a flood of them, a slow
# journal) they are shed as any other, so that shedding stays quick and the RRN blocks every 91
# needs, fetched on the same pool, are not held up.
RESEND_AGE_S = 2.0
RESEND_LOOKUPS = 4  # at once
RESEND_LOOKUP_S = 0.2
PIN_RECALL_S = 1.0  # how long an unreadable PIN block waits for the journal to say the terminal's others
ORPHAN_GRACE_S = 5.0  # past its deadline, a RECEIVED transaction no front end is finishing is an orphan
# Bitmaps follow from the fields; the MAC differs per send; PIN block and track 2 are never kept,
# not even hashed (PCI DSS 3.3.1).
_NOT_HASHED = frozenset({"p", "1", "64", "52", "35"})


class CloseConnection(Exception):
    """The frame cannot be answered at all; only its connection is closed."""


def _key(message: Message, tx_date: dt.date) -> TxnKey:
    """The journal key of a request whose field 7 falls on ``tx_date``."""
    return TxnKey(tx_date, message["41"], message["11"], message["7"])


@functools.lru_cache(maxsize=8)
def _digits(day: dt.date) -> str:
    """``YYYYMMDD`` (an out_trade_no's start), formatted once a day, not once a request."""
    return f"{day:%Y%m%d}"


class Processor:
    def __init__(
        self,
        config: Config,
        journal: Journal,
        gateways: dict[str, ChannelGateway],
        metrics: Metrics,
        fingerprint: Callable[[str], bytes],
        shedder: LoadShedder,
        security: TerminalSecurity,
        risk: Risk,
    ) -> None:
        self._journal = journal
        self._risk = risk
        self._security = security
        self._shedder = shedder
        self._gateways = gateways
        self._metrics = metrics
        self._fingerprint = fingerprint
        self.configure(config)
        self._channels = config.channels
        self._deadline_s = config.switch.request_deadline_ms / 1000
        self._under_way: dict[TxnKey, Context] = {}  # by key, the arrival running it (its ``claim``)
        self._resend_lookups = 0  # under way now (RESEND_LOOKUPS)
        self._lookup_failures = RateLimitedLog(60.0)  # one line a minute while the journal cannot answer
        self._pin_warnings = RateLimitedLog(60.0)
        self._undelivered_log = RateLimitedLog(60.0)  # terminals hang up at will: a line a minute per channel
        self._background: set[asyncio.Task[None]] = set()
        timing = metrics.step_seconds if config.switch.step_timing else None
        self._paths: dict[TxnType, Path] = {t: bind(self, STEPS[t], t.value, timing) for t in TxnType}
        self._http_paths = {scene: bind(self, names, scene, timing) for scene, names in HTTP_STEPS.items()}

    def configure(self, config: Config) -> None:
        """The merchants, terminals and routing, at start and on a reload (``switch.live``): a
        transaction under way keeps the merchant its first step read (``Context.merchant``)."""
        self._router = Router(config.routing)
        self._merchants = {m.id: m for m in config.merchants}
        self._terminals = {t.id: t for t in config.terminals}

    # -- one frame -------------------------------------------------------------------------

    def overloaded(self, peer: str) -> str | None:
        """Why the switch is over capacity for a new request from ``peer`` now
        (``switch.shedding``), None when it is not."""
        return self._shedder.overloaded(peer)

    async def handle_frame(
        self,
        frame: bytes,
        arrived: float,
        overload: str | None = None,
        peer: str = "",
        connected: Callable[[], bool] | None = None,
    ) -> bytes | None:
        """The encoded answer to one frame, None when it needs none (it was itself an answer).
        ``arrived``: when its bytes were read (``time.monotonic()``); a transaction counts its
        deadline, and the admission its wait, from then, the time it queued in the event loop
        included. ``overload``: why the switch was over capacity when it was read (it is shed,
        ``switch.intake``), None when it was not. ``peer``: whose share of the admission it takes
        (``switch.shedding.peer_of`` its connection's source address). ``connected``: whether the
        connection its answer goes back on is still open (``undelivered``).
        Raises ``CloseConnection`` when the frame is not ISO 8583 at all."""
        started = time.monotonic()
        try:
            decoded = decode(frame)
        except Unparseable as exc:
            raise CloseConnection(str(exc)) from None
        mti = (decoded.partial if isinstance(decoded, DecodeFailure) else decoded).get("t", "")
        self._metrics.requests.labels(mti if mti in REQUEST_MTIS else "other").inc()  # bounded label
        if isinstance(decoded, DecodeFailure):
            return await self._reject(decoded.partial, DECODES.reject(decoded.field, decoded.reason))
        message = decoded
        if answer_mti(message["t"]) is None:
            _ignored_log.warn(log, message["t"], "message that is not a request ignored", mti=message["t"])
            return None
        t: Context | None = None
        try:
            txn_type = classify(message)
            rejection = txn_type if isinstance(txn_type, Rejection) else validate(txn_type, message)
            if rejection is not None:
                return await self._reject(message, rejection)
            t = Context(message, frame, arrived, txn_type, overload=overload, peer=peer, connected=connected)
            out = await self._run(t)
        except Exception:
            log.exception("unexpected error while processing", extra={"mti": message.get("t")})
            out = answer(message, rc.SYSTEM_MALFUNCTION, rrn=await self._rrn_or_blank(message))
        self._count(message, out, "-" if t is None else t.channel, started)
        return self._security.encode(out, None if t is None else t.mak)

    async def handle_order(self, message: Message, scene: str, rrn: str, qr: QrTerms | None = None) -> Reply:
        """A merchant's order over HTTP (``switch.merchant``), as the ISO 8583 message it amounts
        to (terminal ``HTTP``, its RRN for a STAN), run through its scene's list
        (``steps.HTTP_STEPS``): what the merchant is told. A QR order comes with its channel
        (``qr.channel``) and terms."""
        txn_type = TxnType.REFUND if scene == "refund" else TxnType.PURCHASE
        t = Context(message, b"", time.monotonic(), txn_type, rrn=rrn, qr=qr, peer=f"merchant:{message['42']}")
        if qr is not None:
            t.channel = qr.channel
        try:
            await self._run(t, self._http_paths[scene])
        except Exception:
            log.exception("unexpected error while processing an order", extra={"rrn": rrn})
            return Reply(rc.SYSTEM_MALFUNCTION, rrn)
        finally:
            self._metrics.requests.labels("http").inc()
        assert t.reply is not None
        return t.reply

    async def _run(self, t: Context, path: Path | None = None) -> Message:
        """Run ``t``'s steps until one ends the transaction, then its answer step."""
        path = path or self._paths[t.txn_type]
        try:
            for step, is_async in path.steps:
                end = await step(t) if is_async else step(t)
                if end is not None:
                    if t.reply is None:
                        t.reply = Reply(end, t.rrn or await self._rrn_or_blank(t.message))
                    break
        except BaseException as exc:
            if t.claim is not None:
                t.claim.set_exception(exc)
                t.claim.exception()  # retrieved: retransmissions waiting on it get the same error
            raise
        else:
            if t.claim is not None:
                t.claim.set_result(t.reply)  # type: ignore[arg-type]  (set by the step that ended)
        finally:
            if t.in_flight:
                self._shedder.finish(t.waiting, t.peer)
            if t.claim is not None:
                del self._under_way[t.txn.key]  # type: ignore[union-attr]  (claimed with its row)
        return path.answer(t)

    def _under_way_now(self, message: Message) -> bool:
        """Whether this is a retransmission of a transaction under way here: it is never shed, it
        gets the original's answer."""
        tx_date = transmission_date(message["7"], dt.datetime.now(dt.UTC).date())
        return tx_date is not None and _key(message, tx_date) in self._under_way

    async def _journaled(self, t: Context) -> bool:
        """Whether a request of a configured terminal sent ``RESEND_AGE_S`` or more before it was
        read is in the journal: a resend of one finished, or under way at another front end. One
        key lookup, only for requests that old: a new one, sent just now, is shed without it (the
        work shedding saves). An inquiry is never journaled, so never looked up. (A resend from a
        terminal whose clock runs ahead may look new, and is shed as before.)"""
        message = t.message
        if t.txn_type is TxnType.INQUIRY or message["41"] not in self._terminals:
            return False
        read = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=time.monotonic() - t.arrived)
        sent = transmitted_at(message["7"], read)
        if sent is None or (read - sent).total_seconds() < RESEND_AGE_S:
            return False
        if self._resend_lookups >= RESEND_LOOKUPS:
            self._metrics.resend_lookups.labels("busy").inc()
            return False
        self._resend_lookups += 1
        try:
            async with asyncio.timeout(RESEND_LOOKUP_S):
                found = await self._journal.find(_key(message, sent.date()))
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            self._metrics.resend_lookups.labels("failed").inc()
            self._lookup_failures.warn(log, "resend", "resend look-up failed: shed", error=type(exc).__name__)
            return False
        finally:
            self._resend_lookups -= 1
        self._metrics.resend_lookups.labels("found" if found is not None else "absent").inc()
        return found is not None

    async def _reject(self, message: Message, rejection: Rejection) -> bytes | None:
        """The answer to a request refused before its steps (it cannot be decoded, or classified,
        or breaks a rule of its transaction type)."""
        if answer_mti(message.get("t", "")) is None:
            return None
        out = answer(message, self._rejected(message, rejection), rrn=await self._rrn_or_blank(message))
        self._count(message, out, "-", None)
        return self._security.encode(out)

    def _rejected(self, message: Message, rejection: Rejection) -> str:
        """Count and log a rule's rejection; its response code."""
        self._metrics.rejected.labels(rejection.field, rejection.rule).inc()
        log.debug(
            "request rejected",
            extra={
                "mti": message.get("t"),
                "reject": str(rejection),
                "terminal": message.get("41", ""),
                "stan": message.get("11", ""),
            },
        )
        return rejection.code

    async def _rrn_or_blank(self, message: Message) -> str:
        mti = answer_mti(message.get("t", ""))
        return await self._journal.next_rrn() if mti in ("0210", "0110", "0410") else ""

    def _count(self, request: Message, out: Message, channel: str, started: float | None) -> None:
        mti = request.get("t", "?")
        self._metrics.answers.labels(mti if mti in REQUEST_MTIS else "other", channel, out.get("39", "?")).inc()
        if started is not None:
            self._metrics.latency.labels(channel).observe(time.monotonic() - started)

    # -- steps every type shares -------------------------------------------------------------

    async def _step_mac(self, t: Context) -> str | None:
        if not self._security.needs_mac(t.message):
            return None
        missing = mac_present(t.message)
        if missing is not None:
            return self._rejected(t.message, missing)
        try:
            t.mak = await self._security.verify(t.message, t.frame)
        except MacMismatch:  # (warned of, rate-limited, by the security)
            return self._rejected(t.message, MAC_VERIFIES.reject("64", "MAC does not verify"))
        return None

    async def _step_shed(self, t: Context) -> str | None:
        """91 at once while the switch is over capacity, or was when the request was read, unless
        this retransmits one under way or already journaled (it gets the original's answer)."""
        overload = t.overload or self._shedder.overloaded(t.peer)
        if overload is not None and not self._under_way_now(t.message) and not await self._journaled(t):
            self._metrics.shed.labels(overload).inc()
            return rc.CHANNEL_UNAVAILABLE
        self._shedder.admit(t.peer)
        t.in_flight = t.waiting = True
        return None

    def _step_terminal(self, t: Context) -> str | None:
        return None if t.message["41"] in self._terminals else rc.INVALID_MERCHANT

    def _step_terminal_and_merchant(self, t: Context) -> str | None:
        terminal = self._terminals.get(t.message["41"])
        if terminal is None or terminal.merchant != t.message["42"]:
            return rc.INVALID_MERCHANT
        t.merchant = self._merchants[terminal.merchant]
        return None

    def _step_merchant(self, t: Context) -> str | None:
        t.merchant = merchant = self._merchants.get(t.message["42"])
        if merchant is None:
            return rc.INVALID_MERCHANT
        return rc.NOT_PERMITTED if merchant.suspended else None

    def _step_transmission_date(self, t: Context) -> str | None:
        tx_date = transmitted_on(t.message, dt.datetime.now(dt.UTC).date())
        if isinstance(tx_date, Rejection):
            return self._rejected(t.message, tx_date)
        t.tx_date = tx_date
        return None

    async def _step_rrn(self, t: Context) -> None:
        t.rrn = await self._journal.next_rrn()

    async def _step_duplicate_check(self, t: Context) -> str | None:
        """Invariant 2: the first arrival of a key runs; any other gets the first one's answer
        (``94`` when its content differs). Retransmissions of one already finished are found by
        the write-ahead (a void's or refund's, by ``journaled``)."""
        txn = t.txn = self._new_txn(t)
        first = self._under_way.get(txn.key)
        if first is None:
            t.claim = asyncio.get_running_loop().create_future()
            self._under_way[txn.key] = t
            return None
        assert first.txn is not None and first.claim is not None  # (set before it was put under way)
        if first.txn.request_hash != txn.request_hash:
            return rc.DUPLICATE_TRANSMISSION
        if t.waiting:  # the original's wait, at a channel maybe hung, is not one for the admission
            t.waiting = False
            self._shedder.stopped_waiting(t.peer)
        first.resends += (t.connected,)  # its answer may go there (``undelivered``)
        t.reply = await asyncio.shield(first.claim)
        return t.reply.code

    def _step_admit(self, t: Context) -> None:
        """The merchant's and terminal's suspension (57) and the channel's limits (91), checked
        after the duplicate check and a purchase's write-ahead, so that a retransmission of a
        transaction under way or done gets its answer even when its merchant or terminal was
        suspended since, or the channel is full or its circuit open (a void's or refund's
        write-ahead comes after: it replays a journaled one's answer first). A refusal is
        journaled like a channel's answer, and nothing is sent."""
        txn = t.txn
        assert txn is not None
        if t.result is not None:  # declined by risk
            return
        terminal = self._terminals.get(txn.terminal_id)
        if t.merchant.suspended or (terminal is not None and terminal.suspended):
            self._metrics.refused.labels(txn.channel, SUSPENDED).inc()
            t.result = ChannelResult(0, Outcome.DECLINED, rc.NOT_PERMITTED, SUSPENDED, "suspended", sent=False)
            return
        reason = self._gateways[txn.channel].admit(txn.merchant_id)
        if reason is not None:
            self._metrics.refused.labels(txn.channel, reason).inc()
            t.result = refused(0, reason, "refused before the channel: " + reason.lower())

    def _step_answer(self, t: Context) -> Message:
        reply = t.reply
        assert reply is not None, f"{t.txn_type}: no step replied"
        out = answer(t.message, reply.code, rrn=reply.rrn, auth_id=reply.auth_id, channel_txn_id=reply.channel_txn_id)
        if t.answer_fields:
            out.update(t.answer_fields)
        return out

    # -- network management ------------------------------------------------------------------

    async def _step_network_management(self, t: Context) -> str | None:
        message = t.message
        terminal_id, code = message["41"], message["70"]
        log.debug("network management", extra={"terminal": terminal_id, "what": NETWORK_CODES[code]})
        # Its MAC was verified by the mac step: a key change's under the MAK, a sign-on's under the
        # master key's sign-on variant (see new_working_keys for what else is checked).
        if code in ("001", "101") and self._security.has_master_key(terminal_id):
            try:
                keys = await self._security.new_working_keys(terminal_id, code == "001", message["7"], message["11"])
            except SignOnTooSoon:
                return rc.EXCEEDS_FREQUENCY_LIMIT
            except KeyRequestReplayed:
                return rc.DUPLICATE_TRANSMISSION
            except asyncpg.UniqueViolationError:  # another front end changed them this instant
                return rc.SYSTEM_MALFUNCTION
            t.answer_fields = {"62": keys}
            return rc.APPROVED
        if code == "101":  # no master key to send new keys under
            return rc.INVALID_TRANSACTION
        return rc.APPROVED

    # -- inquiry -----------------------------------------------------------------------------

    async def _step_inquire(self, t: Context) -> str:
        """0110: the original's current state in field 39 and its amount in field 4."""
        found = await self._journal.find_by_rrn(t.message["37"], t.message["42"])
        if found is None:
            return rc.ORIGINAL_NOT_FOUND
        state, amount_fen, reversing = found
        t.answer_fields = {"4": f"{amount_fen:012d}"}
        if reversing:  # acknowledged: its money goes back, though the channel may not have it back yet
            return rc.DO_NOT_HONOUR
        return INQUIRY_CODE_OF_STATE.get(state, rc.IN_PROGRESS)

    # -- reversal ----------------------------------------------------------------------------

    def _step_original_of_reversal(self, t: Context) -> str | None:
        original = original_of_reversal(t.message, dt.datetime.now(dt.UTC).date())
        if isinstance(original, Rejection):
            return self._rejected(t.message, original)
        t.reversed_key = TxnKey(original.date, t.message["41"], original.stan, original.transmitted)
        return None

    async def _step_reverse(self, t: Context) -> str:
        """0410 ``00`` as soon as the reversal is committed (the resolver then cancels the original
        at its channel, retrying until the channel confirms, across restarts); ``25`` when the
        original is unknown, though it stays recorded so that an original arriving later is
        refused. Idempotent: a retransmission gets the same answer."""
        assert t.reversed_key is not None
        message = t.message
        answer_rrn, code = await self._journal.request_reversal(
            t.reversed_key, message["11"], message["7"], int(message["4"]), t.rrn
        )
        log.debug("reversal recorded", extra={"rrn": answer_rrn, "terminal": message["41"], "code": code})
        t.reply = Reply(code, answer_rrn)
        return code

    # -- void and refund: each a transaction of its own, carried out at the purchase's channel --

    async def _step_original(self, t: Context) -> str | None:
        t.original = await self._journal.original(t.message["37"], t.message["42"])
        if t.original is None:
            return rc.ORIGINAL_NOT_FOUND
        t.channel = t.original.channel
        return None

    async def _step_journaled(self, t: Context) -> str | None:
        """A void or refund in the journal already (a retransmission of one finished, or under way
        at another front end): its first answer, before anything judges it again."""
        assert t.txn is not None
        return await self._replay(t) if await self._journal.find(t.txn.key) is not None else None

    async def _step_write_ahead_undo(self, t: Context) -> str | None:
        """A void (same day, whole amount) or a refund (any part of what is left, within its
        channel's ``refund_days``) reserves its amount on the purchase as it is written, a refund
        with its risk decision. One refused before its channel (``risk_decide``, ``admit``) is
        written DECLINED at once, and answered."""
        txn, original, decision, result = t.txn, t.original, t.decision, t.result
        assert txn is not None and original is not None
        refused = None if result is None else undo.report(txn.key, txn.rrn, result)
        hits = decision.hits if decision else ()
        try:
            refusal = await self._journal.write_ahead_undo(
                txn, original, hits, refused, refund_days=self._channel_section(txn).refund_days
            )
        except asyncpg.UniqueViolationError:  # another front end wrote this key first
            return await self._replay(t)
        except Exception:
            log.exception("write-ahead failed; nothing was sent", extra={"rrn": txn.rrn})
            return rc.SYSTEM_MALFUNCTION
        if refusal is not None:
            self._metrics.refused.labels(txn.channel, refusal.reason).inc()
            log.info(f"{t.txn_type.value} refused: {refusal.reason}", extra={"rrn": txn.rrn, "original": original.rrn})
            return refusal.code
        if decision is not None:
            self._count_hits(decision)  # written: never a retransmission's, nor one its purchase refused
        return None if refused is None else refused.answer

    async def _step_send_undo(self, t: Context) -> None:
        txn, original = t.txn, t.original
        assert txn is not None and original is not None and t.result is None  # a refused one ended at its write
        self._reaching_channel(t)
        t.result = await undo.call(
            self._gateways[txn.channel],
            t.txn_type.value,
            txn.out_trade_no,
            txn.amount_fen,
            original,
            self._merchant_channel_id(t),
            self._deadline(txn),
        )

    async def _step_record_undo(self, t: Context) -> str | None:
        txn, original, result = t.txn, t.original, t.result
        assert txn is not None and original is not None and result is not None
        what = t.txn_type.value
        try:
            code, auth_id = await undo.record(self._journal, txn.key, txn.rrn, what, txn.amount_fen, original, result)
        except Exception:
            # The row stays open and the resolver sends the same call again until the channel
            # decides it (a void or refund keeps what the channel did): "in progress", so that the
            # merchant asks (0100) rather than refunding again under a new STAN.
            log.exception(f"recording the {what} failed", extra={"rrn": txn.rrn})
            return rc.IN_PROGRESS
        log.debug(f"{what} done", extra={"rrn": txn.rrn, "original": original.rrn, "code": code})
        t.reply = Reply(code, txn.rrn, auth_id, result.channel_txn_id)
        return None

    # -- purchase ----------------------------------------------------------------------------

    def _step_route(self, t: Context) -> str | None:
        routed = self._router.route(t.message["2"], t.message["22"])
        if isinstance(routed, Rejection):
            return self._rejected(t.message, routed)
        t.channel = routed
        return None

    def _step_channel_allowed(self, t: Context) -> str | None:
        assert t.merchant is not None
        if t.channel not in t.merchant.channels:
            return rc.NOT_PERMITTED
        if t.channel not in self._gateways:
            return rc.CHANNEL_UNAVAILABLE
        return None

    def _step_gray(self, t: Context) -> str | None:
        """A gray route's merchants go elsewhere (``switch.routing``); the journal names the
        channel the purchase went to."""
        assert t.merchant is not None
        t.channel = self._router.divert(t.channel, t.merchant.id)
        return None if t.channel in self._gateways else rc.CHANNEL_UNAVAILABLE

    async def _step_pin(self, t: Context) -> None:
        """Field 52, translated to the channel's zone PIN key: it goes to the channel and nowhere
        else (the journal keeps the card number masked and hashed, and no PIN at all). Only for a
        purchase about to be sent: a retransmission was answered as its first arrival was, so a
        terminal's allowance of unreadable blocks (``translate_pin``) never turns the answer to
        a purchase it made into a refusal; and one refused already (risk, suspension, the
        channel's limits) is answered as such whatever its block holds, which would otherwise
        tell a readable block from another. A block not translated is the purchase's result,
        recorded DECLINED, never sent."""
        message = t.message
        if "52" not in message or t.result is not None:
            return
        terminal = message["41"]
        # Others may have come to other front ends; once used up here, the journal can add nothing.
        if self._security.pin_failures_counted(terminal) and not self._security.pin_locked(terminal):
            await self._recall_pin_failures(terminal)
        try:
            request = (message["11"], message["7"])
            t.pin_block = self._security.translate_pin(terminal, message["52"], message["2"], t.channel, request, t.mak)
            return
        except NoPinKey:
            code, reason = rc.FORMAT_ERROR, "no_key"  # the configuration's, whatever the block holds
        except PinTriesExceeded:
            code, reason = rc.NOT_PERMITTED_AT_TERMINAL, "tries"
        except PinBlockError:  # as an issuer answers a wrong PIN, not 30 (TerminalSecurity.translate_pin)
            code, reason = rc.DO_NOT_HONOUR, "unreadable"
            await self._recall_pin_failures(terminal)
        except HsmError:  # the HSM's trouble, not the terminal's
            code, reason = rc.SYSTEM_MALFUNCTION, "hsm"
        self._metrics.pin_refused.labels(reason).inc()
        # Whoever holds a terminal's keys can provoke these at will: a line per terminal and reason a minute.
        self._pin_warnings.warn(
            log, (terminal, reason), "PIN block not translated", terminal=terminal, stan=message["11"], reason=reason
        )
        t.result = pin_refused(code, reason)

    async def _recall_pin_failures(self, terminal: str) -> None:
        """The terminal's unreadable PIN blocks of the hour that the journal holds, every front
        end's (``TerminalSecurity.recall_pin_failures``); while it cannot say, this process's
        count stands."""
        since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=PIN_FAILURE_WINDOW_S)
        limit = self._security.pin_failure_limit
        try:
            async with asyncio.timeout(PIN_RECALL_S):
                recorded = await self._journal.refused_since(terminal, PIN_REFUSED, rc.DO_NOT_HONOUR, since, limit)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            self._lookup_failures.warn(
                log, "pin", "PIN failures not read from the journal: this front end's count stands",
                error=type(exc).__name__,
            )  # fmt: skip
            return
        self._security.recall_pin_failures(terminal, {request: when.timestamp() for request, when in recorded.items()})

    async def _step_write_ahead(self, t: Context) -> str | None:
        """Invariant 1: the row is committed before anything is sent."""
        txn = t.txn
        assert txn is not None
        try:
            inserted = await self._journal.write_ahead(txn)
        except Exception:
            log.exception("write-ahead failed; nothing was sent", extra={"rrn": txn.rrn})
            return rc.SYSTEM_MALFUNCTION
        return None if inserted else await self._replay(t)

    def _step_risk_ask(self, t: Context) -> None:
        """The risk decision begun (``risk.control.Risk.begin``): what the payment (a purchase, or a
        refund) alone decides, and the counters' question on its way while the write-ahead
        commits."""
        txn = t.txn
        assert txn is not None
        merchant = t.merchant
        assert merchant is not None
        local = t.message["12"]
        t.risk = self._risk.begin(
            Facts(
                txn.channel, txn.merchant_id, merchant.mcc, txn.terminal_id, txn.amount_fen, txn.pan_hash.hex(),
                dt.time(int(local[:2]) % 24, int(local[2:4]) % 60), merchant.onboarded, txn.tx_date,
                t.txn_type is TxnType.REFUND,
            )
        )  # fmt: skip

    async def _step_risk(self, t: Context) -> str | None:
        """A payment's risk rules (``risk/``), decided once its row is written. The rules that fire
        are journaled before anything is sent (a payment whose decision cannot be journaled is not
        sent either); an enforced decline becomes the transaction's result, recorded DECLINED with
        the rule's code, never sent. (Should its front end stall past the deadline meanwhile, the
        resolver only asks the channel about a payment: it never pays it.)"""
        txn, decision = t.txn, await self._decided(t)
        assert txn is not None
        if not decision.hits:
            return None
        self._count_hits(decision)
        try:
            await self._journal.record_decision(txn, decision.hits)
        except Exception:
            log.exception("risk decision not journaled; the payment is not sent", extra={"rrn": txn.rrn})
            t.result = refused(0, "RISK", "risk decision not journaled")
            return None
        hit = decision.decline
        if hit is not None:  # journaled above: a resolver that finds the row open never sends it either
            t.result = risk_declined(hit.rule_id, hit.code)
        return None

    async def _step_risk_decide(self, t: Context) -> None:
        """A refund's risk decision, before its row is written with it (``write_ahead_undo``); an
        enforced decline becomes its result."""
        if (hit := (await self._decided(t)).decline) is not None:
            t.result = risk_declined(hit.rule_id, hit.code)

    async def _decided(self, t: Context) -> Decision:
        assert t.risk is not None
        t.decision = decision = await t.risk
        return decision

    def _count_hits(self, decision: Decision) -> None:
        for hit in decision.hits:
            self._metrics.risk_hits.labels(hit.rule_id, hit.action, hit.mode).inc()

    async def _step_send_and_poll(self, t: Context) -> None:
        """Pay; while the customer is still confirming, query on the channel's schedule until the
        deadline draws near (then the terminal gets ``09`` and the resolver carries on)."""
        txn = t.txn
        assert txn is not None
        if t.result is not None:  # not admitted
            return
        gateway = self._gateways[txn.channel]
        deadline = self._deadline(txn)
        ref = self._ref(t)
        with self._calling(t):
            result = await gateway.call(
                PAY,
                ref,
                deadline,
                auth_code=t.message["2"],
                pin_block=t.pin_block,
                on_late=self._keep_late(txn, PAY),
            )
            interval = self._channel_section(txn).query_interval_ms / 1000
            while result.outcome is Outcome.PENDING and time.time() + interval < deadline - ANSWER_MARGIN_S:
                await asyncio.sleep(interval)
                polled = await gateway.call(QUERY, ref._replace(channel_txn_id=result.channel_txn_id), deadline)
                # A query that never reached the channel (circuit open, limits) tells nothing.
                if polled.outcome is Outcome.APPROVED or (
                    polled.sent and polled.outcome is Outcome.DECLINED and polled.channel_code != NOT_FOUND
                ):
                    result = polled
            t.result = result

    async def _step_precreate(self, t: Context) -> None:
        """A QR order created at its channel: the code the customer scans, or why not."""
        txn, qr = t.txn, t.qr
        assert txn is not None and qr is not None
        if t.result is not None:  # not admitted
            return
        ref = self._ref(t)._replace(subject=qr.subject, notify_url=qr.notify_url, expires=qr.expires)
        with self._calling(t):
            result = await self._gateways[txn.channel].call(
                PRECREATE, ref, self._deadline(txn), on_late=self._keep_late(txn, PRECREATE)
            )
        if result.outcome is Outcome.UNKNOWN:
            # The channel may have the order, and the customer may pay it: the merchant is told to
            # wait (09), so that such a payment is kept, never returned (``machine.promise``).
            result = msgspec.structs.replace(result, response_code=rc.IN_PROGRESS)
        t.result = result

    async def _step_qr_code(self, t: Context) -> None:
        """The code kept with the merchant's order before the order is recorded PENDING, so that an
        order the merchant finds open shows what the customer scans."""
        txn, result = t.txn, t.result
        assert txn is not None and result is not None
        if not result.qr_code:
            return
        try:
            await keep_qr_code(self._journal.pool, txn.rrn, result.qr_code)
        except Exception:  # recorded PENDING all the same: nobody can pay it, and it is closed at its expiry
            log.exception("keeping the QR code failed", extra={"rrn": txn.rrn})

    def _step_undelivered(self, t: Context) -> None:
        """An answer with nowhere to go: the terminal's connection closed while the channel was
        asked (it hung up, the network dropped it, the front end's drain gave up on it), and no
        retransmission of it waits here on a connection still open. It is recorded as ``05``, heard by nobody,
        and the machine's promise then has the money go back (an answer other than ``00`` or
        ``09`` keeps none: ``machine.promise``), as after a crash before the answer: the resolver
        cancels it at the channel. A terminal that lost its state sends no 0400, and without the
        answer's RRN cannot inquire. A connection lost later, while the outcome is recorded and
        the answer written, is the terminal's 0400's to cover, as is an answer the network loses.
        (A resend at another front end is not seen here: it is answered ``09``, then ``05``. A
        hang-up is seen while the connection reads: one paused, its in-flight limit reached, its
        writes backed up or its front end draining, shows it once reading resumes.)"""
        txn, result = t.txn, t.result
        assert txn is not None and result is not None
        if t.connected is None or t.connected() or any(c is None or c() for c in t.resends):
            return
        if self._reply_of(txn, result).code not in TOLD_KEEP:  # an answer keeping no money already
            return
        self._metrics.undelivered.labels(txn.channel, result.outcome.value).inc()
        self._undelivered_log.warn(
            log,
            txn.channel,
            "answer undeliverable, its connection closed: recorded 05, its money to go back",
            rrn=txn.rrn,
            terminal=txn.terminal_id,
            channel=txn.channel,
            outcome=result.outcome.value,
        )
        t.reply = Reply(rc.DO_NOT_HONOUR, txn.rrn, "", result.channel_txn_id)

    async def _step_record(self, t: Context) -> str | None:
        """Invariant: the outcome is committed before the answer leaves. The answer is the
        channel's result's, unless ``undelivered`` decided it."""
        txn, result = t.txn, t.result
        assert txn is not None and result is not None
        reply = t.reply or self._reply_of(txn, result)
        report = Report(
            *txn.key,
            EVENT_OF_OUTCOME[result.outcome],
            reply.code,
            reply.auth_id,
            result.channel_code,
            result.channel_message[:200],
            result.channel_txn_id,
            dt.datetime.now(dt.UTC) + dt.timedelta(milliseconds=self._channel_section(txn).query_interval_ms),
            first=True,
        )
        try:
            moved = await self._journal.record(report)
        except Exception:
            # The commit may have landed all the same (a connection lost after it, a timeout
            # during it). A refusal moved no money either way; anything else is "in progress":
            # landed, an inquiry gets its answer; not, the row stays RECEIVED, told nothing, and
            # the resolver asks the channel and ends it (returning any money) for an inquiry.
            log.exception("recording the outcome failed", extra={"rrn": txn.rrn, "outcome": result.outcome.value})
            return reply.code if result.outcome is Outcome.DECLINED else rc.IN_PROGRESS
        if moved is None:  # a resolver took it first (this front end overran its deadline): its word stands
            if t.qr is None:  # (a QR order's notification may simply have come first)
                self._metrics.overtaken.labels(txn.channel).inc()
            return await self._replay(t)
        log.debug(
            "purchase done",
            extra={
                "rrn": txn.rrn,
                "terminal": txn.terminal_id,
                "stan": txn.stan,
                "pan": txn.pan_masked,
                "channel": txn.channel,
                "code": reply.code,
            },
        )
        t.reply = reply
        return None

    # -- helpers of the steps ----------------------------------------------------------------

    def _ref(self, t: Context) -> PaymentRef:
        txn = t.txn
        assert txn is not None
        return PaymentRef(
            txn.out_trade_no,
            txn.amount_fen,
            self._merchant_channel_id(t),
            txn.terminal_id,
            txn.received_at.timestamp(),
        )

    @contextlib.contextmanager
    def _calling(self, t: Context) -> Iterator[None]:
        """A payment's call to its channel: counted in flight, timed, and told to the shedder."""
        started = time.monotonic()
        self._metrics.in_flight.labels(t.channel).inc()
        self._reaching_channel(t)
        try:
            yield
        finally:
            self._metrics.in_flight.labels(t.channel).dec()
            self._metrics.channel_latency.labels(t.channel).observe(time.monotonic() - started)

    def _reaching_channel(self, t: Context) -> None:
        """``t`` no longer waits for its channel call (the shedder's count; once, for its first)."""
        if t.waiting:
            t.waiting = False
            self._shedder.calling_channel(t.arrived, t.peer)

    def _new_txn(self, t: Context) -> NewTxn:
        """The row ``t`` writes ahead (a void's or refund's with its purchase's card)."""
        message, original, tx_date = t.message, t.original, t.tx_date
        assert tx_date is not None
        if original is None and "2" in message:
            pan = message["2"]
            pan_masked, pan_hash = mask_pan(pan), self._fingerprint(pan)
        elif original is None:  # a QR order: the customer's code is the channel's, never the switch's
            pan_masked, pan_hash = "", b""
        else:
            pan_masked, pan_hash = original.pan_masked, original.pan_hash
        now = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=time.monotonic() - t.arrived)
        content = "|".join(f"{k}={message[k]}" for k in sorted(message) if k not in _NOT_HASHED)
        if t.qr is not None:  # the merchant's choice of channel is part of the order: another is another request
            content += f"|channel={t.channel}"
        return NewTxn(
            tx_date=tx_date,
            terminal_id=message["41"],
            stan=message["11"],
            transmitted=message["7"],
            rrn=t.rrn,
            txn_type=t.txn_type.value,
            mti=message["t"],
            processing_code=message["3"],
            merchant_id=message["42"],
            amount_fen=int(message["4"]),
            currency=message["49"],
            local_time=message["12"],
            local_date=message["13"],
            entry_mode=message.get("22", ""),
            pan_masked=pan_masked,
            pan_hash=pan_hash,
            channel=t.channel,
            out_trade_no=_digits(tx_date) + t.rrn,
            request_hash=self._fingerprint(content),
            received_at=now,
            # Should this front end vanish, the resolver takes the transaction after its deadline.
            next_check_at=now + dt.timedelta(seconds=self._deadline_s + ORPHAN_GRACE_S),
            expires_at=None if t.qr is None else dt.datetime.fromtimestamp(t.qr.expires, dt.UTC),
        )

    async def _replay(self, t: Context) -> str:
        """Not written: the key is already in the journal (another front end, or before a
        restart), or its reversal arrived before it. Ends ``t`` with what its first arrival was
        told."""
        txn = t.txn
        assert txn is not None
        stored = await self._journal.find(txn.key)
        if stored is None:
            if await self._journal.reversed_before_arrival(txn.key):
                log.debug("original refused: its reversal came first", extra={"rrn": txn.rrn})
                return rc.DO_NOT_HONOUR
            return rc.SYSTEM_MALFUNCTION
        if stored.request_hash != txn.request_hash:
            return rc.DUPLICATE_TRANSMISSION
        if stored.reversing or stored.state in GONE_BACK:  # told 00 maybe, but its money went back since
            t.reply = Reply(rc.DO_NOT_HONOUR, stored.rrn)
        elif stored.state in FINAL and stored.response_code:
            t.reply = Reply(stored.response_code, stored.rrn, stored.auth_id or "", stored.channel_txn_id or "")
        else:
            t.reply = Reply(rc.IN_PROGRESS, stored.rrn)
        return t.reply.code

    def _deadline(self, txn: NewTxn) -> float:
        """When the channel calls must be over: counted from the request's arrival, so that the
        resolver, which takes a RECEIVED row only past this plus ``ORPHAN_GRACE_S``, never finds
        one still under way here however long the write-ahead took."""
        return txn.received_at.timestamp() + self._deadline_s - ANSWER_MARGIN_S

    def _keep_late(self, txn: NewTxn, op: str) -> Callable[[ChannelResult], None]:
        """Journal a channel answer that came after the terminal (or merchant) was answered; a
        QR order's code, so that the merchant finds it with the order (left UNKNOWN: the resolver
        asks the channel, and a notification ends it)."""

        async def keep(result: ChannelResult) -> None:
            try:
                await self._journal.record_late(
                    txn.key, op, result.outcome.value, result.channel_code, result.channel_txn_id
                )
                if result.qr_code:
                    await keep_qr_code(self._journal.pool, txn.rrn, result.qr_code)
            except Exception:  # the resolver still finishes the transaction from the channel's side
                log.exception("keeping a late answer failed", extra={"rrn": txn.rrn})

        def schedule(result: ChannelResult) -> None:
            task = asyncio.get_running_loop().create_task(keep(result))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

        return schedule

    def _reply_of(self, txn: NewTxn, result: ChannelResult) -> Reply:
        if result.outcome is Outcome.APPROVED:
            return Reply(rc.APPROVED, txn.rrn, auth_id_for(txn.rrn), result.channel_txn_id)
        return Reply(result.response_code, txn.rrn, "", result.channel_txn_id)

    def _channel_section(self, txn: NewTxn) -> ChannelSection:
        return self._channels[txn.channel]

    def _merchant_channel_id(self, t: Context) -> str:
        assert t.merchant is not None and t.txn is not None
        return t.merchant.channel_ids.get(t.txn.channel, "")
