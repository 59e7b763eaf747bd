"""Batch retention: a worker's disk stays bounded however long the node runs.

Every batch a worker stores (its own and its peers') goes to the store's value log, which
grows at the committee's whole input rate (~1.5 GB/min per node at 50,000 tx/s x 512 B).
Nothing needs a batch for ever: consensus needs it until its certificate is committed or
garbage-collected (seconds), the primary's output service until subscribers no longer ask
for it (the retained history). So every :data:`PRUNE_INTERVAL` this drops the oldest
segments of the value log (:meth:`narwhal.store.Store.prune_values`) once they are older
than ``retain_seconds`` or while the log is over ``retain_bytes``: whole files, deleted on
the store's writer thread, never on the event loop.

What is never dropped: a batch of ours not yet acknowledged by our primary
(``our_batches``: copied forward instead), the segment being written, and any segment
written to in the last :data:`MIN_RETAIN_SECONDS` (so a small ``retain_bytes`` can never
take a batch the current rounds still need; the disk may exceed ``retain_bytes`` by what
that window holds).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

__all__ = ["MIN_RETAIN_SECONDS", "PRUNE_INTERVAL", "BatchRetention"]

log = logging.getLogger(__name__)

#: Seconds between two pruning passes.
PRUNE_INTERVAL = 10.0
#: Segments written to more recently than this are kept whatever the byte limit says: a
#: batch is committed or garbage-collected within gc_depth rounds (~25 s at 0.5 s a round).
MIN_RETAIN_SECONDS = 60.0


class BatchRetention:
    """Prunes one worker's store periodically (see the module docstring)."""

    def __init__(self, store: Any, *, retain_seconds: float, retain_bytes: int,
                 interval: float = PRUNE_INTERVAL, min_age: float = MIN_RETAIN_SECONDS) -> None:
        self._store = store
        self.retain_seconds, self.retain_bytes = retain_seconds, retain_bytes
        self.interval, self.min_age = interval, min_age
        self.passes = self.failures = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if hasattr(self._store, "prune_values"):  # tests' in-memory stores keep everything
            self._task = asyncio.get_running_loop().create_task(self._run(), name="batch-retention")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def prune(self) -> None:
        """One pass (also called by tests)."""
        before = self._store.pruned_bytes
        await self._store.prune_values(older_than=self.retain_seconds, max_bytes=self.retain_bytes,
                                       keep="our_batches", min_age=self.min_age)
        self.passes += 1
        if self._store.pruned_bytes > before:
            log.info("retention: dropped %.1f MB of batches older than %.0f s or over %.1f GB",
                     (self._store.pruned_bytes - before) / 1e6, self.retain_seconds,
                     self.retain_bytes / 1e9)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.prune()
            except Exception:  # a failed pass (disk error) is retried at the next one
                self.failures += 1
                log.exception("retention: pruning the batch store failed; retrying in %.0f s",
                              self.interval)

    def status(self) -> dict[str, Any]:
        store = self._store
        return {"retain_seconds": self.retain_seconds, "retain_bytes": self.retain_bytes,
                "passes": self.passes, "failures": self.failures,
                "pruned_segments": getattr(store, "pruned_segments", 0),
                "pruned_bytes": getattr(store, "pruned_bytes", 0),
                "pruned_batches": getattr(store, "pruned_values", 0)}
