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
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["SimulationStalled", "VirtualTimeLoop", "run_virtual"]

T = TypeVar("T")

#: Where virtual time starts: not 0, so code that treats 0 as "never" is not fooled.
EPOCH = 1_000.0


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
        return self._now

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
