"""The primary's view of the network: authorities and worker ids instead of peer keys.

Maps an authority's name to its primary's network key (and our worker ids to our workers'
keys), and offers what the core, proposer and fetcher need: reliable ``broadcast`` and
``send`` (retried until acknowledged, cancellable), reliable ``to_workers``, and
single-try ``request`` (to another primary, for fetching) and ``request_worker`` (to one of
our workers; ``request_worker_bytes`` leaves the answer undecoded: the ordered output
splices the batches it gets).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from narwhal.net.network import PeerManager
from narwhal.net.rpc import channel_of
from narwhal.net.sending import CancelHandle, ReliableNetwork

__all__ = ["PrimaryNetwork"]


class PrimaryNetwork:
    def __init__(self, manager: PeerManager, *, primaries: dict[bytes, bytes], workers: dict[int, bytes]) -> None:
        """``primaries``: authority name -> primary network key (others only);
        ``workers``: our worker id -> that worker's network key."""
        self.manager = manager
        self.reliable = ReliableNetwork(manager)
        self._primaries = primaries
        self._workers = workers

    @property
    def others(self) -> list[bytes]:
        return list(self._primaries)

    async def broadcast(self, message: Any) -> list[CancelHandle]:
        return await self.reliable.broadcast(list(self._primaries.values()), message)

    async def send(self, authority: bytes, message: Any) -> CancelHandle:
        return await self.reliable.send(self._primaries[authority], message)

    async def to_workers(self, message: Any, worker_ids: Iterable[int] | None = None) -> list[CancelHandle]:
        ids = self._workers if worker_ids is None else worker_ids
        return await self.reliable.broadcast([self._workers[i] for i in ids], message)

    async def request(self, authority: bytes, message: Any, timeout: float) -> Any:
        """One try: the peer's response, or an error (not connected, timeout, refused)."""
        return await self._request_once(self._primaries[authority], message, timeout)

    async def request_worker(self, worker_id: int, message: Any, timeout: float) -> Any:
        """One try to our worker ``worker_id``: its response, or an error."""
        return await self._request_once(self._workers[worker_id], message, timeout)

    async def request_worker_bytes(self, worker_id: int, tag: int, body: bytes,
                                   timeout: float) -> tuple[int, bytes]:
        """:meth:`request_worker` with an encoded request; the response undecoded."""
        conn = await self.manager.connection(self._workers[worker_id], timeout=timeout)
        return await channel_of(conn).exchange(tag, body, timeout=timeout)

    async def _request_once(self, key: bytes, message: Any, timeout: float) -> Any:
        conn = await self.manager.connection(key, timeout=timeout)
        return await channel_of(conn).request(message, timeout=timeout)
