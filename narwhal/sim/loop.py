"""An asyncio event loop on virtual time: the simulator's clock (issue 14).

Why: the node's cores are asyncio code (the proposer's header delay, the fetcher's
timeouts, retries with backoff). Run on a normal loop, a simulated minute takes a minute
and the interleaving of timers depends on how fast the machine is, so no run can be
replayed. On :class:`VirtualTimeLoop`, ``loop.time()`` is a number the loop advances
itself: when nothing is ready to run, instead of sleeping until the next timer it jumps
straight to it. Code that sleeps, times out or reads ``loop.time()`` sees the simulated
time; a simulated minute costs only the CPU its work takes.

What makes a run deterministic on it: asyncio runs ready callbacks in FIFO order and timers
in order of their deadline (ties in the order they were scheduled), so the same program
with the same inputs schedules the same callbacks in the same order. The inputs must be
the same too: no threads, no real I/O, no wall-clock reads, random draws from seeded
sources, and a fixed ``PYTHONHASHSEED`` (``set``/``dict`` orders of ``str``/``bytes`` keys
depend on it; ``narwhal.sim`` checks it).

The only file descriptor the loop watches is its own self-pipe (for
``call_soon_threadsafe``); it is polled without waiting.

**Clock skew.** Every validator shares this one loop, yet each can have a clock of its own
(:class:`SkewedClock`: a rate and an offset). The clock in force is a context variable,
set while a validator's code runs (its tasks are started with it, and a delivery runs the
receiver's handler under the receiver's): ``time()`` returns that clock's reading, and
``call_at`` turns a deadline read on it back into true virtual time. So everything a
validator's code times -- ``asyncio.sleep``, ``asyncio.timeout``, ``call_later``, its
``Clock`` port -- runs at its clock's rate, while the loop itself (run outside any
validator) schedules on true time. A rate change applies to the timers set after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import selectors
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar, TypeVarTuple

__all__ = ["SimulationStalled", "SkewedClock", "VirtualTimeLoop", "run_virtual", "true_now",
           "true_time"]

T = TypeVar("T")
_Ts = TypeVarTuple("_Ts")

#: Where virtual time starts: not 0, so code that treats 0 as "never" is not fooled.
EPOCH = 1_000.0


class SkewedClock:
    """A validator's own clock: it reads ``offset + rate x`` true virtual time. The default
    (rate 1, offset 0) reads true time exactly, so a run without skew is unchanged."""

    def __init__(self, rate: float = 1.0, offset: float = 0.0) -> None:
        if rate <= 0:
            raise ValueError("a clock's rate must be positive")
        self.rate, self.offset = rate, offset

    def local(self, true: float) -> float:
        if self.rate == 1.0 and self.offset == 0.0:
            return true
        return self.offset + self.rate * true

    def true(self, local: float) -> float:
        """The first true time at which this clock reads ``local`` or more. Rounding must
        not make it earlier: code that sleeps until ``local`` and finds the clock short of
        it sleeps again for the (tiny) rest, and a timer converted to a time the loop
        already reached would spin for ever without time moving."""
        if self.rate == 1.0 and self.offset == 0.0:
            return local
        true = (local - self.offset) / self.rate
        while self.local(true) < local:
            true = math.nextafter(true, math.inf)
        return true

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        """Run the enclosed code, and what it starts, on this clock."""
        token = _CLOCK.set(self)
        try:
            yield
        finally:
            _CLOCK.reset(token)


#: The clock of the validator whose code is running (None: true time).
_CLOCK: contextvars.ContextVar[SkewedClock | None] = contextvars.ContextVar("sim_clock",
                                                                         default=None)


@contextlib.contextmanager
def true_time() -> Iterator[None]:
    """Run the enclosed code on true virtual time (the network, not a validator)."""
    token = _CLOCK.set(None)
    try:
        yield
    finally:
        _CLOCK.reset(token)


def true_now() -> float:
    """The running loop's true virtual time, whichever validator's code asks."""
    with true_time():
        return asyncio.get_running_loop().time()


class SimulationStalled(RuntimeError):
    """Nothing is ready and no timer is scheduled, but the main coroutine has not finished:
    the simulated program waits for something that can never happen."""


class _NoWaitSelector(selectors.DefaultSelector):
    """Polls without blocking; an empty poll with a timeout advances the virtual clock to
    the deadline the loop wanted to sleep until."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = super().select(0)
        if events or timeout == 0:
            return events
        if timeout is None:
            raise SimulationStalled("nothing to run and no timer: the simulation cannot go on")
        self._loop.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose ``time()`` is virtual (see the module docstring)."""

    def __init__(self, start: float = EPOCH) -> None:
        self._now = start
        super().__init__(_NoWaitSelector(self))

    def time(self) -> float:
        clock = _CLOCK.get()
        return self._now if clock is None else clock.local(self._now)

    def call_at(self, when: float, callback: Callable[[*_Ts], object], *args: *_Ts,
                context: contextvars.Context | None = None) -> asyncio.TimerHandle:
        clock = _CLOCK.get()  # ``when`` was read on the caller's clock
        return super().call_at(when if clock is None else clock.true(when), callback, *args,
                               context=context)

    def advance(self, seconds: float) -> None:
        """Move virtual time forward (only the loop's selector does, when idle)."""
        if seconds > 0:
            self._now += seconds


def run_virtual(main: Coroutine[Any, Any, T], *, start: float = EPOCH) -> T:
    """Run ``main`` to completion on a fresh :class:`VirtualTimeLoop` and close it."""
    loop = VirtualTimeLoop(start)
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            _cancel_all(loop)
        finally:
            loop.close()


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
