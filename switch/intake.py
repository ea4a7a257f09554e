"""The order new frames are started in while the switch sheds load.

A request read while the switch is over capacity (``switch.shedding``) is answered ``91``: that is
decided as it is read. Started at once, as every frame is otherwise, a flood of them (terminals
that send again the moment they hear ``91``) fills each event-loop turn, and every step of the
transactions already taken on waits behind them: their answers slow down, which holds the queue
long, which sheds more, and approvals fell to a quarter (``paysw bench overload``). So such frames
wait here and are started ``PER_TURN`` a turn, after the callbacks the turn already holds: the
transactions under way go first, and the excess is answered as fast as the time they leave
allows. Frames read while the switch has room start at once, and are the ones taken on.

A frame waiting here still runs through its steps: a reversal or a retransmission of one under
way is never shed, and what is not a purchase, void, refund or inquiry has no shed step.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

PER_TURN = 16  # frames started in one event-loop turn while shedding


class Intake:
    def __init__(self, per_turn: int = PER_TURN) -> None:
        self._per_turn = per_turn
        self._waiting: deque[Callable[[], None]] = deque()
        self._scheduled = False

    def __len__(self) -> int:
        return len(self._waiting)

    def later(self, start: Callable[[], None]) -> None:
        """Call ``start`` in a later turn, after those given before it."""
        self._waiting.append(start)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._turn)

    def _turn(self) -> None:
        waiting = self._waiting
        try:
            for _ in range(min(self._per_turn, len(waiting))):
                waiting.popleft()()
        finally:
            if waiting:  # at the back of the next turn's callbacks
                asyncio.get_running_loop().call_soon(self._turn)
            else:
                self._scheduled = False
