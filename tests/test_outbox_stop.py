"""The merchant notifications' outbox stops when told, whatever it was waiting for."""

from __future__ import annotations

import asyncio

from switch.merchant.outbox import Outbox
from switch.merchant.settings import MerchantApiSection
from switch.metrics import Metrics
from tests.conftest import fresh_database, run


def test_the_outbox_stops_even_when_a_delivery_frees_room_as_it_is_cancelled(database_url):
    """``stop()`` cancels the deliveries, and each one ending wakes the claiming loop: a wake-up
    and a cancellation in the same turn of the event loop. The loop must end, not claim on for
    ever (it did, through ``asyncio.wait_for`` on Python 3.11, and the switch never exited)."""

    async def scenario() -> bool:
        outbox = Outbox(await fresh_database(database_url, "paysw_outbox_stop"), MerchantApiSection(), {}, Metrics())
        await outbox.start()
        await asyncio.sleep(0.5)  # the loop has claimed (nothing) and waits
        outbox._freed.set()  # a delivery ending, as stop() cancels it
        try:
            await asyncio.wait_for(outbox.stop(), 5)
        except TimeoutError:
            return False
        return outbox._loop_task.done()

    assert run(scenario()), "the outbox's loop did not end when stopped"
