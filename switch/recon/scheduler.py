"""The hourly reconciliation: once an hour (Beijing time) has closed and a grace period for the
channels' books has passed, its batch runs for every channel, through the channel actors and the
gateways (breakers and limits included). Hours of the last ``lookback_hours`` not done yet are
caught up, so a switch that was down runs what it missed; several front ends may each run it
(a batch's steps are taken once, whoever gets there first)."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import time
from collections.abc import Callable

import asyncpg

from protocols.statements import CST
from switch.recon.batch import Fetch, Parse, ReconBatch, StepFailed, StepTaken, parse_in_thread, statement_records
from switch.recon.handling import Caller, Handler, Threshold

log = logging.getLogger("paysw.recon")

HourBatch = tuple[str, dt.date, int]  # channel, day, hour


async def parse_in_ray(batch_id: int, kind: str, statement: bytes, start: dt.datetime, end: dt.datetime) -> list[tuple]:
    """Parse a statement in a Ray worker: a day's file is seconds of Python the front end's event
    loop must not spend."""
    return await _remote_records().remote(batch_id, kind, statement, start, end)


@functools.cache
def _remote_records():
    import ray

    return ray.remote(max_retries=0)(statement_records)


def due_batches(
    channels: list[str], done: set[HourBatch], now: float, grace_s: float, lookback_hours: int
) -> list[HourBatch]:
    """Closed hours (their end plus ``grace_s`` past) of the last ``lookback_hours``, per channel,
    not done yet; oldest first."""
    latest = dt.datetime.fromtimestamp(now - grace_s, CST).replace(minute=0, second=0, microsecond=0)
    hours = [latest - dt.timedelta(hours=back) for back in range(lookback_hours, 0, -1)]
    return [(c, h.date(), h.hour) for h in hours for c in channels if (c, h.date(), h.hour) not in done]


class HourlyReconciler:
    def __init__(
        self,
        pool: asyncpg.Pool,
        kinds: dict[str, str],
        fetch: Fetch,
        caller_for: Callable[[str], Caller],
        threshold: Threshold,
        grace_s: float,
        lookback_hours: int = 3,
        clock: Callable[[], float] = time.time,
        parse: Parse = parse_in_thread,
    ) -> None:
        self._pool = pool
        self._kinds = kinds
        self._fetch = fetch
        self._caller_for = caller_for
        self._threshold = threshold
        self._grace_s = grace_s
        self._lookback = lookback_hours
        self._clock = clock
        self._parse = parse

    async def run_due(self) -> int:
        """Run the batches due now, the channels of an hour at once; returns how many finished."""
        since = (dt.datetime.fromtimestamp(self._clock(), CST) - dt.timedelta(hours=self._lookback + 1)).date()
        rows = await self._pool.fetch(
            "SELECT channel, day, hour FROM recon_batch WHERE step = 'done' AND day >= $1 AND hour >= 0", since
        )
        done = {(r["channel"], r["day"], r["hour"]) for r in rows}
        due = due_batches(list(self._kinds), done, self._clock(), self._grace_s, self._lookback)
        finished = 0
        for day, hour in dict.fromkeys((d, h) for _, d, h in due):
            batches = [
                ReconBatch(self._pool, c, self._kinds[c], day, hour, self._fetch,
                           Handler(self._pool, self._caller_for(c), self._threshold), parse=self._parse)
                for c, d, h in due if (d, h) == (day, hour)
            ]  # fmt: skip
            for batch, outcome in zip(
                batches, await asyncio.gather(*(b.run() for b in batches), return_exceptions=True), strict=True
            ):
                if isinstance(outcome, (StepFailed, StepTaken)):
                    log.warning(
                        "reconciliation batch not finished",
                        extra={"channel": batch.channel, "day": str(day), "hour": hour, "reason": str(outcome)},
                    )
                elif isinstance(outcome, BaseException):
                    log.error("reconciliation batch failed", exc_info=outcome, extra={"channel": batch.channel})
                else:
                    finished += 1
        return finished

    async def run_forever(self, every_s: float = 60.0) -> None:
        while True:
            try:
                finished = await self.run_due()
                if finished:
                    log.info("reconciliation batches done", extra={"batches": finished})
            except Exception:
                log.exception("the hourly reconciliation failed; trying again in a minute")
            await asyncio.sleep(every_s)
