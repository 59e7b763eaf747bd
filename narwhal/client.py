"""Clients of a validator: submit transactions to a worker, and follow the ordered output
of a primary. A Python API and ``python -m narwhal.client submit|subscribe``.

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

An :class:`OutputSubscriber` follows one primary's ordered output (``Subscribe`` on the
primary's client port, Noise NK with the primary's network key). It yields one tuple per
consensus index, in order, only once every part (one per batch) of that index arrived; after
a disconnect or a node restart it redials with backoff and subscribes again from the first
index it has not yielded, so the caller sees every index exactly once, without gaps. While
the caller is not consuming, at most :data:`SUBSCRIBER_BUFFER` items are buffered, then the
connection stops reading (the node's backpressure, and if that lasts, its slow-subscriber
timeout, takes over).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import os
import struct
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Self, cast

import attrs

from narwhal.config import Committee, ConfigError, parse_address
from narwhal.errors import ConnectionClosed, NarwhalError
from narwhal.messages import (
    OrderedOutput,
    SubmitTransactions,
    Subscribe,
    SubscribeAccepted,
    TransactionsAccepted,
)
from narwhal.net.clients import connect_client
from narwhal.net.connection import Connection
from narwhal.net.retry import Backoff, RetryConfig, is_transient
from narwhal.net.rpc import Router, RpcChannel

__all__ = ["ClientStats", "OutputSubscriber", "TransactionClient", "make_transaction",
           "parse_transaction", "resolve_authority", "resolve_workers", "submit_load"]

log = logging.getLogger(__name__)

#: Transactions per frame, at most (the wire allows 10,000; a few hundred keep a frame
#: small enough that one slow frame does not hold much).
DEFAULT_FRAME_TRANSACTIONS = 250
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
#: Hex digits of an authority key that ``--worker`` needs (shorter numbers are indices).
MIN_KEY_PREFIX = 8
#: Redial backoff: quick at first (a worker restarting), capped so a client notices soon.
DEFAULT_RETRY = RetryConfig(initial_interval=0.2, max_interval=5.0)
#: Seconds a frame may wait for its answer before it is sent again.
REQUEST_TIMEOUT = 30.0
#: Seconds a finished rate loop waits for the frames still in flight (an unreachable worker
#: must not keep the client alive for ever).
DRAIN_TIMEOUT = 10.0
#: Output items a subscriber buffers before it stops reading its connection.
SUBSCRIBER_BUFFER = 64


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

    def add(self, other: ClientStats) -> None:
        for field in _COUNTERS:
            setattr(self, field, getattr(self, field) + getattr(other, field))
        self.last_error = other.last_error or self.last_error


_COUNTERS = tuple(f.name for f in attrs.fields(ClientStats) if f.name != "last_error")


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
                    await asyncio.sleep(backoff.next_delay() or self._retry.max_interval)
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
        try:
            self.stats.sent += len(message.transactions)
            backoff: Backoff | None = None  # made on the first failure: most frames have none
            while True:
                conn = await self._connection()
                try:
                    channel = cast(RpcChannel, conn.sink)
                    answer = await channel.request(message, timeout=REQUEST_TIMEOUT)
                except (NarwhalError, OSError, TimeoutError) as exc:
                    self._note(exc)
                    if not is_transient(exc):
                        raise
                    self.stats.resent += 1
                    if not isinstance(exc, ConnectionClosed):  # OVERLOADED, TIMEOUT...
                        backoff = backoff or Backoff(self._retry)
                        await asyncio.sleep(backoff.next_delay() or self._retry.max_interval)
                    continue
                assert isinstance(answer, TransactionsAccepted)
                self.stats.accepted += answer.count
                self.stats.frames += 1
                return answer.count
        finally:
            self._window.release()

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


def resolve_workers(committee: Committee, spec: str) -> list[tuple[bytes, int]]:
    """``"INDEX[:WORKER]"`` or ``"HEXKEY[:WORKER]"`` -> ``[(authority, worker_id)]``; a
    unique prefix of at least :data:`MIN_KEY_PREFIX` hex digits of an authority key is
    enough. ``"all"`` -> every worker of every authority."""
    names = committee.authorities_sorted()
    if spec == "all":
        return [(name, i) for name in names for i in committee.worker_ids]
    who, _, worker = spec.partition(":")
    try:
        worker_id = int(worker) if worker else 0
    except ValueError:
        raise ConfigError(f"--worker {spec!r}: worker id {worker!r} is not a number") from None
    name = resolve_authority(committee, who, f"--worker {spec!r}")
    if worker_id not in committee.worker_ids:
        raise ConfigError(f"--worker {spec!r}: worker id {worker_id} is not in "
                          f"0..{len(committee.worker_ids) - 1}")
    return [(name, worker_id)]


def resolve_authority(committee: Committee, who: str, option: str = "--node") -> bytes:
    """An authority index (in key order) or a unique hex prefix of at least
    :data:`MIN_KEY_PREFIX` digits of its key -> its name; ``option`` names it in errors."""
    names = committee.authorities_sorted()
    if who.isdigit() and len(who) < MIN_KEY_PREFIX:
        if int(who) >= len(names):
            raise ConfigError(f"{option}: authority index {who} is out of range "
                              f"(the committee has {len(names)})")
        return names[int(who)]
    if len(who) < MIN_KEY_PREFIX:
        raise ConfigError(f"{option}: give an authority index or at least "
                          f"{MIN_KEY_PREFIX} hex digits of its key")
    matches = [n for n in names if n.hex().startswith(who.lower())]
    if len(matches) != 1:
        raise ConfigError(f"{option}: {len(matches)} authorities match {who!r}")
    return matches[0]


#: What :meth:`OutputSubscriber.subscribe` yields per index:
#: ``(index, round, author, certificate digest, transactions)``.
OutputItem = tuple[int, int, bytes, bytes, list[bytes]]


class OutputSubscriber:
    """Follows one primary's ordered output (see the module docstring)."""

    def __init__(self, committee: Committee, authority: bytes, *,
                 retry: RetryConfig = DEFAULT_RETRY, connect_timeout: float = 5.0,
                 buffer: int = SUBSCRIBER_BUFFER) -> None:
        if authority not in committee.authorities:
            raise ConfigError(f"authority {authority.hex()} is not in the committee")
        primary = committee.authorities[authority].primary
        self.authority = authority
        self.address = parse_address(primary.client_address)
        self.name = f"subscriber->{authority.hex()[:8]}"
        self._server_key, self._network_id = primary.network_key, committee.network_id()
        self._retry, self._connect_timeout, self._buffer = retry, connect_timeout, buffer
        self.reconnects = 0
        self.last_error: str | None = None

    async def subscribe(self, from_index: int = 1) -> AsyncIterator[OutputItem]:
        """Every index from ``from_index`` on (0 means 1, the first), in order, each once.
        Raises a permanent refusal (``RemoteError`` INVALID for an index in the future)."""
        next_index, backoff = max(1, from_index), Backoff(self._retry)
        while True:
            inbox: asyncio.Queue[OrderedOutput | None] = asyncio.Queue()
            try:
                conn = await self._subscribe(next_index, inbox)
            except (NarwhalError, OSError, TimeoutError) as exc:
                self._failed(exc)
                await asyncio.sleep(backoff.next_delay() or self._retry.max_interval)
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
                                    timeout=self._connect_timeout, name=self.name,
                                    check_server=lambda p: p.role == "primary"
                                    and p.authority == self.authority)
        conn.closed.add_done_callback(lambda _: inbox.put_nowait(None))
        try:
            accepted = await cast(RpcChannel, conn.sink).request(Subscribe(index),
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
        self._failed(conn.close_reason or ConnectionClosed(f"{self.name}: closed"))

    def _failed(self, exc: BaseException) -> None:
        if not is_transient(exc):
            raise exc
        self.last_error = f"{type(exc).__name__}: {exc}"
        log.info("%s: %s", self.name, self.last_error)


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


# --- command line -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from narwhal.node.arguments import add_logging, non_negative_float, positive_float, positive_int

    parser = argparse.ArgumentParser(prog="python -m narwhal.client",
                                     description="narwhal-py client: submit transactions, "
                                                 "follow the ordered output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    submit = sub.add_parser(
        "submit", help="stream transactions to workers",
        description="Submit transactions to one worker or to all of them, at a steady rate "
                    "(fresh unique transactions) or read from a file or stdin (one per line).")
    submit.add_argument("--committee", type=Path, required=True, help="committee.json")
    target = submit.add_mutually_exclusive_group(required=True)
    target.add_argument("--worker", metavar="AUTHORITY[:WORKER_ID]",
                        help="authority index (in key order) or hex key prefix, worker id "
                             "(default 0)")
    target.add_argument("--all-workers", action="store_true",
                        help="spread the load over every worker of every authority")
    submit.add_argument("--rate", type=non_negative_float, default=None,
                        help="transactions per second in all, 0 for as fast as the worker "
                             "takes them (default 1000 for generated transactions; unlimited "
                             "for --from-file/--stdin)")
    submit.add_argument("--tx-size", type=positive_int, default=512,
                        help=f"bytes per generated transaction (>= {MIN_TRANSACTION_SIZE}, "
                             "default 512)")
    submit.add_argument("--duration", type=positive_float, default=None,
                        help="stop after this many seconds (default: until Ctrl-C or EOF)")
    source = submit.add_mutually_exclusive_group()
    source.add_argument("--from-file", type=Path, help="send the lines of this file")
    source.add_argument("--stdin", action="store_true", help="send the lines of stdin")
    submit.add_argument("--status-file", type=Path, default=None,
                        help="write the counters to this JSON file every second")
    add_logging(submit)
    follow = sub.add_parser(
        "subscribe", help="follow a primary's ordered output",
        description="Print the ordered output of one primary, one line per consensus index "
                    "(index, round, author, certificate, transactions, bytes), from --from on; "
                    "reconnects and resumes exactly after a disconnect or a node restart.")
    follow.add_argument("--committee", type=Path, required=True, help="committee.json")
    follow.add_argument("--node", required=True, metavar="AUTHORITY",
                        help="authority index (in key order) or hex key prefix")
    follow.add_argument("--from", dest="from_index", type=int, default=1, metavar="INDEX",
                        help="first consensus index (1 is the first commit; 0 means 1)")
    follow.add_argument("--count", type=positive_int, default=None,
                        help="stop after this many indexes (default: follow for ever)")
    follow.add_argument("--json", action="store_true",
                        help="one JSON object per line (transactions as a count and bytes)")
    add_logging(follow)
    return parser


def output_line(item: OutputItem, as_json: bool) -> str:
    """One line of ``subscribe``'s output for an index."""
    index, round_, author, certificate, transactions = item
    size = sum(map(len, transactions))
    if as_json:
        return json.dumps({"index": index, "round": round_, "author": author.hex(),
                           "certificate": certificate.hex(), "transactions": len(transactions),
                           "bytes": size})
    return (f"{index} round={round_} author={author.hex()[:16]} "
            f"certificate={certificate.hex()[:16]} transactions={len(transactions)} bytes={size}")


async def follow_output(subscriber: OutputSubscriber, from_index: int, count: int | None,
                        as_json: bool) -> int:
    """Print ``count`` indexes (None: for ever) from ``from_index``; return how many."""
    printed = 0
    stream = subscriber.subscribe(from_index)
    try:
        async for item in stream:
            print(output_line(item, as_json), flush=True)
            printed += 1
            if count is not None and printed >= count:
                break
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    return printed


def main(argv: list[str] | None = None) -> int:
    from narwhal.node.arguments import fail, run_until_signal, setup_logging, until_stopped
    from narwhal.node.status import write_status

    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_file)
    if args.command == "subscribe":
        return subscribe_main(args)
    if args.tx_size < MIN_TRANSACTION_SIZE:
        return fail(f"--tx-size must be >= {MIN_TRANSACTION_SIZE}")
    try:
        committee = Committee.load(args.committee)
        targets = resolve_workers(committee, "all" if args.all_workers else args.worker)
        stream = (open(args.from_file, "rb") if args.from_file  # noqa: SIM115
                  else sys.stdin.buffer if args.stdin else None)
    except (ConfigError, OSError) as exc:
        return fail(str(exc))
    rate = args.rate if args.rate is not None else (None if stream else 1000.0)

    def report(stats: ClientStats) -> None:
        if args.status_file is not None:
            write_status(args.status_file, {"pid": os.getpid(), **attrs.asdict(stats)})

    async def run(stop: asyncio.Event) -> int:
        clients = [TransactionClient(committee, name, wid) for name, wid in targets]
        started = time.monotonic()
        try:
            await until_stopped(stop, submit_load(
                clients, rate, args.duration, tx_size=args.tx_size, report=report,
                source=line_source(stream) if stream else None))
        finally:
            await asyncio.gather(*(c.close() for c in clients))
        stats = ClientStats()
        for client in clients:
            stats.add(client.stats)
        report(stats)
        elapsed = time.monotonic() - started
        print(f"accepted {stats.accepted} of {stats.sent} transactions in {elapsed:.1f}s "
              f"({stats.accepted / elapsed:.0f} tx/s); resent frames {stats.resent}, "
              f"reconnects {stats.reconnects}, lagged {stats.lagged}, "
              f"abandoned frames {stats.abandoned}")
        return 0

    try:
        return run_until_signal(run)
    except NarwhalError as exc:
        return fail(str(exc), code=1)


def subscribe_main(args: argparse.Namespace) -> int:
    from narwhal.node.arguments import fail, run_until_signal, until_stopped

    if args.from_index < 0:
        return fail("--from must be >= 0")
    try:
        committee = Committee.load(args.committee)
        subscriber = OutputSubscriber(committee, resolve_authority(committee, args.node))
    except (ConfigError, OSError) as exc:
        return fail(str(exc))

    async def run(stop: asyncio.Event) -> int:
        await until_stopped(stop, follow_output(subscriber, args.from_index, args.count,
                                                args.json))
        return 0

    try:
        return run_until_signal(run)
    except NarwhalError as exc:
        return fail(str(exc), code=1)


if __name__ == "__main__":
    from narwhal.client import main as _main  # this module under its own name (and logger)

    sys.exit(_main())
