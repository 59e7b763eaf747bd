"""The two sending disciplines of Narwhal, over a :class:`~narwhal.net.network.PeerManager`.

- :class:`ReliableNetwork` — ``send``/``broadcast`` retry each message until the peer
  answers it (application-level ack) or the returned :class:`CancelHandle` is cancelled or
  garbage-collected. Retries back off with jitter and never hold a pool slot while sleeping;
  permanent errors stop them.
- :class:`UnreliableNetwork` — ``unreliable_send``/``unreliable_broadcast`` try once and
  refuse at once (raise) when the peer is unknown, not connected, or its pool is full.

A slow or dead peer only ever fills its own executor (one per peer, owned by the
``PeerManager``): sends to the others proceed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from narwhal import messages
from narwhal.config.network import RetryConfig
from narwhal.errors import NetworkError, PeerNotConnected, SendCancelled
from narwhal.net.metrics import PeerMetrics
from narwhal.net.rpc import RpcChannel

if TYPE_CHECKING:
    from narwhal.net.network import PeerManager

__all__ = ["CancelHandle", "ReliableNetwork", "UnreliableNetwork"]


class CancelHandle:
    """The result of one reliable send: await it for the response, ``cancel()`` to give up.

    Two ways stop the retries: an explicit :meth:`cancel` (what garbage collection of a
    round does), or dropping the last reference to the handle (``__del__`` cancels the
    task, like MystenLabs' cancel-on-drop handles). The task never refers back to its
    handle, so CPython's reference counting runs ``__del__`` as soon as the caller lets go.
    """

    __slots__ = ("_task", "peer")

    def __init__(self, task: asyncio.Task[Any], peer: bytes) -> None:
        self._task = task
        self.peer = peer

    def __del__(self) -> None:
        self._task.cancel()

    def cancel(self) -> None:
        self._task.cancel()

    def done(self) -> bool:
        return self._task.done()

    def cancelled(self) -> bool:
        return self._task.cancelled()

    def add_done_callback(self, fn: Any) -> None:
        self._task.add_done_callback(fn)

    async def wait(self) -> Any:
        """The peer's response; raises :class:`SendCancelled` if the send was cancelled."""
        try:
            return await asyncio.shield(self._task)
        except asyncio.CancelledError:
            if self._task.cancelled():
                raise SendCancelled("reliable send was cancelled") from None
            raise

    def __await__(self) -> Any:
        return self.wait().__await__()


class ReliableNetwork:
    """Retry until acknowledged (a RESPONSE), cancelled, or a permanent error."""

    def __init__(self, manager: PeerManager, retry: RetryConfig | None = None) -> None:
        self.manager = manager
        self.retry = retry or manager.config.retry

    async def send(self, peer_id: bytes, message: Any) -> CancelHandle:
        """Start sending ``message`` to ``peer_id``; waits only when that peer's executor
        already holds ``max_pending`` jobs (backpressure)."""
        return await self._send_encoded(peer_id, messages.tag_of(message), messages.encode(message))

    async def broadcast(self, peer_ids: Sequence[bytes], message: Any) -> list[CancelHandle]:
        """``send`` to each peer; the message is encoded once."""
        return await self.broadcast_encoded(peer_ids, messages.tag_of(message), messages.encode(message))

    async def broadcast_encoded(self, peer_ids: Sequence[bytes], tag: int, body: bytes) -> list[CancelHandle]:
        """``broadcast`` of a message already encoded as ``(tag, body)``: for a sender that
        keeps only the bytes (the quorum waiter drops a batch's decoded transactions)."""
        return [await self._send_encoded(p, tag, body) for p in peer_ids]

    async def _send_encoded(self, peer_id: bytes, tag: int, body: bytes) -> CancelHandle:
        manager = self.manager
        peer = manager._peer(peer_id)
        metrics = peer.metrics

        async def attempt() -> Any:
            conn = await manager.connection(peer_id)
            channel: RpcChannel = conn.sink  # type: ignore[assignment]
            return await channel.request_raw(tag, body, timeout=manager.config.request_timeout)

        def on_retry(number: int, error: BaseException, delay: float) -> None:
            metrics.retries += 1
            metrics.record_error("send", error)

        task = await peer.executor.spawn_with_retries(attempt, self.retry, on_retry=on_retry)
        task.add_done_callback(lambda t: _count_outcome(metrics, t))
        return CancelHandle(task, peer_id)


def _count_outcome(metrics: PeerMetrics, task: asyncio.Task[Any]) -> None:
    if task.cancelled():
        metrics.sends_cancelled += 1
    elif task.exception() is not None:
        metrics.sends_failed += 1
        metrics.record_error("send", task.exception() or "")
    else:
        metrics.sends_ok += 1


class UnreliableNetwork:
    """One best-effort try per message; refuses at once instead of queueing."""

    def __init__(self, manager: PeerManager) -> None:
        self.manager = manager

    def unreliable_send(self, peer_id: bytes, message: Any) -> asyncio.Task[Any]:
        """Send ``message`` as one request now. Raises :class:`PeerUnknown`,
        :class:`PeerNotConnected` or :class:`PoolFull` instead of waiting."""
        return self._send_encoded(peer_id, messages.tag_of(message), messages.encode(message))

    def unreliable_broadcast(self, peer_ids: Sequence[bytes], message: Any) -> list[asyncio.Task[Any] | Exception]:
        """``unreliable_send`` to each peer; refusals are returned in place of tasks."""
        tag, body = messages.tag_of(message), messages.encode(message)
        results: list[asyncio.Task[Any] | Exception] = []
        for peer_id in peer_ids:
            try:
                results.append(self._send_encoded(peer_id, tag, body))
            except NetworkError as exc:  # unknown, not connected, or pool full
                results.append(exc)
        return results

    def _send_encoded(self, peer_id: bytes, tag: int, body: bytes) -> asyncio.Task[Any]:
        manager = self.manager
        peer = manager._peer(peer_id)
        conn = peer.usable()
        if conn is None:
            raise PeerNotConnected(f"{manager.name}: not connected to {peer.info.name}")
        channel: RpcChannel = conn.sink  # type: ignore[assignment]
        task = peer.executor.try_spawn(
            lambda: channel.request_raw(tag, body, timeout=manager.config.request_timeout))
        task.add_done_callback(lambda t: _count_outcome(peer.metrics, t))
        return task
