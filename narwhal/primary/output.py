"""The ordered output, streamed to clients on the primary's client port.

Why here: :class:`~narwhal.primary.node.PrimaryNode` persists, atomically with the
consensus state, one "output" record per committed certificate (index, round, author,
certificate digest, its batch digests); this service turns those records into the
transactions a client wants, without holding any of them in memory for long.

Protocol (``wire_spec.md`` §9.3), on a Noise-NK :class:`~narwhal.net.clients.ClientServer`
whose server key is the primary's network key:

- ``Subscribe(from_index)``: consensus indexes start at 1 (the first committed
  certificate); ``from_index`` 0 means "from the start", i.e. 1. An index above
  ``consensus_index + 1`` is refused ``INVALID`` ("index in the future") at once, no wait;
  one below the first index kept is refused ``NOT_FOUND`` (we keep every index today, so
  this cannot happen yet). Otherwise the answer is ``SubscribeAccepted(next_index)`` and
  ``OrderedOutput`` one-way items follow on that connection, in index order, following new
  commits as they are written. One subscription per connection (a second is ``INVALID``).
- Each index is sent as one item per batch of its certificate (``batch`` of ``batches``),
  so an item never exceeds a frame; an empty certificate is one item with no transactions,
  so indexes stay contiguous. Resume is by index: a client that lost the connection in the
  middle of an index subscribes again from that index and receives it whole.
- Transactions are fetched from our own workers with ``RequestBatches``, retried with
  backoff while the batch is not there yet; the node's
  :class:`~narwhal.primary.committed_batches.CommittedBatches` has the worker fetch it
  from the other authorities' workers meanwhile, whatever the GC round.

Bounds: each subscriber waits for its connection's write buffer to drain below the
high-water mark before each item (transport backpressure), so it holds at most one item
(one batch) beyond that buffer. A subscriber blocked for longer than ``slow_timeout`` is
closed with GOAWAY ``TIMEOUT`` and counted (``stats["slow_closed"]``); at most
``max_clients`` subscribers are connected at once (more are refused ``OVERLOADED``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, cast

from narwhal.errors import ConnectionClosed, ErrorCode, RequestRejected
from narwhal.messages import Batch, OrderedOutput, RequestBatches, Subscribe, SubscribeAccepted
from narwhal.net.clients import DEFAULT_MAX_CLIENTS, ClientServer
from narwhal.net.connection import Connection, ConnectionConfig
from narwhal.net.retry import RetryConfig, retry
from narwhal.net.rpc import Router, channel_of
from narwhal.primary.node import decode_output_record
from narwhal.store import u64
from narwhal.wire.noise import HandshakePayload

__all__ = ["DEFAULT_SLOW_TIMEOUT", "OutputService"]

log = logging.getLogger(__name__)

#: Seconds a subscriber may leave its connection unwritable before it is closed.
DEFAULT_SLOW_TIMEOUT = 30.0
#: Seconds one RequestBatches to our worker may take.
FETCH_TIMEOUT = 5.0
#: Backoff while a committed batch is not at our worker yet (it is being synced): forever,
#: the subscriber is waiting for exactly this batch.
FETCH_RETRY = RetryConfig(initial_interval=0.05, max_interval=2.0, max_elapsed_time=None)
#: Seconds between two looks at the store while no commit notification arrives (a safety
#: net: the node pulses ``commit_written`` after each write).
POLL_INTERVAL = 1.0
#: Seconds a closed slow subscriber gets to flush its GOAWAY before the socket is aborted.
ABORT_GRACE = 1.0

#: ``request_worker(worker_id, message, timeout)``: one try, the worker's response.
RequestWorker = Callable[[int, Any, float], Awaitable[Any]]


class OutputService:
    def __init__(self, *, node: Any, request_worker: RequestWorker, local_static: bytes,
                 network_id: bytes, local_payload: HandshakePayload,
                 config: ConnectionConfig, name: str = "output",
                 max_clients: int = DEFAULT_MAX_CLIENTS,
                 slow_timeout: float = DEFAULT_SLOW_TIMEOUT) -> None:
        """``node``: the :class:`PrimaryNode` (its ``store``, ``consensus_index``,
        ``commit_written`` event and ``committed_batches``)."""
        self._node = node
        self._request_worker = request_worker
        self.slow_timeout = slow_timeout
        router = Router()
        router.route(Subscribe, self._subscribe)
        self.server = ClientServer(local_static=local_static, network_id=network_id,
                                   local_payload=local_payload, router=router, config=config,
                                   name=name, max_clients=max_clients)
        self._streams: dict[int, asyncio.Task[None]] = {}  # client id -> its stream
        #: subscriptions, items_sent, slow_closed, failed (a stream that hit a bug).
        self.stats: Counter[str] = Counter()

    async def start(self, host: str, port: int, *, sock: socket.socket | None = None) -> int:
        return await self.server.start(host, port, sock=sock)

    async def stop(self) -> None:
        for task in list(self._streams.values()):
            task.cancel()
        await asyncio.gather(*self._streams.values(), return_exceptions=True)
        await self.server.stop()

    def status(self) -> dict[str, Any]:
        return {"subscribers": len(self._streams), **self.stats}

    # -- subscription ----------------------------------------------------------------------

    async def _subscribe(self, peer: Any, request: Subscribe) -> SubscribeAccepted:
        conn = next((c for c in self.server.connections if c.peer == peer), None)
        if conn is None:
            raise ConnectionClosed("subscriber gone")
        if peer.id in self._streams:
            raise RequestRejected(ErrorCode.INVALID, "already subscribed on this connection")
        start = max(1, request.from_index)
        last = self._node.consensus_index
        if start > last + 1:
            raise RequestRejected(ErrorCode.INVALID,
                                  f"index in the future: {start} > next index {last + 1}")
        # the oldest record kept; none yet: the first commits' records are still being
        # written (consensus_index counts them already), and _record waits for them
        kept = self._node.store.keys("output", limit=1)
        if start < (int.from_bytes(kept[0], "big") if kept else 1):
            raise RequestRejected(ErrorCode.NOT_FOUND, f"index {start} is no longer kept")
        # the task first runs after this handler returned, i.e. after the answer is queued
        task = asyncio.ensure_future(self._stream(conn, start))
        self._streams[peer.id] = task
        task.add_done_callback(lambda _: self._streams.pop(peer.id, None))
        conn.closed.add_done_callback(lambda _: task.cancel())
        self.stats["subscriptions"] += 1
        return SubscribeAccepted(start)

    async def _stream(self, conn: Connection, index: int) -> None:
        try:
            while True:
                index_, round_, author, digest, payload = decode_output_record(
                    await self._record(index))
                parts = max(1, len(payload))
                for k in range(parts):
                    batch = await self._batch(index_, author, *payload[k]) if payload else Batch(())
                    await self._push(conn, OrderedOutput(index_, round_, author, digest, k, parts,
                                                         batch.transactions))
                index += 1
        except (ConnectionClosed, asyncio.CancelledError):
            pass  # the subscriber left, or we are stopping
        except _TooSlow:
            self.stats["slow_closed"] += 1
            log.info("%s: closing a subscriber that did not read for %.1fs", conn.name,
                     self.slow_timeout)
            conn.close(ErrorCode.TIMEOUT, f"subscriber too slow: not reading for {self.slow_timeout}s")
            asyncio.get_running_loop().call_later(ABORT_GRACE, conn.abort)
        except Exception:
            self.stats["failed"] += 1
            log.exception("%s: output stream failed at index %d", conn.name, index)
            conn.close(ErrorCode.INTERNAL, f"output stream failed at index {index}")

    async def _record(self, index: int) -> bytes:
        """The persisted output record of ``index``, waiting for its commit to be written."""
        while (blob := self._node.store.get("output", u64(index))) is None:
            try:
                async with asyncio.timeout(POLL_INTERVAL):
                    await self._node.commit_written.wait()
            except TimeoutError:
                pass
        return cast(bytes, blob)

    async def _batch(self, index: int, author: bytes, digest: bytes, worker_id: int) -> Batch:
        """The batch from our worker ``worker_id``, asking again until it holds it.

        A miss hands the batch to the node's :class:`CommittedBatches`, which has our worker
        fetch it from the other authorities' workers (and warns when that takes long): a
        record saying our worker stored it does not help a worker that lost it."""
        async def attempt() -> Batch:
            response = await self._request_worker(worker_id, RequestBatches((digest,)), FETCH_TIMEOUT)
            for batch in response.batches:
                if batch.digest() == digest:
                    return cast(Batch, batch)
            self.stats["fetch_retries"] += 1
            self._node.committed_batches.want(index, digest, worker_id, author)
            raise RequestRejected(ErrorCode.NOT_FOUND, f"batch {digest.hex()[:16]} not at worker yet")

        return cast(Batch, await retry(attempt, FETCH_RETRY))

    async def _push(self, conn: Connection, item: OrderedOutput) -> None:
        try:
            async with asyncio.timeout(self.slow_timeout):
                await channel_of(conn).notify(item)
        except TimeoutError:
            raise _TooSlow from None
        self.stats["items_sent"] += 1


class _TooSlow(Exception):
    """The subscriber's connection stayed unwritable for ``slow_timeout``."""

