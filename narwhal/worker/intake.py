"""Client transaction intake: validate a submission, apply backpressure, hand it on.

Why backpressure lives here: every transaction byte a worker accepts stays in memory
(batch maker, then the sealed batch waiting for its quorum) until its batch is
acknowledged by a quorum. :class:`PendingBytes` counts those bytes; a submission that
would push them over ``max_pending_transactions_bytes`` waits (FIFO) for room, and after
``admission_timeout`` is refused ``OVERLOADED``. So a client can slow us down, never make
us grow without bound (one submission over the limit is still admitted when nothing is
pending, so an oversized limit cannot wedge intake). It also bounds what an anonymous
client can make us seal and store: the bytes accepted are at most the budget plus the
bytes of our batches that reached a quorum, i.e. that 2f other workers stored within their
per-peer storage quota (``batch_quota_rate``; see :mod:`narwhal.worker.batch_receiver`):
a client floods us no faster than the committee replicates, and is slowed, then refused.

What the client's ``TransactionsAccepted(count)`` means: the transactions are in the batch
maker. It is **not** durable and **not** a promise of inclusion: a crash loses them, and a
batch that never reaches a quorum is dropped. Clients that need inclusion watch the
ordered output.

A submission is accepted or refused as a whole: any empty transaction (``INVALID``) or any
transaction over ``max_transaction_size`` (``TOO_LARGE``) refuses all of it. While the
worker's store refuses writes (disk full, I/O error), every submission is refused
``STORAGE_FAILED``: its batch could not be stored, so accepting it would only lose it.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Sequence
from typing import Any

from narwhal.errors import ErrorCode, RequestRejected
from narwhal.messages import SubmitTransactions, TransactionsAccepted
from narwhal.worker.metrics import WorkerMetrics

__all__ = ["DEFAULT_ADMISSION_TIMEOUT", "PendingBytes", "TransactionIntake"]

#: How long a submission may wait for room before it is refused OVERLOADED: long enough
#: to ride out a quorum that is a few round trips late, short enough that a client learns
#: the worker is saturated (and that a waiting handler does not pin its frame for long).
DEFAULT_ADMISSION_TIMEOUT = 5.0


#: What a client is told while this worker's store refuses writes.
STORAGE_FAILED_TEXT = ("this worker cannot store batches (disk full or I/O error): "
                       "not accepting transactions")

class PendingBytes:
    """Bytes accepted but not yet in a quorum-acknowledged batch, with a FIFO of
    submissions waiting for room."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.value = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    @property
    def waiting(self) -> int:
        return sum(not f.done() for _, f in self._waiters)

    def _fits(self, nbytes: int) -> bool:
        return self.value == 0 or self.value + nbytes <= self.limit

    def must_wait(self, nbytes: int) -> bool:
        """Would :meth:`admit` have to wait (no room, or others queued first)?"""
        return bool(self._waiters) or not self._fits(nbytes)

    async def admit(self, nbytes: int, timeout: float) -> bool:
        """Reserve ``nbytes``; wait up to ``timeout`` for room. False if there was none."""
        if not self.must_wait(nbytes):
            self.value += nbytes
            return True
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((nbytes, future))
        try:
            async with asyncio.timeout(timeout):
                await future
        except TimeoutError:
            pass
        except asyncio.CancelledError:  # the client went away: give back what we got
            if future.done() and not future.cancelled():
                self.release(nbytes)
            else:
                future.cancel()
                self._wake()
            raise
        if future.done() and not future.cancelled():
            return True  # granted, possibly at the very deadline
        future.cancel()
        self._wake()  # we may have been the head of the queue
        return False

    def release(self, nbytes: int) -> None:
        self.value -= nbytes
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            nbytes, future = self._waiters[0]
            if not future.done() and not self._fits(nbytes):
                return
            self._waiters.popleft()
            if not future.done():
                self.value += nbytes
                future.set_result(None)


class TransactionIntake:
    """The ``SubmitTransactions`` handler of the transactions port."""

    def __init__(
        self,
        *,
        max_transaction_size: int,
        pending: PendingBytes,
        deliver: Callable[[Sequence[bytes], Sequence[int]], None],
        metrics: WorkerMetrics,
        admission_timeout: float = DEFAULT_ADMISSION_TIMEOUT,
        storage_failing: Callable[[], bool] = lambda: False,
    ) -> None:
        self.max_transaction_size = max_transaction_size
        self.pending = pending
        self._deliver = deliver
        self.metrics = metrics
        self.admission_timeout = admission_timeout
        #: True while our store refuses writes: transactions we take would be lost.
        self._storage_failing = storage_failing

    async def handle(self, peer: Any, message: SubmitTransactions) -> TransactionsAccepted:
        txs = message.transactions
        if not txs:
            return TransactionsAccepted(0)
        lengths = list(map(len, txs))
        if max(lengths) > self.max_transaction_size:
            self.metrics.error("tx_too_large")
            raise RequestRejected(ErrorCode.TOO_LARGE, f"a transaction of {max(lengths)} bytes "
                                  f"exceeds max_transaction_size = {self.max_transaction_size}")
        if min(lengths) == 0:
            self.metrics.error("tx_empty")
            raise RequestRejected(ErrorCode.INVALID, "empty transaction")
        if self._storage_failing():
            self.metrics.error("storage_failed")
            raise RequestRejected(ErrorCode.STORAGE_FAILED, STORAGE_FAILED_TEXT)
        nbytes = sum(lengths)
        if self.pending.must_wait(nbytes):
            self.metrics.submissions_slowed += 1
        if not await self.pending.admit(nbytes, self.admission_timeout):
            self.metrics.error("overloaded")
            raise RequestRejected(ErrorCode.OVERLOADED, "worker pipeline full, retry later")
        if self._storage_failing():  # the disk filled while this frame waited for room
            self.pending.release(nbytes)
            self.metrics.error("storage_failed")
            raise RequestRejected(ErrorCode.STORAGE_FAILED, STORAGE_FAILED_TEXT)
        self.metrics.txs_received += len(txs)
        self.metrics.tx_bytes_received += nbytes
        self._deliver(txs, lengths)
        return TransactionsAccepted(len(txs))
