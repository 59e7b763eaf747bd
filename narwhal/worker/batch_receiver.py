"""Batch receipt: store other authorities' batches durably, then ack, then tell our primary.

A peer worker's ``Batch`` is checked for size (its transactions may hold at most
``batch_size + max_transaction_size`` bytes, what an honest batch maker can seal; the
frame limit has already bounded the frame), stored durably in ``batches``, reported to our
primary as ``OthersBatch`` (queued: the peer's ack never waits for our primary) and only
then acked: an ack is a promise that we hold the batch across a crash.

Idempotent: a batch we already hold is acked again without a second write or report (the
sender retries when an ack is lost). Two copies arriving at once share one write, and
neither is acked before it is durable.

:meth:`BatchReceiver.store` is also how the synchronizer stores the batches it fetched.
"""

from __future__ import annotations

import asyncio
from typing import Any

from narwhal.errors import ErrorCode, RequestRejected
from narwhal.messages import Batch, OthersBatch, encode
from narwhal.worker.metrics import WorkerMetrics

__all__ = ["BatchReceiver"]


class BatchReceiver:
    def __init__(self, *, store: Any, report: Any, worker_id: int, max_batch_bytes: int,
                 metrics: WorkerMetrics) -> None:
        self._store = store
        self._report = report  # PrimaryReporter.report
        self.worker_id = worker_id
        self.max_batch_bytes = max_batch_bytes
        self.metrics = metrics
        self._writing: dict[bytes, asyncio.Future[bool]] = {}

    def too_large(self, batch: Batch) -> bool:
        """Count and say whether ``batch`` holds more transaction bytes than allowed."""
        if sum(map(len, batch.transactions)) <= self.max_batch_bytes:
            return False
        self.metrics.error("batch_too_large")
        return True

    async def handle(self, peer: Any, batch: Batch) -> None:
        """The ``Batch`` handler (answered ``Ack`` once this returns)."""
        if self.too_large(batch):
            raise RequestRejected(ErrorCode.TOO_LARGE, f"batch holds more than "
                                  f"{self.max_batch_bytes} bytes of transactions")
        if await self.store(batch, batch.digest()):
            self.metrics.batches_received_from_peers += 1

    async def store(self, batch: Batch, digest: bytes) -> bool:
        """Store ``batch`` durably and report it, once; False if we already had it."""
        writing = self._writing.get(digest)
        if writing is not None:
            await asyncio.shield(writing)  # raises if that write failed: no ack either
            return False
        if self._store.contains("batches", digest):
            return False
        future = asyncio.get_running_loop().create_future()
        self._writing[digest] = future
        try:
            await self._store.write([("batches", digest, encode(batch))])
        except BaseException as exc:
            future.set_exception(exc if isinstance(exc, Exception) else RuntimeError("cancelled"))
            future.exception()  # retrieved: nobody need be waiting on it
            raise
        finally:
            del self._writing[digest]
        future.set_result(True)
        self.metrics.txs_stored += len(batch.transactions)
        self._report(OthersBatch(digest, self.worker_id, len(batch.transactions)))
        return True
