"""The transaction lifecycle: what happens to one request, from decoded message to answer.

A purchase passes, in order: merchant check -> route -> capacity -> write-ahead -> channel call
-> outcome recorded -> answer. A step that refuses ends the transaction with its response code.
Invariants kept here: nothing reaches a channel before its journal row is committed (write-ahead);
the outcome is committed before the answer leaves; a terminal + STAN + field 7 is one transaction
(identical retransmissions get the original answer, conflicting ones ``94``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from hsm import HsmError, KeyRecord, PinBlockError
from protocols import response_codes as rc
from protocols.iso8583 import DecodeFailure, Message, Unparseable, answer_mti, decode
from protocols.masking import mask_pan
from protocols.messages import NOT_FOUND, PAY, QUERY, ChannelResult, Outcome
from protocols.validation import FIELD_RULES, NETWORK_CODES, Kind, Rejection, classify, validate
from switch import undo
from switch.answers import answer, auth_id_for
from switch.config import ChannelSection, Config
from switch.gateway import ChannelGateway, PaymentRef, refused
from switch.journal import Journal, NewTxn, Original, Report, State, TxnKey
from switch.journal.machine import EVENT_OF_OUTCOME, FINAL
from switch.lograte import RateLimitedLog
from switch.metrics import Metrics
from switch.routing import Router
from switch.shedding import LoadShedder
from switch.terminal_keys import MacMismatch, MacMissing, NoPinKey, SignOnTooSoon, TerminalSecurity

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
ORPHAN_GRACE_S = 5.0  # past its deadline, a RECEIVED transaction no front end is finishing is an orphan
# Bitmaps follow from the fields; the MAC differs per send; PIN block and track 2 are never kept,
# not even hashed (PCI DSS 3.3.1).
_NOT_HASHED = frozenset({"p", "1", "64", "52", "35"})


class CloseConnection(Exception):
    """The frame cannot be answered at all; only its connection is closed."""


@dataclass(frozen=True, slots=True)
class Settled:
    """What the terminal was told about a transaction (replayed to identical retransmissions)."""

    code: str
    rrn: str
    auth_id: str = ""
    channel_txn_id: str = ""


def transmission_date(field7: str, today: dt.date) -> dt.date | None:
    """The date of field 7 (MMDD...), with the year that puts it nearest ``today``; None when
    it is more than a day away (a stale or future-dated transmission)."""
    month, day = int(field7[:2]), int(field7[2:4])
    candidates = []
    for year in (today.year - 1, today.year, today.year + 1):
        try:
            candidates.append(dt.date(year, month, day))
        except ValueError:
            continue
    if not candidates:
        return None
    best = min(candidates, key=lambda d: abs((d - today).days))
    return best if abs((best - today).days) <= 1 else None


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
    ) -> None:
        self._journal = journal
        self._security = security
        self._shedder = shedder
        self._gateways = gateways
        self._metrics = metrics
        self._fingerprint = fingerprint
        self._router = Router(config.routing)
        self._merchants = {m.id: m for m in config.merchants}
        self._terminals = {t.id: t for t in config.terminals}
        self._channels = config.channels
        self._deadline_s = config.switch.request_deadline_ms / 1000
        self._under_way: dict[TxnKey, tuple[bytes, asyncio.Future[Settled]]] = {}
        self._background: set[asyncio.Task[None]] = set()

    # -- one frame -------------------------------------------------------------------------

    async def handle_frame(self, frame: bytes, arrived: float) -> bytes | None:
        """The encoded answer to one frame, None when it needs none (it was itself an answer).
        ``arrived``: when its bytes were read (``time.monotonic()``); a transaction counts its
        deadline, and the admission its wait, from then, the time it queued in the event loop
        included.
        Raises ``CloseConnection`` when the frame is not ISO 8583 at all."""
        started = time.monotonic()
        try:
            decoded = decode(frame)
        except Unparseable as exc:
            raise CloseConnection(str(exc)) from None
        mti = (decoded.partial if isinstance(decoded, DecodeFailure) else decoded).get("t", "")
        self._metrics.requests.labels(mti if mti in REQUEST_MTIS else "other").inc()  # bounded label
        if isinstance(decoded, DecodeFailure):
            return await self._reject(decoded.partial, Rejection(rc.FORMAT_ERROR, decoded.field, decoded.reason))
        message = decoded
        if answer_mti(message["t"]) is None:
            _ignored_log.warn(log, message["t"], "message that is not a request ignored", mti=message["t"])
            return None
        channel = "-"
        mak: KeyRecord | None = None
        try:
            kind = classify(message)
            rejection = kind if isinstance(kind, Rejection) else validate(kind, message)
            if rejection is not None:
                return await self._reject(message, rejection)
            if self._security.needs_mac(message):
                try:
                    mak = await self._security.verify(message, frame)
                except MacMissing:
                    return await self._reject(message, Rejection(rc.FORMAT_ERROR, "64", "no MAC"))
                except MacMismatch:  # (warned of, rate-limited, by the security)
                    return await self._reject(message, Rejection(rc.MAC_FAILED, "64", "MAC does not verify"))
            if kind is Kind.NETWORK:
                out = await self._network(message)
            elif kind is Kind.REVERSAL:  # never shed: a reversal is how a terminal makes sure of the money
                out = await self._reversal(message)
            elif (overload := self._shedder.overloaded()) is not None and not self._under_way_now(message):
                self._metrics.shed.labels(overload).inc()
                out = answer(message, rc.CHANNEL_UNAVAILABLE, rrn=await self._journal.next_rrn())
            else:
                self._shedder.in_flight += 1
                try:
                    if kind is Kind.PURCHASE:
                        out, channel = await self._purchase(message, arrived)
                    elif kind is Kind.INQUIRY:
                        out = await self._inquiry(message)
                    else:  # void or refund
                        out, channel = await self._undo(message, kind, arrived)
                finally:
                    self._shedder.in_flight -= 1
        except Exception:
            log.exception("unexpected error while processing", extra={"mti": message.get("t")})
            out = answer(message, rc.SYSTEM_MALFUNCTION, rrn=await self._rrn_or_blank(message))
        self._count(message, out, channel, started)
        return self._security.encode(out, mak)

    def _under_way_now(self, message: Message) -> bool:
        """Whether this is a retransmission of a transaction under way here: it is never shed, it
        gets the original's answer. (One of a transaction already finished is shed like any other
        request while the switch is over capacity: that needs the journal, the very work shed.)"""
        tx_date = transmission_date(message["7"], dt.datetime.now(dt.UTC).date())
        return tx_date is not None and TxnKey(tx_date, message["41"], message["11"], message["7"]) in self._under_way

    async def _reject(self, message: Message, rejection: Rejection) -> bytes | None:
        if answer_mti(message.get("t", "")) is None:
            return None
        log.debug(
            "request rejected",
            extra={
                "mti": message.get("t"),
                "reject": str(rejection),
                "terminal": message.get("41", ""),
                "stan": message.get("11", ""),
            },
        )
        out = answer(message, rejection.code, rrn=await self._rrn_or_blank(message))
        self._count(message, out, "-", None)
        return self._security.encode(out)

    async def _rrn_or_blank(self, message: Message) -> str:
        mti = answer_mti(message.get("t", ""))
        return await self._journal.next_rrn() if mti in ("0210", "0110", "0410") else ""

    def _count(self, request: Message, out: Message, channel: str, started: float | None) -> None:
        mti = request.get("t", "?")
        self._metrics.answers.labels(mti if mti in REQUEST_MTIS else "other", channel, out.get("39", "?")).inc()
        if started is not None:
            self._metrics.latency.labels(channel).observe(time.monotonic() - started)

    # -- network management ------------------------------------------------------------------

    async def _network(self, message: Message) -> Message:
        terminal_id, code = message["41"], message["70"]
        if terminal_id not in self._terminals:
            return answer(message, rc.INVALID_MERCHANT)
        log.debug("network management", extra={"terminal": terminal_id, "what": NETWORK_CODES[code]})
        # A key change's MAC was verified in handle_frame; a sign-on has none (see new_working_keys).
        if code in ("001", "101") and self._security.has_master_key(terminal_id):
            try:
                keys = await self._security.new_working_keys(terminal_id, signing_on=code == "001")
            except SignOnTooSoon:
                return answer(message, rc.EXCEEDS_FREQUENCY_LIMIT)
            except asyncpg.UniqueViolationError:  # another front end changed them this instant
                return answer(message, rc.SYSTEM_MALFUNCTION)
            out = answer(message, rc.APPROVED)
            out["62"] = keys
            return out
        if code == "101":  # no master key to send new keys under
            return answer(message, rc.INVALID_TRANSACTION)
        return answer(message, rc.APPROVED)

    # -- inquiry -----------------------------------------------------------------------------

    async def _inquiry(self, message: Message) -> Message:
        """0110: the original's current state in field 39 and its amount in field 4."""
        rrn = await self._journal.next_rrn()
        refusal = self._check_merchant(message)
        if refusal is not None:
            return answer(message, refusal, rrn=rrn)
        found = await self._journal.find_by_rrn(message["37"], message["42"])
        if found is None:
            return answer(message, rc.ORIGINAL_NOT_FOUND, rrn=rrn)
        state, amount_fen = found
        out = answer(message, INQUIRY_CODE_OF_STATE.get(state, rc.IN_PROGRESS), rrn=rrn)
        out["4"] = f"{amount_fen:012d}"
        return out

    # -- reversal ----------------------------------------------------------------------------

    async def _reversal(self, message: Message) -> Message:
        """0410 ``00`` as soon as the reversal is committed (the resolver then cancels the original
        at its channel, retrying until the channel confirms, across restarts); ``25`` when the
        original is unknown, though it stays recorded so that an original arriving later is
        refused. Idempotent: a retransmission gets the same answer."""
        rrn = await self._journal.next_rrn()
        refusal = self._check_merchant(message)
        if refusal is not None:
            return answer(message, refusal, rrn=rrn)
        original = message["90"]
        orig_stan, orig_transmitted = original[4:10], original[10:20]
        if original[:4] != "0200" or not FIELD_RULES["7"].accepts(orig_transmitted):
            return answer(message, rc.FORMAT_ERROR, rrn=rrn)
        orig_date = transmission_date(orig_transmitted, dt.datetime.now(dt.UTC).date())
        if orig_date is None:
            return answer(message, rc.ORIGINAL_NOT_FOUND, rrn=rrn)
        key = TxnKey(orig_date, message["41"], orig_stan, orig_transmitted)
        answer_rrn, code = await self._journal.request_reversal(
            key, message["11"], message["7"], int(message["4"]), rrn
        )
        log.debug("reversal recorded", extra={"rrn": answer_rrn, "terminal": message["41"], "code": code})
        return answer(message, code, rrn=answer_rrn)

    # -- void and refund -----------------------------------------------------------------------

    async def _undo(self, message: Message, kind: Kind, arrived: float) -> tuple[Message, str]:
        """A void (same day, whole amount) or a refund (any part of what is left), each a
        transaction of its own, carried out at the purchase's channel."""
        rrn = await self._journal.next_rrn()
        refusal = self._check_merchant(message)
        tx_date = transmission_date(message["7"], dt.datetime.now(dt.UTC).date())
        if refusal is None and tx_date is None:
            refusal = rc.FORMAT_ERROR
        original = None if refusal else await self._journal.original(message["37"], message["42"])
        if refusal is None and original is None:
            refusal = rc.ORIGINAL_NOT_FOUND
        if refusal is not None:
            return answer(message, refusal, rrn=rrn), "-"
        assert original is not None and tx_date is not None
        txn = self._new_txn(message, original.channel, tx_date, rrn, arrived, kind)._replace(
            pan_masked=original.pan_masked, pan_hash=original.pan_hash
        )
        settled = await self._once(txn, lambda: self._run_undo(txn, kind, original))
        out = answer(
            message, settled.code, rrn=settled.rrn, auth_id=settled.auth_id, channel_txn_id=settled.channel_txn_id
        )
        return out, original.channel

    async def _run_undo(self, txn: NewTxn, kind: Kind, original: Original) -> Settled:
        if await self._journal.find(txn.key) is not None:
            return await self._replay(txn)
        try:
            refusal = await self._journal.write_ahead_undo(txn, original)
        except asyncpg.UniqueViolationError:  # another front end wrote this key first
            return await self._replay(txn)
        if refusal is not None:
            return Settled(refusal, txn.rrn)
        merchant_channel_id = self._merchant_channel_id(txn)
        deadline = self._deadline(txn)
        gateway = self._gateways[txn.channel]
        refusal = gateway.admit(txn.merchant_id)
        if refusal is None:
            result = await undo.call(
                gateway, kind.value, txn.out_trade_no, txn.amount_fen, original, merchant_channel_id, deadline
            )
        else:
            result = self._refused(txn.channel, refusal)
        try:
            code, auth_id = await undo.record(
                self._journal, txn.key, txn.rrn, kind.value, txn.amount_fen, original, result
            )
        except Exception:
            # The row stays open and the resolver sends the same call again until the channel
            # settles it (a void or refund keeps what the channel did): "in progress", so that the
            # merchant asks (0100) rather than refunding again under a new STAN.
            log.exception(f"recording the {kind.value} failed", extra={"rrn": txn.rrn})
            return Settled(rc.IN_PROGRESS, txn.rrn)
        log.debug(f"{kind.value} done", extra={"rrn": txn.rrn, "original": original.rrn, "code": code})
        return Settled(code, txn.rrn, auth_id, result.channel_txn_id)

    # -- purchase ----------------------------------------------------------------------------

    async def _purchase(self, message: Message, arrived: float) -> tuple[Message, str]:
        refusal = self._check_merchant(message)
        if refusal is not None:
            return answer(message, refusal, rrn=await self._journal.next_rrn()), "-"
        routed = self._router.route(message["2"], message["22"])
        if isinstance(routed, Rejection):
            return answer(message, routed.code, rrn=await self._journal.next_rrn()), "-"
        channel = routed
        code = self._check_channel(message, channel)
        if code is None and (tx_date := transmission_date(message["7"], dt.datetime.now(dt.UTC).date())) is None:
            code = rc.FORMAT_ERROR  # field 7 more than a day from today
        rrn = await self._journal.next_rrn()
        if code is not None:
            return answer(message, code, rrn=rrn), channel
        pan = message["2"]
        pin_block = ""
        if "52" in message:
            try:
                pin_block = self._security.translate_pin(message["41"], message["52"], pan, channel)
            except (NoPinKey, PinBlockError, HsmError) as exc:
                log.warning(
                    "PIN block not translated",
                    extra={"terminal": message["41"], "stan": message["11"], "reason": type(exc).__name__},
                )
                return answer(message, rc.FORMAT_ERROR, rrn=rrn), channel
        txn = self._new_txn(message, channel, tx_date, rrn, arrived)
        settled = await self._once(txn, lambda: self._run(txn, pan, pin_block, arrived))
        return answer(
            message, settled.code, rrn=settled.rrn, auth_id=settled.auth_id, channel_txn_id=settled.channel_txn_id
        ), channel

    def _check_merchant(self, message: Message) -> str | None:
        terminal = self._terminals.get(message["41"])
        if terminal is None or terminal.merchant != message["42"]:
            return rc.INVALID_MERCHANT
        if self._merchants[terminal.merchant].suspended:
            return rc.NOT_PERMITTED
        return None

    def _check_channel(self, message: Message, channel: str) -> str | None:
        if channel not in self._merchants[message["42"]].channels:
            return rc.NOT_PERMITTED
        if channel not in self._gateways:
            return rc.CHANNEL_UNAVAILABLE
        return None

    def _new_txn(
        self, message: Message, channel: str, tx_date: dt.date, rrn: str, arrived: float, kind: Kind = Kind.PURCHASE
    ) -> NewTxn:
        pan = message.get("2", "")
        now = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=time.monotonic() - arrived)
        content = "|".join(f"{k}={message[k]}" for k in sorted(message) if k not in _NOT_HASHED)
        return NewTxn(
            tx_date=tx_date,
            terminal_id=message["41"],
            stan=message["11"],
            transmitted=message["7"],
            rrn=rrn,
            txn_type=kind.value,
            mti=message["t"],
            processing_code=message["3"],
            merchant_id=message["42"],
            amount_fen=int(message["4"]),
            currency=message["49"],
            local_time=message["12"],
            local_date=message["13"],
            entry_mode=message.get("22", ""),
            pan_masked=mask_pan(pan),
            pan_hash=self._fingerprint(pan) if pan else b"",
            channel=channel,
            out_trade_no=f"{tx_date:%Y%m%d}{rrn}",
            request_hash=self._fingerprint(content),
            received_at=now,
            # Should this front end vanish, the resolver takes the transaction after its deadline.
            next_check_at=now + dt.timedelta(seconds=self._deadline_s + ORPHAN_GRACE_S),
        )

    async def _once(self, txn: NewTxn, work: Callable[[], Awaitable[Settled]]) -> Settled:
        """Invariant 2: the first arrival of a key runs; any other gets the first one's answer."""
        under_way = self._under_way.get(txn.key)
        if under_way is not None:
            request_hash, settled = under_way
            if request_hash != txn.request_hash:
                return Settled(rc.DUPLICATE_TRANSMISSION, txn.rrn)
            return await asyncio.shield(settled)
        settled = asyncio.get_running_loop().create_future()
        self._under_way[txn.key] = (txn.request_hash, settled)
        try:
            outcome = await work()
            settled.set_result(outcome)
            return outcome
        except BaseException as exc:
            settled.set_exception(exc)
            settled.exception()  # retrieved: retransmissions waiting on it get the same error
            raise
        finally:
            del self._under_way[txn.key]

    async def _run(self, txn: NewTxn, pan: str, pin_block: str, arrived: float) -> Settled:
        """``pan`` and ``pin_block`` (under the channel's zone PIN key) go to the channel and
        nowhere else: the journal keeps the card number masked and hashed, and no PIN at all."""
        try:
            inserted = await self._journal.write_ahead(txn)
        except Exception:
            log.exception("write-ahead failed; nothing was sent", extra={"rrn": txn.rrn})
            return Settled(rc.SYSTEM_MALFUNCTION, txn.rrn)
        if not inserted:
            return await self._replay(txn)
        # The channel's limits are checked after the duplicate check, so that a retransmission of a
        # transaction under way gets its answer even when the channel is full or its circuit open.
        refusal = self._gateways[txn.channel].admit(txn.merchant_id)
        if refusal is None:
            result = await self._call_channel(txn, pan, pin_block, arrived)
        else:
            result = self._refused(txn.channel, refusal)
        settled = self._settle(txn, result)
        report = Report(
            *txn.key,
            EVENT_OF_OUTCOME[result.outcome],
            settled.code,
            settled.auth_id,
            result.channel_code,
            result.channel_message[:200],
            result.channel_txn_id,
            dt.datetime.now(dt.UTC) + dt.timedelta(milliseconds=self._channel(txn).query_interval_ms),
        )
        try:
            moved = await self._journal.record(report)
        except Exception:
            # The row stays RECEIVED: recovery will query the channel and settle it.
            log.exception("recording the outcome failed", extra={"rrn": txn.rrn, "outcome": result.outcome.value})
            return Settled(rc.SYSTEM_MALFUNCTION, txn.rrn)
        if moved is None:  # the resolver settled it first (this front end overran its deadline)
            return await self._replay(txn)
        log.debug(
            "purchase done",
            extra={
                "rrn": txn.rrn,
                "terminal": txn.terminal_id,
                "stan": txn.stan,
                "pan": txn.pan_masked,
                "channel": txn.channel,
                "code": settled.code,
            },
        )
        return settled

    async def _replay(self, txn: NewTxn) -> Settled:
        """Not written: the key is already in the journal (another front end, or before a
        restart), or its reversal arrived before it."""
        stored = await self._journal.find(txn.key)
        if stored is None:
            if await self._journal.reversed_before_arrival(txn.key):
                log.debug("original refused: its reversal came first", extra={"rrn": txn.rrn})
                return Settled(rc.DO_NOT_HONOUR, txn.rrn)
            return Settled(rc.SYSTEM_MALFUNCTION, txn.rrn)
        if stored.request_hash != txn.request_hash:
            return Settled(rc.DUPLICATE_TRANSMISSION, txn.rrn)
        if stored.state in FINAL and stored.response_code:
            return Settled(stored.response_code, stored.rrn, stored.auth_id or "", stored.channel_txn_id or "")
        return Settled(rc.IN_PROGRESS, stored.rrn)

    async def _call_channel(self, txn: NewTxn, pan: str, pin_block: str, arrived: float) -> ChannelResult:
        """Pay; while the customer is still confirming, query on the channel's schedule until the
        deadline draws near (then the terminal gets ``09`` and the resolver carries on)."""
        gateway = self._gateways[txn.channel]
        deadline = self._deadline(txn)
        ref = PaymentRef(
            txn.out_trade_no,
            txn.amount_fen,
            self._merchant_channel_id(txn),
            txn.terminal_id,
            txn.received_at.timestamp(),
        )
        started = time.monotonic()
        self._metrics.in_flight.labels(txn.channel).inc()
        self._shedder.calling_channel(arrived)
        try:
            result = await gateway.call(
                PAY, ref, deadline, auth_code=pan, pin_block=pin_block, on_late=self._keep_late(txn, PAY)
            )
            interval = self._channel(txn).query_interval_ms / 1000
            while result.outcome is Outcome.PENDING and time.time() + interval < deadline - ANSWER_MARGIN_S:
                await asyncio.sleep(interval)
                polled = await gateway.call(QUERY, ref._replace(channel_txn_id=result.channel_txn_id), deadline)
                # A query that never reached the channel (circuit open, limits) tells nothing.
                if polled.outcome is Outcome.APPROVED or (
                    polled.sent and polled.outcome is Outcome.DECLINED and polled.channel_code != NOT_FOUND
                ):
                    result = polled
            return result
        finally:
            self._metrics.in_flight.labels(txn.channel).dec()
            self._metrics.channel_latency.labels(txn.channel).observe(time.monotonic() - started)

    def _deadline(self, txn: NewTxn) -> float:
        """When the channel calls must be over: counted from the request's arrival, so that the
        resolver, which takes a RECEIVED row only past this plus ``ORPHAN_GRACE_S``, never finds
        one still under way here however long the write-ahead took."""
        return txn.received_at.timestamp() + self._deadline_s - ANSWER_MARGIN_S

    def _refused(self, channel: str, reason: str) -> ChannelResult:
        """A new transaction the channel's limits turned away: journaled, answered 91, never sent."""
        self._metrics.refused.labels(channel, reason).inc()
        return refused(0, reason, "refused before the channel: " + reason.lower())

    def _keep_late(self, txn: NewTxn, op: str) -> Callable[[ChannelResult], None]:
        """Journal a channel answer that came after the terminal was answered."""

        async def keep(result: ChannelResult) -> None:
            try:
                await self._journal.record_late(
                    txn.key, op, result.outcome.value, result.channel_code, result.channel_txn_id
                )
            except Exception:  # the resolver still settles the transaction from the channel's side
                log.exception("keeping a late answer failed", extra={"rrn": txn.rrn})

        def schedule(result: ChannelResult) -> None:
            task = asyncio.get_running_loop().create_task(keep(result))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

        return schedule

    def _settle(self, txn: NewTxn, result: ChannelResult) -> Settled:
        if result.outcome is Outcome.APPROVED:
            return Settled(rc.APPROVED, txn.rrn, auth_id_for(txn.rrn), result.channel_txn_id)
        return Settled(result.response_code, txn.rrn, "", result.channel_txn_id)

    def _channel(self, txn: NewTxn) -> ChannelSection:
        return self._channels[txn.channel]

    def _merchant_channel_id(self, txn: NewTxn) -> str:
        return self._merchants[txn.merchant_id].channel_ids.get(txn.channel, "")
