"""Follow a primary's ordered output: :class:`OutputSubscriber`.

An :class:`OutputSubscriber` follows one primary's ordered output (``Subscribe`` on the
primary's client port, Noise NK with the primary's network key). It yields one tuple per
consensus index, in order, only once every part (one per batch) of that index arrived; after
a disconnect or a node restart it redials with backoff and subscribes again from the first
index it has not yielded, so the caller sees every index exactly once, without gaps. While
the caller is not consuming, at most :data:`SUBSCRIBER_BUFFER` items are buffered, then the
connection stops reading (the node's backpressure, and if that lasts, its slow-subscriber
timeout, takes over).

It redials and waits for answers like :class:`~narwhal.client.transactions.TransactionClient`
(the same :data:`~narwhal.client.transactions.DEFAULT_RETRY` and
:data:`~narwhal.client.transactions.REQUEST_TIMEOUT`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from narwhal.client.transactions import DEFAULT_RETRY, REQUEST_TIMEOUT
from narwhal.config import Committee, ConfigError, parse_address
from narwhal.errors import ConnectionClosed, ErrorCode, NarwhalError, RemoteError
from narwhal.messages import OrderedOutput, Subscribe, SubscribeAccepted
from narwhal.net.clients import connect_client
from narwhal.net.connection import Connection, ConnectionConfig
from narwhal.net.retry import Backoff, RetryConfig, is_transient
from narwhal.net.rpc import Router, channel_of
from narwhal.wire.frames import DEFAULT_MAX_FRAME_SIZE

__all__ = ["OutputItem", "OutputPruned", "OutputSubscriber"]

log = logging.getLogger(__name__)

#: Output items a subscriber buffers before it stops reading its connection.
SUBSCRIBER_BUFFER = 64

#: What :meth:`OutputSubscriber.subscribe` yields per index:
#: ``(index, round, author, certificate digest, transactions)``.
OutputItem = tuple[int, int, bytes, bytes, list[bytes]]


class OutputPruned(NarwhalError):
    """The node no longer keeps the index asked for (retention deleted it, before the
    subscription or while we were reading): ``earliest`` is the first index it still has.
    Permanent: asking again for the same index cannot succeed."""

    code = ErrorCode.PRUNED

    def __init__(self, index: int, earliest: int) -> None:
        super().__init__(f"output index {index} is no longer kept by the node; the earliest it "
                         f"still has is {earliest}")
        self.index, self.earliest = index, earliest


class OutputSubscriber:
    """Follows one primary's ordered output (see the module docstring)."""

    def __init__(self, committee: Committee, authority: bytes, *,
                 retry: RetryConfig = DEFAULT_RETRY, connect_timeout: float = 5.0,
                 buffer: int = SUBSCRIBER_BUFFER,
                 max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        """``max_frame_size`` is advertised to the node: a part of the output larger than
        that ends the subscription with a permanent ``TOO_LARGE`` (wire_spec.md §9.3)."""
        if authority not in committee.authorities:
            raise ConfigError(f"authority {authority.hex()} is not in the committee")
        primary = committee.authorities[authority].primary
        self.authority = authority
        self.address = parse_address(primary.client_address)
        self.name = f"subscriber->{authority.hex()[:8]}"
        self._server_key, self._network_id = primary.network_key, committee.network_id()
        self._retry, self._connect_timeout, self._buffer = retry, connect_timeout, buffer
        self._config = ConnectionConfig(max_frame_size=max_frame_size)
        self.reconnects = 0
        self.last_error: str | None = None

    async def subscribe(self, from_index: int = 1) -> AsyncIterator[OutputItem]:
        """Every index from ``from_index`` on (0 means 1, the first), in order, each once.
        Raises a permanent refusal (``RemoteError`` INVALID for an index in the future;
        :class:`OutputPruned` for one the node no longer keeps)."""
        next_index, backoff = max(1, from_index), Backoff(self._retry)
        while True:
            inbox: asyncio.Queue[OrderedOutput | None] = asyncio.Queue()
            try:
                conn = await self._subscribe(next_index, inbox)
            except (NarwhalError, OSError, TimeoutError) as exc:
                self._failed(exc, next_index)
                await backoff.pause()
                continue
            backoff.reset()
            try:
                async for item in self._indexes(conn, inbox, next_index):
                    next_index += 1
                    yield item
            finally:
                conn.abort()
            self.reconnects += 1

    async def _subscribe(self, index: int, inbox: asyncio.Queue[OrderedOutput | None]) -> Connection:
        router = Router()
        conn: Connection | None = None

        async def arrived(peer: Any, item: OrderedOutput) -> None:
            inbox.put_nowait(item)
            if inbox.qsize() >= self._buffer and conn is not None and conn._transport is not None:
                conn._transport.pause_reading()  # the node's backpressure takes over

        router.route(OrderedOutput, arrived)
        conn = await connect_client(*self.address, server_static=self._server_key,
                                    network_id=self._network_id, router=router,
                                    config=self._config,
                                    timeout=self._connect_timeout, name=self.name,
                                    check_server=lambda p: p.role == "primary"
                                    and p.authority == self.authority)
        conn.closed.add_done_callback(lambda _: inbox.put_nowait(None))
        try:
            accepted = await channel_of(conn).request(Subscribe(index),
                                                                 timeout=REQUEST_TIMEOUT)
        except BaseException:
            conn.abort()
            raise
        assert isinstance(accepted, SubscribeAccepted)
        if accepted.next_index != index:
            conn.abort()
            raise ConnectionClosed(f"{self.name}: asked for {index}, offered {accepted.next_index}")
        return conn

    async def _indexes(self, conn: Connection, inbox: asyncio.Queue[OrderedOutput | None],
                       index: int) -> AsyncIterator[OutputItem]:
        """Whole indexes from one connection until it closes or breaks the sequence."""
        parts: list[OrderedOutput] = []
        while (item := await inbox.get()) is not None:
            if inbox.qsize() < self._buffer // 2 and conn._transport is not None:
                conn._transport.resume_reading()
            if (item.index, item.batch) != (index, len(parts)) or item.batch >= item.batches:
                self._failed(ConnectionClosed(f"{self.name}: got index {item.index} part "
                                              f"{item.batch}/{item.batches}, expected {index} "
                                              f"part {len(parts)}"))
                return
            parts.append(item)
            if item.batch == item.batches - 1:
                yield (index, item.round, item.author, item.certificate,
                       [tx for part in parts for tx in part.transactions])
                index, parts = index + 1, []
        if conn.goaway is not None and not RemoteError(*conn.goaway).transient:
            # e.g. TOO_LARGE: the next part exceeds our max_frame_size; coming back for the
            # same index would fail the same way
            self._failed(RemoteError(*conn.goaway), index)
        self._failed(conn.close_reason or ConnectionClosed(f"{self.name}: closed"), index)

    def _failed(self, exc: BaseException, index: int = 0) -> None:
        """Remember a transient failure (we redial); raise a permanent one (``index``: the
        one we were asking for)."""
        if isinstance(exc, RemoteError) and exc.code is ErrorCode.PRUNED:
            raise OutputPruned(index, exc.detail or 0) from exc
        if not is_transient(exc):
            raise exc
        self.last_error = f"{type(exc).__name__}: {exc}"
        log.info("%s: %s", self.name, self.last_error)
