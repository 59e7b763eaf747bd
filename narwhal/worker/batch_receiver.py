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

Storage quota: a batch we store is kept for good (nothing deletes batches), so one
authority's worker must not make us store faster than an honest worker would. Each peer
authority has a token bucket (:class:`TokenBucket`) of ``quota_rate`` bytes per second
holding at most ``quota_burst`` bytes; a new batch (not one we hold already: a resend after
a lost ack is free) takes its transaction bytes, and at least ``min_charge`` so that tiny
batches are bounded in number too. A batch the bucket cannot pay for is refused
``OVERLOADED`` (transient: an honest sender's reliable send retries it with backoff, so a
refusal only delays the batch) and counted ``batch_quota_exceeded``. The defaults
(:class:`~narwhal.config.Parameters` ``batch_quota_rate`` and ``batch_quota_burst``) are 4x
an honest worker's rate and about what it may resend at once after a partition, so honest
peers are refused only in extreme cases and then merely delayed.
Batches the synchronizer fetched for our primary are not charged: our primary asked for
them, and its requests are bounded by the sync state's share per author.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from narwhal.config import short_hex
from narwhal.errors import ErrorCode, RequestRejected
from narwhal.messages import Batch, Message, OthersBatch, encode
from narwhal.net.token_bucket import TokenBucket
from narwhal.worker.metrics import WorkerMetrics

__all__ = ["BatchReceiver", "TokenBucket"]

log = logging.getLogger(__name__)


class BatchReceiver:
    def __init__(self, *, store: Any, report: Callable[[Message], None], worker_id: int,
                 max_batch_bytes: int,
                 metrics: WorkerMetrics, quota_rate: float | None = None,
                 quota_burst: float = 0, min_charge: int = 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._report = report  # PrimaryReporter.report
        self.worker_id = worker_id
        self.max_batch_bytes = max_batch_bytes
        self.metrics = metrics
        self._writing: dict[bytes, asyncio.Future[bool]] = {}
        #: Storage quota per peer authority (None: no quota).
        self.quota_rate, self.quota_burst = quota_rate, quota_burst
        self.min_charge, self._clock = min_charge, clock
        self._quotas: dict[bytes, TokenBucket] = {}  # peer authority -> its bucket
        self._refusing: set[bytes] = set()  # peers refused since their last accepted batch

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
        digest = batch.digest()
        if (self.quota_rate is not None and digest not in self._writing
                and not self._store.contains("batches", digest)):
            self._charge(peer.info.authority, batch)
        if await self.store(batch, digest):
            self.metrics.batches_received_from_peers += 1

    def _charge(self, authority: bytes, batch: Batch) -> None:
        """Take ``batch``'s cost from ``authority``'s quota, or refuse it OVERLOADED."""
        assert self.quota_rate is not None
        bucket = self._quotas.get(authority)
        if bucket is None:
            bucket = self._quotas[authority] = TokenBucket(
                self.quota_rate, self.quota_burst, self._clock)
        cost = min(self.quota_burst, max(self.min_charge, sum(map(len, batch.transactions))))
        if bucket.take(cost):
            self._refusing.discard(authority)
            return
        self.metrics.error("batch_quota_exceeded")
        if authority not in self._refusing:  # once per episode, not once per batch
            self._refusing.add(authority)
            log.warning("worker %d: authority %s's worker exceeds its storage quota (%d B/s, "
                        "burst %d B): its batches are refused OVERLOADED for now",
                        self.worker_id, short_hex(authority), self.quota_rate, self.quota_burst)
        raise RequestRejected(ErrorCode.OVERLOADED, "batch storage quota exceeded, retry later")

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
            # durable (power loss too) before the ack: an ack promises the batch is held
            await self._store.write([("batches", digest, encode(batch))], durable=True)
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
