"""Submit transactions to a worker: :class:`TransactionClient` and the load helpers
(:func:`submit_load`, :func:`line_source`), and the transactions they make
(:func:`make_transaction`, :func:`parse_transaction`).

A :class:`TransactionClient` holds one Noise-NK connection to one worker's transactions
port (the worker's network key from the committee is the server key; the client itself is
anonymous). Transactions travel in frames of many (``SubmitTransactions``, at most
``frame_transactions`` each and about :data:`MAX_FRAME_BYTES`), and each frame is answered
by ``TransactionsAccepted(count)``.

Guarantees:

- **Backpressure.** At most ``max_in_flight`` frames wait for their answer; the next frame
  waits for a slot. A worker that is slow (or answers OVERLOADED, which is retried after a
  backoff) slows the client down; nothing queues without bound.
- **Reconnects.** A lost connection is redialled with jittered backoff, and the frames that
  were in flight are sent again. Delivery is therefore *at least once*: a frame whose answer
  was lost with the connection may be stored twice (:attr:`ClientStats.resent` counts such
  frames). A permanent refusal (a transaction too large, say) is raised, not retried.
- **Pacing.** :meth:`TransactionClient.submit_at_rate` sends in bursts every
  :data:`TICK` seconds at a steady average rate. When the worker cannot keep up it does not
  burst to catch up more than :data:`MAX_LAG` seconds of transactions: the rest is counted
  in :attr:`ClientStats.lagged` and never sent.
- **Unique transactions.** :func:`make_transaction` builds ``client id (8 bytes) || counter
  (8) || send time in ns since the epoch (8, when size >= 24) || zero padding``, big-endian;
  :func:`parse_transaction` reads them back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import struct
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Self

import attrs

from narwhal.config import Committee, ConfigError, parse_address
from narwhal.config.rate_limits import CLIENT_FRAME_TRANSACTIONS
from narwhal.errors import ConnectionClosed, NarwhalError
from narwhal.messages import SubmitTransactions, TransactionsAccepted
from narwhal.net.clients import connect_client
from narwhal.net.connection import Connection
from narwhal.net.retry import Backoff, RetryConfig, is_transient
from narwhal.net.rpc import channel_of

__all__ = ["ClientStats", "TransactionClient", "line_source", "make_transaction",
           "parse_transaction", "submit_load"]

log = logging.getLogger(__name__)

#: Transactions per frame, at most (the wire allows 10,000; a few hundred keep a frame
#: small enough that one slow frame does not hold much). The workers' default rate limits
#: assume this frame size, so the number is theirs.
DEFAULT_FRAME_TRANSACTIONS = CLIENT_FRAME_TRANSACTIONS
#: Bytes of transactions per frame, about: fewer transactions go in a frame of big ones.
MAX_FRAME_BYTES = 512 * 1024
#: Frames awaiting their answer at once: the client's backpressure window.
DEFAULT_MAX_IN_FLIGHT = 8
#: Seconds between two bursts of :meth:`TransactionClient.submit_at_rate`.
TICK = 0.05
#: Seconds of transactions a late rate loop may send at once to catch up; beyond it, skip.
MAX_LAG = 1.0
#: Smallest transaction: client id + counter.
MIN_TRANSACTION_SIZE = 16
_HEADER = struct.Struct(">QQQ")
#: Redial backoff: quick at first (a worker restarting), capped so a client notices soon.
DEFAULT_RETRY = RetryConfig(initial_interval=0.2, max_interval=5.0)
#: Seconds a frame may wait for its answer before it is sent again.
REQUEST_TIMEOUT = 30.0
#: Seconds a finished rate loop waits for the frames still in flight (an unreachable worker
#: must not keep the client alive for ever).
DRAIN_TIMEOUT = 10.0


def make_transaction(client_id: int, counter: int, size: int, now_ns: int | None = None) -> bytes:
    """A unique transaction of ``size`` (>= 16) bytes; see the module docstring."""
    if size < MIN_TRANSACTION_SIZE:
        raise ValueError(f"transactions need at least {MIN_TRANSACTION_SIZE} bytes, got {size}")
    stamp = time.time_ns() if now_ns is None else now_ns
    head = _HEADER.pack(client_id, counter, stamp)
    return head + _zeros(size - len(head)) if size >= len(head) else head[:size]


@functools.lru_cache(maxsize=16)
def _zeros(n: int) -> bytes:
    """Padding, made once per size (a load client makes ~10^4 transactions a second)."""
    return bytes(n)


def parse_transaction(tx: bytes) -> tuple[int, int, int | None]:
    """``(client_id, counter, send_time_ns or None)`` of a :func:`make_transaction` output."""
    if len(tx) >= _HEADER.size:
        return _HEADER.unpack_from(tx)
    client_id, counter = struct.unpack_from(">QQ", tx)
    return client_id, counter, None


@attrs.define
class ClientStats:
    """Counters of one client (transactions unless named otherwise)."""

    sent: int = 0  # handed to the connection (resends not counted again)
    accepted: int = 0  # acknowledged by the worker
    frames: int = 0  # frames acknowledged
    resent: int = 0  # frames sent again after a lost connection or an OVERLOADED answer
    reconnects: int = 0  # connections made after the first one was lost
    lagged: int = 0  # skipped by the rate loop because the worker could not keep up
    abandoned: int = 0  # frames given up on at the end, still unanswered
    last_error: str | None = None
    #: ``[first counter, count]`` of each frame of :func:`make_transaction` transactions that
    #: ended without being accepted (refused for good, abandoned, cancelled): with ``sent``,
    #: exactly which counters were acknowledged, for an audit of what was lost. Bounded:
    #: a permanent refusal ends the load, so only the frames then in flight are added.
    unaccepted: list[list[int]] = attrs.Factory(list)

    def add(self, other: ClientStats) -> None:
        for field in _COUNTERS:
            setattr(self, field, getattr(self, field) + getattr(other, field))
        self.unaccepted.extend(other.unaccepted)
        self.last_error = other.last_error or self.last_error


_COUNTERS = tuple(f.name for f in attrs.fields(ClientStats)
                  if f.name not in ("last_error", "unaccepted"))


class TransactionClient:
    """Submits transactions to one worker (see the module docstring)."""

    def __init__(self, committee: Committee, authority: bytes, worker_id: int = 0, *,
                 client_id: int | None = None,
                 frame_transactions: int = DEFAULT_FRAME_TRANSACTIONS,
                 max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                 retry: RetryConfig = DEFAULT_RETRY, connect_timeout: float = 5.0) -> None:
        if authority not in committee.authorities:
            raise ConfigError(f"authority {authority.hex()} is not in the committee")
        if worker_id not in committee.worker_ids:
            raise ConfigError(f"worker id {worker_id} is not in {committee.worker_ids}")
        info = committee.authorities[authority].workers[worker_id]
        self.authority, self.worker_id = authority, worker_id
        self.address = parse_address(info.transactions_address)
        self.name = f"client->{authority.hex()[:8]}/worker{worker_id}"
        self._server_key, self._network_id = info.network_key, committee.network_id()
        self.client_id = int.from_bytes(os.urandom(8), "big") if client_id is None else client_id
        self.frame_transactions = frame_transactions
        self._window = asyncio.Semaphore(max_in_flight)
        self._retry, self._connect_timeout = retry, connect_timeout
        self._conn: Connection | None = None
        self._connected_before = False
        self._dialing = asyncio.Lock()
        self._counter = 0
        self._tasks: set[asyncio.Task[int]] = set()
        self.stats = ClientStats()

    # -- connection ------------------------------------------------------------------------

    async def connect(self) -> None:
        """Dial the worker once (raises on failure); later frames redial by themselves."""
        await self._connection(retry=False)

    async def close(self) -> None:
        """Cancel frames still in flight and close the connection."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._conn is not None:
            await self._conn.aclose()
            self._conn = None

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _connection(self, retry: bool = True) -> Connection:
        async with self._dialing:
            backoff = Backoff(self._retry)
            while self._conn is None or not self._conn.is_open:
                try:
                    self._conn = await connect_client(
                        *self.address, server_static=self._server_key,
                        network_id=self._network_id, timeout=self._connect_timeout,
                        check_server=self._is_our_worker, name=self.name)
                    if self._connected_before:
                        self.stats.reconnects += 1
                        log.info("%s: reconnected", self.name)
                    self._connected_before = True
                except Exception as exc:
                    if not retry or not is_transient(exc):
                        raise
                    self._note(exc)
                    await backoff.pause()
            return self._conn

    def _is_our_worker(self, payload: Any) -> bool:
        return bool(payload.role == "worker" and payload.authority == self.authority
                    and payload.worker_id == self.worker_id)

    def _note(self, exc: BaseException) -> None:
        self.stats.last_error = f"{type(exc).__name__}: {exc}"
        log.info("%s: %s", self.name, self.stats.last_error)

    # -- frames ----------------------------------------------------------------------------

    def next_transactions(self, count: int, size: int) -> list[bytes]:
        """``count`` fresh unique transactions of ``size`` bytes."""
        start, self._counter = self._counter, self._counter + count
        now = time.time_ns()
        return [make_transaction(self.client_id, n, size, now) for n in range(start, start + count)]

    def frames(self, transactions: Sequence[bytes]) -> Iterable[Sequence[bytes]]:
        """``transactions`` cut into frames of at most ``frame_transactions`` and about
        :data:`MAX_FRAME_BYTES` each."""
        frame: list[bytes] = []
        size = 0
        for tx in transactions:
            if frame and (len(frame) >= self.frame_transactions or size + len(tx) > MAX_FRAME_BYTES):
                yield frame
                frame, size = [], 0
            frame.append(tx)
            size += len(tx)
        if frame:
            yield frame

    async def send_frame(self, transactions: Sequence[bytes]) -> asyncio.Task[int]:
        """Wait for a slot in the window, then send one frame in the background; the task
        answers the count the worker accepted."""
        await self._window.acquire()
        task = asyncio.ensure_future(self._deliver(SubmitTransactions(tuple(transactions))))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _deliver(self, message: SubmitTransactions) -> int:
        accepted = False
        try:
            self.stats.sent += len(message.transactions)
            backoff: Backoff | None = None  # made on the first failure: most frames have none
            while True:
                conn = await self._connection()
                try:
                    channel = channel_of(conn)
                    answer = await channel.request(message, timeout=REQUEST_TIMEOUT)
                except (NarwhalError, OSError, TimeoutError) as exc:
                    self._note(exc)
                    if not is_transient(exc):
                        raise
                    self.stats.resent += 1
                    if not isinstance(exc, ConnectionClosed):  # OVERLOADED, TIMEOUT...
                        backoff = backoff or Backoff(self._retry)
                        await backoff.pause()
                    continue
                assert isinstance(answer, TransactionsAccepted)
                accepted = True
                self.stats.accepted += answer.count
                self.stats.frames += 1
                return answer.count
        finally:
            self._window.release()
            if not accepted:
                self._note_unaccepted(message.transactions)

    def _note_unaccepted(self, transactions: Sequence[bytes]) -> None:
        """Remember the counters of a frame that was not accepted, if it is one of our
        :meth:`next_transactions` frames (consecutive counters)."""
        if transactions and len(transactions[0]) >= MIN_TRANSACTION_SIZE:
            client_id, first, _ = parse_transaction(transactions[0])
            if client_id == self.client_id:
                self.stats.unaccepted.append([first, len(transactions)])

    async def submit(self, transactions: Sequence[bytes]) -> int:
        """Send ``transactions`` (in frames, within the window); return how many the worker
        accepted once every frame is answered."""
        tasks = [await self.send_frame(frame) for frame in self.frames(transactions)]
        return sum(await asyncio.gather(*tasks))

    async def drain(self, timeout: float | None = None) -> None:
        """Wait for every frame in flight (at most ``timeout`` seconds: then the rest are
        cancelled and counted in ``stats.abandoned``); raise the first permanent error."""
        tasks = list(self._tasks)
        if not tasks:
            return
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if pending:
            self.stats.abandoned += len(pending)
            log.warning("%s: gave up on %d frames still unanswered after %.0fs",
                        self.name, len(pending), timeout)
        for task in done:
            task.result()

    def _raise_failures(self) -> None:
        for task in list(self._tasks):
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    # -- pacing ----------------------------------------------------------------------------

    async def submit_at_rate(self, rate: float, tx_size: int,
                             duration: float | None = None) -> ClientStats:
        """Send ``rate`` fresh transactions per second (0: as fast as the window allows) of
        ``tx_size`` bytes, for ``duration`` seconds (None: until cancelled), then wait for the
        answers; return the counters."""
        async def fresh(count: int) -> list[bytes]:
            return self.next_transactions(count, tx_size)
        return await self.submit_from(fresh, rate, duration)

    async def submit_from(self, source: Callable[[int], Awaitable[list[bytes]]],
                          rate: float | None, duration: float | None = None) -> ClientStats:
        """Send what ``source(n)`` gives (up to ``n`` transactions; an empty list ends it) at
        ``rate`` per second (None: as fast as the window allows), for at most ``duration``
        seconds, then wait for the answers."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        end = None if duration is None else start + duration
        offered = 0  # transactions due so far, including those skipped for lag
        deadline = asyncio.timeout_at(end)
        try:
            async with deadline:
                while True:
                    self._raise_failures()
                    due = self.frame_transactions
                    if rate:
                        due = int(rate * (loop.time() - start)) - offered
                        skip = max(0, due - int(rate * MAX_LAG))
                        self.stats.lagged += skip
                        offered += skip
                        due -= skip
                    batch = await source(due) if due > 0 else []
                    if due > 0 and not batch:
                        break
                    offered += len(batch)
                    for frame in self.frames(batch):
                        await self.send_frame(frame)
                    if rate:
                        await asyncio.sleep(TICK)
        except TimeoutError:
            if not deadline.expired():
                raise
            # the duration is over, perhaps while waiting for room in the window
        if rate and end is not None:  # what fell due but was never sent
            self.stats.lagged += max(0, int(rate * (min(loop.time(), end) - start)) - offered)
        await self.drain(DRAIN_TIMEOUT)
        return self.stats


async def submit_load(clients: Sequence[TransactionClient], rate: float | None,
                      duration: float | None, *, tx_size: int | None = None,
                      source: Callable[[int], Awaitable[list[bytes]]] | None = None,
                      report: Callable[[ClientStats], None] | None = None,
                      report_interval: float = 1.0) -> ClientStats:
    """Run every client at ``rate / len(clients)`` (None or 0: unpaced; fresh transactions of ``tx_size`` bytes,
    or what the shared ``source`` gives), calling ``report(totals)`` every
    ``report_interval`` seconds; return the totals."""
    share = rate / len(clients) if rate else None

    def totals() -> ClientStats:
        total = ClientStats()
        for c in clients:
            total.add(c.stats)
        return total

    async def reporter() -> None:
        while report is not None:
            report(totals())
            await asyncio.sleep(report_interval)

    async def one(client: TransactionClient) -> None:
        if source is not None:
            await client.submit_from(source, share, duration)
        else:
            assert tx_size is not None
            await client.submit_at_rate(share or 0, tx_size, duration)

    reporting = asyncio.ensure_future(reporter())
    try:
        await asyncio.gather(*(one(c) for c in clients))
    finally:
        reporting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporting
    if report is not None:
        report(totals())
    return totals()


def line_source(stream: Any) -> Callable[[int], Awaitable[list[bytes]]]:
    """A shared source of transactions: one per line of a binary ``stream`` (newline
    stripped, empty lines skipped), read in a thread so the loop keeps serving answers."""
    lock = asyncio.Lock()

    def read(count: int) -> list[bytes]:
        out: list[bytes] = []
        while len(out) < count:
            line = stream.readline()
            if not line:
                break
            if line := line.rstrip(b"\r\n"):
                out.append(line)
        return out

    async def source(count: int) -> list[bytes]:
        async with lock:
            return await asyncio.to_thread(read, count)
    return source
