"""The worker's counters: one plain object every component increments.

Why one object: ``Worker.status()`` must report every component's counters as one
JSON-ready dict, and the benchmarks and ``peer_top`` read that dict. Plain attributes, no
locking: one event loop owns them. Every rejection goes through :meth:`WorkerMetrics.error`
so each kind of bad input has its own counter under ``errors``. ``attrs.asdict`` of it is
JSON-ready (the Counter comes out as a plain dict).
"""

from __future__ import annotations

from collections import Counter

import attrs

__all__ = ["WorkerMetrics"]


@attrs.define
class WorkerMetrics:
    #: Our own batches sealed by the batch maker, and the transactions in them.
    batches_sealed: int = 0
    txs_sealed: int = 0
    #: Transactions in the batches this worker stored: its own and other authorities'.
    txs_stored: int = 0
    #: Transactions (and their bytes) accepted from clients.
    txs_received: int = 0
    tx_bytes_received: int = 0
    #: Client submissions that had to wait for room (backpressure).
    submissions_slowed: int = 0
    #: Our batches that reached a quorum of durable acks.
    quorums_reached: int = 0
    #: Acks of our batches from peer workers (each means: stored durably there).
    acks_received: int = 0
    #: Other authorities' batches stored because their worker sent them to us...
    batches_received_from_peers: int = 0
    #: ...or because we fetched them for our primary (Synchronize).
    batches_synced: int = 0
    #: Batches sent in answer to RequestBatches.
    batches_served: int = 0
    #: OurBatch/OthersBatch reports our primary acknowledged.
    reports_acked: int = 0
    #: Background sends of already-quorum batches cancelled by Cleanup or by the bound.
    late_sends_cancelled: int = 0
    #: Rejections and failures by kind ("tx_too_large", "unauthorized", ...).
    errors: Counter[str] = attrs.field(factory=Counter)

    def error(self, kind: str) -> None:
        self.errors[kind] += 1
