"""The batch maker: gather client transactions into batches.

A batch is sealed when its transactions reach ``batch_size`` bytes (the sum of their
lengths), when it holds ``MAX_BATCH_TRANSACTIONS`` transactions (the codec's limit), or
``max_batch_delay`` after its first transaction arrived, whichever comes first.

Per-transaction work stays at "append a reference": a submission is split where the
running total crosses ``batch_size`` with one C-speed ``accumulate`` + ``bisect``, never a
Python loop over transactions. The transactions are never copied (the batch holds the very
``bytes`` objects the decoder produced), the batch is encoded once and hashed once
(``Batch`` keeps its canonical body and caches its digest), and the batch goes on to the
quorum waiter. So every sealed batch holds at most ``batch_size + max_transaction_size``
bytes of transactions: what peer workers accept.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
from collections.abc import Callable, Sequence

from narwhal.messages import MAX_BATCH_TRANSACTIONS, Batch
from narwhal.worker.metrics import WorkerMetrics

__all__ = ["BatchMaker"]

log = logging.getLogger(__name__)


class BatchMaker:
    def __init__(
        self,
        *,
        batch_size: int,
        max_batch_delay: float,
        on_sealed: Callable[[Batch, int], None],
        metrics: WorkerMetrics,
    ) -> None:
        self.batch_size = batch_size
        self.max_batch_delay = max_batch_delay
        self._on_sealed = on_sealed
        self.metrics = metrics
        self._txs: list[bytes] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None

    @property
    def buffered_bytes(self) -> int:
        return self._size

    def add(self, txs: Sequence[bytes], lengths: Sequence[int]) -> None:
        """Append ``txs`` (``lengths`` their sizes), sealing every batch they fill."""
        totals = list(itertools.accumulate(lengths))
        start, base, n = 0, 0, len(txs)
        while start < n:
            # The first transaction that brings the batch to batch_size ends it.
            fill = bisect.bisect_left(totals, base + self.batch_size - self._size, lo=start)
            end = min(fill + 1, n, start + MAX_BATCH_TRANSACTIONS - len(self._txs))
            self._txs.extend(txs[start:end])
            self._size += totals[end - 1] - base
            start, base = end, totals[end - 1]
            if self._size >= self.batch_size or len(self._txs) >= MAX_BATCH_TRANSACTIONS:
                self.seal()
            elif self._timer is None:
                loop = asyncio.get_running_loop()
                self._timer = loop.call_later(self.max_batch_delay, self.seal)

    def seal(self) -> None:
        """Seal what is buffered (nothing if empty) and pass it on."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._txs:
            return
        txs, size = self._txs, self._size
        self._txs, self._size = [], 0
        batch = Batch(tuple(txs))
        digest = batch.digest()  # encodes once; the body is kept on the batch
        self.metrics.batches_sealed += 1
        self.metrics.txs_sealed += len(txs)
        log.info("Created batch %s txs=%d bytes=%d", digest.hex(), len(txs), size)
        self._on_sealed(batch, size)

    def close(self) -> None:
        """Stop the timer; buffered transactions are dropped (they were never promised)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
