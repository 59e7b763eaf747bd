"""What a node core needs from outside, as Protocols: a clock and a random source.

Why: a core that reads ``loop.time()`` or the global ``random`` cannot be run under a
virtual clock or replayed from a seed (issue 14: a deterministic simulator). Cores take
these ports as constructor arguments, with the real implementations below as defaults, so
production wiring is unchanged and a simulator can pass its own.

The sending ports: :class:`PrimaryNetworkLike` (what the primary's core sends: to other
primaries and to its workers) and :class:`NodeNetwork` (the node's: also requests, answered
once), implemented by ``narwhal.primary.network.PrimaryNetwork`` and the simulator's
``narwhal.sim.ports.PrimaryPort``; :class:`WorkerNetwork` (what a worker sends: reliable
sends to peers named by network key; ``narwhal.net.sending.ReliableNetwork``, or the
simulator's links). :class:`StoreLike`: what the core reads and writes of its store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, TypeVar

__all__ = [
    "LOOP_CLOCK",
    "MONOTONIC_CLOCK",
    "Clock",
    "LoopClock",
    "MonotonicClock",
    "NodeNetwork",
    "PrimaryNetworkLike",
    "RandomSource",
    "SendHandle",
    "Signer",
    "StoreLike",
    "StoreWriter",
    "WorkerNetwork",
    "WriteOp",
]

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


class SendHandle(Protocol):
    """One reliable send under way (``narwhal.net.sending.CancelHandle``): cancel it to
    give up; its done callbacks get the finished task (its result is the answer)."""

    peer: bytes

    def cancel(self) -> None: ...

    def done(self) -> bool: ...

    def add_done_callback(self, fn: Any) -> None: ...


class PrimaryNetworkLike(Protocol):
    """What the primary's core sends: reliable sends to other primaries (by authority), and
    one-way messages to its own workers."""

    async def broadcast(self, message: Any) -> list[Any]: ...

    async def send(self, authority: bytes, message: Any) -> Any: ...

    async def to_workers(self, message: Any, worker_ids: Iterable[int] | None = None) -> list[Any]: ...


class NodeNetwork(PrimaryNetworkLike, Protocol):
    """The primary node's network: the core's, plus one-try requests (catch-up, state
    transfer, our workers) and who the other primaries are."""

    @property
    def others(self) -> list[bytes]: ...

    async def request(self, authority: bytes, message: Any, timeout: float) -> Any: ...

    async def request_worker(self, worker_id: int, message: Any, timeout: float) -> Any: ...


class WorkerNetwork(Protocol):
    """What a worker sends, to peers named by their network key (our primary included):
    reliable sends, retried until answered or cancelled (``ReliableNetwork``'s)."""

    async def send(self, peer_id: bytes, message: Any) -> SendHandle: ...

    async def broadcast_encoded(self, peer_ids: Sequence[bytes], tag: int,
                                body: bytes) -> Sequence[SendHandle]: ...


class StoreLike(Protocol):
    """What the primary's core reads and writes of its store."""

    async def write(self, ops: list[WriteOp], *, durable: bool = False) -> None: ...

    def get(self, family: str, key: bytes) -> bytes | None: ...

    def items(self, family: str) -> list[tuple[bytes, bytes]]: ...


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
