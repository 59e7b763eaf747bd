"""What a simulated primary and worker send through: the ports their cores take
(``narwhal.ports.NodeNetwork``, ``WorkerNode``'s ``WorkerNetwork``), over the
simulated links of :mod:`narwhal.sim.network`.

A reliable send is a task on the sender's validator (a crash cancels it); its
:class:`SimSendHandle` behaves like the real network's ``CancelHandle``: awaitable for the
answer, cancellable, with done callbacks that receive the task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from narwhal import messages
from narwhal.config.network import PeerInfo
from narwhal.sim.loop import SkewedClock

if TYPE_CHECKING:
    from narwhal.sim.cluster import SimCluster

__all__ = ["PrimaryPort", "SimPeer", "SimSendHandle", "WorkerPort", "call"]


def call(clock: SkewedClock, handler: Callable[..., Awaitable[Any]],
         *args: Any) -> Callable[[], Awaitable[Any]]:
    """``handler(*args)``, to be awaited later (once the message crossed its link), on the
    receiver's ``clock``."""
    async def on_clock() -> Any:
        with clock.current():
            return await handler(*args)
    return on_clock


@attrs.frozen
class SimPeer:
    """Who a handler sees as the sender (what ``PeerManager`` gives the real ones)."""

    info: PeerInfo


async def _nothing() -> None:
    """A send that was never made (a withheld message): done at once."""


class SimSendHandle:
    """One reliable send: await it for the answer, ``cancel()`` it to give up."""

    def __init__(self, task: asyncio.Task[Any], peer: bytes = b"") -> None:
        self._task, self.peer = task, peer

    def cancel(self) -> None:
        self._task.cancel()

    def done(self) -> bool:
        return self._task.done()

    def add_done_callback(self, fn: Callable[[asyncio.Task[Any]], Any]) -> None:
        self._task.add_done_callback(fn)

    def __await__(self) -> Generator[Any, None, Any]:
        return asyncio.shield(self._task).__await__()


class PrimaryPort:
    """Validator ``me``'s primary: to the other primaries over the links; to its own worker
    directly (one machine)."""

    def __init__(self, cluster: SimCluster, me: int) -> None:
        self._cluster, self._me = cluster, me

    @property
    def others(self) -> list[bytes]:
        return [v.name for v in self._cluster.validators if v.index != self._me]

    async def broadcast(self, message: Any) -> list[Any]:
        return [await self.send(other, message) for other in self.others]

    async def send(self, authority: bytes, message: Any) -> SimSendHandle:
        cluster = self._cluster
        me, target = cluster.validators[self._me], cluster.by_name[authority]
        sent = [message]
        if self._me == cluster.byzantine:
            sent = cluster.byzantine_sends(message, target.index)
        handles = [SimSendHandle(me.spawn(cluster.links.send(
            self._me, target.index, call(target.clock, cluster.deliver, self._me, target, m),
            me.rng)))
            for m in sent]
        return handles[0] if handles else SimSendHandle(me.spawn(_nothing()))

    async def to_workers(self, message: Any, worker_ids: Any = None) -> list[Any]:
        await self._cluster.validators[self._me].to_worker(message)
        return []

    async def request_worker(self, worker_id: int, message: Any, timeout: float) -> Any:
        async with asyncio.timeout(timeout):
            return await self._cluster.validators[self._me].to_worker(message)

    async def request(self, authority: bytes, message: Any, timeout: float) -> Any:
        cluster = self._cluster
        target = cluster.by_name[authority]
        return await cluster.links.request(
            self._me, target.index, call(target.clock, cluster.answer, self._me, target, message),
            timeout)


class WorkerPort:
    """Validator ``me``'s worker: to the other workers over the links; its reports to its
    own primary directly."""

    def __init__(self, cluster: SimCluster, me: int) -> None:
        self._cluster, self._me = cluster, me

    async def send(self, peer: bytes, message: Any) -> SimSendHandle:
        cluster = self._cluster
        me = cluster.validators[self._me]
        if peer == me.primary_key:
            return SimSendHandle(me.spawn(me.to_primary(message)), peer)
        target = cluster.by_worker_key[peer]
        return SimSendHandle(me.spawn(cluster.links.send(
            self._me, target.index, call(target.clock, target.worker_receives, self._me, message),
            me.rng)),
            peer)

    async def broadcast_encoded(self, peer_ids: Sequence[bytes], tag: int,
                                body: bytes) -> list[Any]:
        message = messages.decode(tag, body)
        return [await self.send(p, message) for p in peer_ids]
