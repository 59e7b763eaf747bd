"""Turns for the output streams: first come first served, a few at once, a byte rate in all.

Why: every part sent to a subscriber costs the primary's event loop (the worker's response
decrypted, the part encrypted toward the subscriber), the loop that also runs consensus.
Without a limit, N subscribers replaying history take N times that, as fast as the loop
turns. A :class:`FairPacer` makes every stream ask for a *turn* before it serves a part:

- **fair**: turns are granted in the order they were asked for; a stream asks again only
  after its turn ended, so N streams that all want to send get one part each in turn;
- **few at once**: at most ``slots`` turns run at the same time, so at most ``slots``
  fetched parts are held in memory between the worker and the subscribers' sockets;
- **rate**: each turn reports the bytes it sent (``turn.spent``); a token bucket of
  ``rate`` bytes/s refilled up to ``burst`` is charged for them, and no turn starts while
  the bucket is in debt. Over any interval of ``t`` seconds the streams together send at
  most ``burst + rate * t + slots * (largest part)`` bytes, however many subscribers there
  are (``tests/primary/test_output_pacer.py`` asserts both properties).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Callable

__all__ = ["FairPacer", "Turn"]


class Turn:
    """One granted turn; the holder sets ``spent`` to the bytes it sent."""

    __slots__ = ("spent",)

    def __init__(self) -> None:
        self.spent = 0


class FairPacer:
    def __init__(self, *, rate: float, burst: int, slots: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst <= 0 or slots <= 0:
            raise ValueError("rate, burst and slots must be positive")
        self.rate, self.burst, self.slots = float(rate), burst, slots
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._busy = 0
        self._timer: asyncio.TimerHandle | None = None
        #: Turns that had to wait (for a slot or for the rate), bytes charged in all.
        self.waits = 0
        self.bytes = 0

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[Turn]:
        await self._acquire()
        turn = Turn()
        try:
            yield turn
        finally:
            self._release(turn.spent)

    async def _acquire(self) -> None:
        if not self._waiting and self._grantable():
            self._busy += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        self.waits += 1
        self._wake()
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release(0)  # granted as we were cancelled: hand the slot on
            else:
                with contextlib.suppress(ValueError):
                    self._waiting.remove(future)
            raise

    def _grantable(self) -> bool:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        return self._busy < self.slots and self._tokens >= 0

    def _release(self, spent: int) -> None:
        self._busy -= 1
        self._tokens -= spent
        self.bytes += spent
        self._wake()

    def _wake(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiting and self._grantable():
            future = self._waiting.popleft()
            if future.done():  # cancelled while waiting
                continue
            self._busy += 1
            future.set_result(None)
        if self._waiting and self._busy < self.slots:  # in debt: wait until it is repaid
            delay = max(0.001, -self._tokens / self.rate)
            self._timer = asyncio.get_running_loop().call_later(delay, self._wake)
