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
  one below the earliest index kept (retention: ``retain_seconds``) is refused ``PRUNED``
  with that earliest index as the error's detail. A stream that falls behind retention
  (its next record deleted while it reads) ends with GOAWAY ``PRUNED``, same detail. Over ``max_subscribers`` subscriptions, or
  ``max_subscribers_per_address`` from the client's address, it is refused ``OVERLOADED``.
  Otherwise the answer is ``SubscribeAccepted(next_index)``, queued before the first
  ``OrderedOutput`` (the stream waits for the handler's task), and one-way items follow on
  that connection, in index order, following new commits as they are written. One
  subscription per connection (a second is ``INVALID``).
- Each index is sent as one item per batch of its certificate (``batch`` of ``batches``),
  so an item never exceeds a frame; an empty certificate is one item with no transactions,
  so indexes stay contiguous. Resume is by index.
- A part larger than the client's advertised ``max_frame_size`` ends the subscription with
  GOAWAY ``TOO_LARGE`` (permanent: the client must come back with a larger limit), counted
  ``parts_too_large``.

Off the consensus path (issue 12): a part is the stored batch body spliced into the
``OrderedOutput`` bytes (:mod:`~narwhal.primary.output_parts`: no decode, no re-encode),
fetched once for all subscribers (:class:`~narwhal.primary.output_batches.OutputBatches`:
undecoded, digest checked in a thread, small shared cache), and every part waits for a
turn of the :class:`~narwhal.primary.output_pacer.FairPacer`: turns in order of asking,
``PACER_SLOTS`` at once, ``output_rate`` bytes/s (and ``OUTPUT_PARTS_RATE`` parts/s) for
all subscribers together.

Bounds: before each part a subscriber waits until the bytes queued toward it are below
``subscriber_buffer_bytes`` (its connection's high-water mark), so one holds at most that
plus one part; it waits outside the pacer, so a slow reader never holds a turn. One that
stays above it for ``slow_timeout`` is disconnected without a GOAWAY (which it could not
read: it would sit behind the unread data), i.e. the connection is aborted, and counted
``slow_closed``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter
from typing import Any, cast

import attrs

from narwhal.config import Parameters
from narwhal.consensus.records import decode_output_record
from narwhal.errors import ConnectionClosed, ErrorCode, RequestRejected
from narwhal.messages import Subscribe, SubscribeAccepted
from narwhal.net.clients import DEFAULT_MAX_CLIENTS, ClientServer
from narwhal.net.connection import Connection, ConnectionConfig
from narwhal.net.retry import Backoff, RetryConfig
from narwhal.net.rpc import Router
from narwhal.primary.output_batches import OutputBatches, RequestWorkerBytes
from narwhal.primary.output_pacer import FairPacer
from narwhal.primary.output_parts import EMPTY_BATCH_BODY, output_part
from narwhal.store import u64
from narwhal.wire.frames import FrameKind
from narwhal.wire.noise import HandshakePayload

__all__ = ["DEFAULT_SLOW_TIMEOUT", "OutputLimits", "OutputService", "SubscriberTooSlow"]

log = logging.getLogger(__name__)

#: Seconds a subscriber may leave its connection unwritable before it is disconnected.
DEFAULT_SLOW_TIMEOUT = 30.0
#: Seconds one RequestBatches to our worker may take.
FETCH_TIMEOUT = 5.0
#: Backoff while a committed batch is not at our worker yet (it is being synced): forever,
#: the subscriber is waiting for exactly this batch.
FETCH_RETRY = RetryConfig(initial_interval=0.05, max_interval=2.0, max_elapsed_time=None)
#: Seconds between two looks at the store while no commit notification arrives (a safety
#: net: the node pulses ``commit_written`` after each write).
POLL_INTERVAL = 1.0
#: Parts being fetched and sent at once, for all subscribers together.
PACER_SLOTS = 4
#: Parts per second the pacer allows all streams together, besides ``output_rate`` bytes:
#: each part is charged at least ``output_rate / OUTPUT_PARTS_RATE`` bytes (16 KiB with
#: the defaults). A part's cost to the loop (a turn, a fetch, a frame encrypted) hardly
#: shrinks with its size, and a history of small batches is many small parts: charged by
#: their bytes alone, eight subscribers that never read had the victim replay ~5 MB of
#: tiny parts to each (what their socket buffers took) as fast as its loop turned, and
#: honest commits fell to 0.57-0.75x (tests/adversarial, ``stalled_subscribers``).
OUTPUT_PARTS_RATE = 4096
#: Frame header bytes on top of a part's body (wire_spec.md §5).
FRAME_OVERHEAD = 7


#: Where OutputLimits takes its defaults: written (and explained) once, in Parameters.
_DEFAULTS = Parameters()

#: An OrderedOutput's fields but its transactions: index, round, author, certificate,
#: batch, batches.
_PartFields = tuple[int, int, bytes, bytes, int, int]


@attrs.frozen
class OutputLimits:
    """The output's share of the node (``Parameters`` fields of the same names)."""

    output_rate: int = _DEFAULTS.output_rate
    max_subscribers: int = _DEFAULTS.max_subscribers
    max_subscribers_per_address: int = _DEFAULTS.max_subscribers_per_address
    max_clients_per_address: int = _DEFAULTS.max_clients_per_address
    subscriber_buffer_bytes: int = _DEFAULTS.subscriber_buffer_bytes
    slow_timeout: float = DEFAULT_SLOW_TIMEOUT

    @classmethod
    def of(cls, parameters: Parameters, slow_timeout: float = DEFAULT_SLOW_TIMEOUT) -> OutputLimits:
        return cls(output_rate=parameters.output_rate, max_subscribers=parameters.max_subscribers,
                   max_subscribers_per_address=parameters.max_subscribers_per_address,
                   max_clients_per_address=parameters.max_clients_per_address,
                   subscriber_buffer_bytes=parameters.subscriber_buffer_bytes,
                   slow_timeout=slow_timeout)


class SubscriberTooSlow(ConnectionClosed):
    """Close reason of a subscriber disconnected for not reading for ``slow_timeout``."""

    code = ErrorCode.TIMEOUT


class _PartTooLarge(Exception):
    """A part does not fit in the client's advertised ``max_frame_size``."""


@attrs.define
class _Subscription:
    conn: Connection
    address: str
    task: asyncio.Task[None] | None = None
    paused: bool = False


class OutputService:
    def __init__(self, *, node: Any, request_worker: RequestWorkerBytes, local_static: bytes,
                 network_id: bytes, local_payload: HandshakePayload,
                 config: ConnectionConfig, name: str = "output",
                 max_clients: int = DEFAULT_MAX_CLIENTS,
                 limits: OutputLimits = OutputLimits()) -> None:
        """``node``: the :class:`PrimaryNode` (its ``store``, ``consensus_index``,
        ``commit_written`` event and ``committed_batches``); ``request_worker``: one try to
        our worker, the answer undecoded."""
        self._node = node
        self.limits = limits
        self.slow_timeout = limits.slow_timeout
        router = Router()
        router.route(Subscribe, self._subscribe)
        # the high-water mark is the subscriber's buffer: wait_writable paces each stream
        config = attrs.evolve(config, write_high_water=limits.subscriber_buffer_bytes)
        self.server = ClientServer(local_static=local_static, network_id=network_id,
                                   local_payload=local_payload, router=router, config=config,
                                   name=name, max_clients=max_clients,
                                   max_clients_per_address=limits.max_clients_per_address)
        self.batches = OutputBatches(request_worker, timeout=FETCH_TIMEOUT)
        # a quarter second's worth at once; a larger part still goes (in debt, repaid
        # before the next turn)
        self.pacer = FairPacer(rate=limits.output_rate, slots=PACER_SLOTS,
                               burst=max(1, limits.output_rate // 4))
        self._min_charge = limits.output_rate // OUTPUT_PARTS_RATE
        self._subscriptions: dict[int, _Subscription] = {}  # client id -> its subscription
        self._per_address: Counter[str] = Counter()
        #: subscriptions, items_sent, bytes_served, pauses (a subscriber's buffer was
        #: full), slow_closed, parts_too_large, pruned_closed (fell behind retention),
        #: fetch_retries, failed.
        self.stats: Counter[str] = Counter()
        #: Subscribe requests refused, by reason (per_address, max_subscribers, future,
        #: pruned, twice).
        self.refused: Counter[str] = Counter()

    async def start(self, host: str, port: int, *, sock: socket.socket | None = None) -> int:
        return await self.server.start(host, port, sock=sock)

    async def stop(self) -> None:
        tasks = [s.task for s in self._subscriptions.values() if s.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.batches.close()
        await self.server.stop()

    def status(self) -> dict[str, Any]:
        return {"subscribers": len(self._subscriptions),
                "paused": sum(s.paused for s in self._subscriptions.values()),
                "refused": dict(self.refused), "pacer_waits": self.pacer.waits,
                "clients": self.server.status(),
                **self.stats, **self.batches.stats}

    # -- subscription ----------------------------------------------------------------------

    async def _subscribe(self, peer: Any, request: Subscribe) -> SubscribeAccepted:
        conn = next((c for c in self.server.connections if c.peer == peer), None)
        if conn is None:
            raise ConnectionClosed("subscriber gone")
        if peer.id in self._subscriptions:
            self._refuse("twice", ErrorCode.INVALID, "already subscribed on this connection")
        start = max(1, request.from_index)
        last = self._node.consensus_index
        if start > last + 1:
            self._refuse("future", ErrorCode.INVALID,
                         f"index in the future: {start} > next index {last + 1}")
        # the oldest record kept; none yet: the first commits' records are still being
        # written (consensus_index counts them already), and _record waits for them
        earliest = self._earliest_kept()
        if start < earliest:
            self._refuse("pruned", ErrorCode.PRUNED, f"index {start} is no longer kept: the "
                         f"earliest this node has is {earliest} (retain_seconds)", detail=earliest)
        address = _host(peer.address)
        if len(self._subscriptions) >= self.limits.max_subscribers:
            self._refuse("max_subscribers", ErrorCode.OVERLOADED,
                         f"{self.limits.max_subscribers} subscribers already")
        if self._per_address[address] >= self.limits.max_subscribers_per_address:
            self._refuse("per_address", ErrorCode.OVERLOADED,
                         f"{self.limits.max_subscribers_per_address} subscriptions from your "
                         "address already")
        subscription = _Subscription(conn, address)
        # The answer is queued by this handler's task once we return: the stream waits for
        # that task, so SubscribeAccepted always precedes the first OrderedOutput.
        handler = asyncio.current_task()
        subscription.task = task = asyncio.ensure_future(self._stream(subscription, start, handler))
        self._subscriptions[peer.id] = subscription
        self._per_address[address] += 1
        task.add_done_callback(lambda _: self._ended(peer.id))
        conn.closed.add_done_callback(lambda _: task.cancel())
        self.stats["subscriptions"] += 1
        return SubscribeAccepted(start)

    def _refuse(self, reason: str, code: ErrorCode, text: str, detail: int | None = None) -> None:
        self.refused[reason] += 1
        raise RequestRejected(code, text, detail)

    def _earliest_kept(self) -> int:
        """The lowest output index this node can still serve: retention deleted the older
        ones (:mod:`narwhal.primary.history`)."""
        kept = self._node.store.keys("output", limit=1)
        first = int.from_bytes(kept[0], "big") if kept else 1
        return max(first, int(self._node.output_floor))

    def _ended(self, client_id: int) -> None:
        subscription = self._subscriptions.pop(client_id, None)
        if subscription is not None:
            self._per_address[subscription.address] -= 1
            if not self._per_address[subscription.address]:
                del self._per_address[subscription.address]

    async def _stream(self, subscription: _Subscription, index: int,
                      handler: asyncio.Task[Any] | None) -> None:
        conn = subscription.conn
        try:
            if handler is not None:
                await asyncio.wait([handler])
            while True:
                index_, round_, author, digest, payload = decode_output_record(
                    await self._record(index))
                parts = max(1, len(payload))
                for k in range(parts):
                    batch = payload[k] if payload else None
                    await self._serve_part(subscription, (index_, round_, author, digest, k, parts),
                                           batch)
                index += 1
        except ConnectionClosed:
            pass  # the subscriber left
        except asyncio.CancelledError:
            if _cancelled_itself():
                raise  # the subscriber left (its connection closed), or we are stopping
            # a CancelledError out of something awaited, not a cancellation of this stream:
            # end it loudly, so the client reconnects, never silently with the connection open
            self._failed(conn, index)
        except _TooSlow:
            self.stats["slow_closed"] += 1
            log.info("%s: disconnecting a subscriber that did not read for %.1fs (%d bytes "
                     "queued)", conn.name, self.slow_timeout, conn.queued_outbound)
            conn.abort(SubscriberTooSlow(f"{conn.name}: not reading for {self.slow_timeout}s"))
        except _PartTooLarge as exc:
            self.stats["parts_too_large"] += 1
            log.info("%s: %s", conn.name, exc)
            conn.close(ErrorCode.TOO_LARGE, str(exc))
        except _Pruned as exc:
            self.stats["pruned_closed"] += 1
            log.info("%s: a subscriber fell behind retention at index %d", conn.name, index)
            conn.close(ErrorCode.PRUNED, f"index {index} was deleted by retention while you "
                       f"were reading; the earliest this node has is {exc.earliest}", exc.earliest)
        except Exception:  # noqa: BLE001 -- a bug serving one subscriber must not end the service
            self._failed(conn, index)

    def _failed(self, conn: Connection, index: int) -> None:
        self.stats["failed"] += 1
        log.exception("%s: output stream failed at index %d", conn.name, index)
        conn.close(ErrorCode.INTERNAL, f"output stream failed at index {index}")

    async def _serve_part(self, subscription: _Subscription, fields: _PartFields,
                          batch: tuple[bytes, int] | None) -> None:
        """Send one part once the subscriber has room and the pacer a turn; a batch our
        worker lacks is asked for again (outside the turn) until it is there."""
        backoff = Backoff(FETCH_RETRY)
        while True:
            await self._wait_room(subscription)
            async with self.pacer.turn() as turn:
                body = EMPTY_BATCH_BODY if batch is None else await self.batches.get(*batch)
                if body is not None:
                    turn.spent = max(self._send(subscription.conn, fields, body), self._min_charge)
                    return
            index, _, author = fields[:3]
            self.stats["fetch_retries"] += 1
            self._node.committed_batches.want(index, batch[0], batch[1], author)  # type: ignore[index]
            await backoff.pause()

    async def _wait_room(self, subscription: _Subscription) -> None:
        """Until the bytes queued toward the subscriber are below its buffer."""
        conn = subscription.conn
        if conn.queued_outbound >= self.limits.subscriber_buffer_bytes:
            subscription.paused = True
            self.stats["pauses"] += 1
        try:
            async with asyncio.timeout(self.slow_timeout):
                await conn.wait_writable()
        except TimeoutError:
            raise _TooSlow from None
        finally:
            subscription.paused = False

    def _send(self, conn: Connection, fields: _PartFields, batch_body: Any) -> int:
        part = output_part(*fields, batch_body)
        if len(part.body) + FRAME_OVERHEAD > conn.remote_max_frame_size:
            raise _PartTooLarge(f"output index {fields[0]} part {fields[4]} is "
                                f"{len(part.body) + FRAME_OVERHEAD} bytes, above your "
                                f"max_frame_size {conn.remote_max_frame_size}")
        if not conn.is_open:
            raise ConnectionClosed(f"{conn.name}: closing")
        conn.send_frame(FrameKind.ONEWAY, 0, part.tag, part.body)
        self.stats["items_sent"] += 1
        self.stats["bytes_served"] += len(part.body)
        return len(part.body)

    async def _record(self, index: int) -> bytes:
        """The persisted output record of ``index``, waiting for its commit to be written;
        :class:`_Pruned` if retention deleted it (a subscriber far behind)."""
        while (blob := self._node.store.get("output", u64(index))) is None:
            if index < self._node.output_floor:
                raise _Pruned(self._earliest_kept())
            try:
                async with asyncio.timeout(POLL_INTERVAL):
                    await self._node.commit_written.wait()
            except TimeoutError:
                pass
        return cast(bytes, blob)


def _cancelled_itself() -> bool:
    """Whether the running task was asked to cancel (not merely handed a CancelledError)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _host(address: str) -> str:
    """The host part of ``host:port`` (IPv6 hosts keep their colons)."""
    return address.rpartition(":")[0] or address


class _Pruned(Exception):
    """The record a stream needs next was deleted by retention."""

    def __init__(self, earliest: int) -> None:
        super().__init__(earliest)
        self.earliest = earliest


class _TooSlow(Exception):
    """The subscriber's connection stayed unwritable for ``slow_timeout``."""

