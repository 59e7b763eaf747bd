"""What a node core needs from outside, as Protocols: a clock and a random source.

Why: a core that reads ``loop.time()`` or the global ``random`` cannot be run under a
virtual clock or replayed from a seed (issue 14: a deterministic simulator). Cores take
these ports as constructor arguments, with the real implementations below as defaults, so
production wiring is unchanged and a simulator can pass its own.

This is the first step of the ports of issue 14: the sending and store ports come later.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from typing import Protocol, TypeVar

__all__ = ["LOOP_CLOCK", "MONOTONIC_CLOCK", "Clock", "LoopClock", "MonotonicClock", "RandomSource",
           "Signer", "StoreWriter", "WriteOp"]

T = TypeVar("T")


class Clock(Protocol):
    """Monotonic time in seconds and sleeping on it."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class RandomSource(Protocol):
    """The part of :class:`random.Random` the cores use; seed one for a replayable run."""

    def random(self) -> float: ...

    def choice(self, seq: Sequence[T]) -> T: ...

    def uniform(self, a: float, b: float) -> float: ...

    def sample(self, population: Sequence[T], k: int) -> list[T]: ...


#: One store write: (family, key, value), a None value deleting the key.
WriteOp = tuple[str, bytes, bytes | None]


class StoreWriter(Protocol):
    """Atomic batched writes (``narwhal.store.Store``; an in-memory store in tests).
    ``durable``: on disk (fsynced as ``store_sync`` says) before it returns."""

    async def write(self, ops: Iterable[WriteOp], *, durable: bool = False) -> None: ...


class Signer(Protocol):
    """Signs a digest with the authority key (``narwhal.crypto.SigningKeyPair``)."""

    def sign(self, digest: bytes) -> bytes: ...


class LoopClock:
    """The running asyncio (or uvloop) event loop's clock: what production uses."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class MonotonicClock(LoopClock):
    """``time.monotonic()``: for code that may read the time outside a running loop, and
    whose readings are never compared with the loop's deadlines (uvloop's ``loop.time()``
    is cached per loop iteration at millisecond resolution; this is not)."""

    def now(self) -> float:
        return time.monotonic()


#: The real clocks (stateless, so shared).
LOOP_CLOCK = LoopClock()
MONOTONIC_CLOCK = MonotonicClock()
