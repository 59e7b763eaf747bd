"""Late sends: replication of our batches that continues after their quorum.

Once a batch has a quorum of durable acks the slower peers need not hold it for the
protocol to progress, but it is cheaper for them to receive it now than to fetch it later
(``Synchronize``), so their reliable sends keep retrying in the background. Each running
send pins the batch in memory, so they cannot run for ever.

**The rule.** Our primary sends ``Cleanup(gc_round)`` whenever its GC round advances. A
batch is stamped with the last cleanup round known when it was sealed (``g``); its late
sends are cancelled once a ``Cleanup`` round exceeds ``g + window``, with ``window`` the
GC depth. By then the GC horizon has moved a whole GC depth past everything that existed
when the batch was sealed, so any header carrying it is garbage-collected: this is
"until acked or the round is garbage-collected" without the worker ever learning which
round its batch's header got. A peer that still lacks it fetches it on demand
(``Synchronize``) when its primary needs it.

**The bound.** At most ``max_batches`` batches keep late sends; beyond it the oldest
batch's sends are cancelled. The worker sizes it so that late batches hold at most about
``max_pending_transactions_bytes``, the budget pending transactions already have.

:class:`CleanupEpoch` is shared with the synchronizer, which expires its sync state by the
same rule.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from narwhal.worker.metrics import WorkerMetrics

__all__ = ["CleanupEpoch", "LateSends"]


@attrs.define
class CleanupEpoch:
    """The last cleanup round, and how long state stamped with a round stays alive.

    State stamped before the first ``Cleanup`` of this process (stamp 0) counts from that
    first cleanup round, not from round 0: after a restart the worker knows no round until
    its primary's next ``Cleanup``, which may already be far above the window, and would
    otherwise expire at once every sync started meanwhile (issue 11: a restarted node's
    first syncs were dropped that way)."""

    #: Rounds of GC progress after which stamped state expires (the GC depth).
    window: int = 50
    round: int = 0
    #: The first cleanup round received, None before it.
    first: int | None = None

    @property
    def value(self) -> int:
        """The stamp for state created now: the last cleanup round."""
        return self.round

    def advance(self, round_: int) -> bool:
        """Record ``Cleanup(round_)``; True if it moved the cleanup round forward."""
        if round_ <= self.round:
            return False
        self.round = round_
        if self.first is None:
            self.first = round_
        return True

    def expired(self, stamp: int) -> bool:
        """Has the GC horizon moved a whole window past state stamped ``stamp``?"""
        if stamp == 0 and self.first is not None:
            stamp = self.first
        return self.round > stamp + self.window


class LateSends:
    """Reliable-send handles of already-quorum batches, by batch digest."""

    def __init__(self, epoch: CleanupEpoch, max_batches: int, metrics: WorkerMetrics) -> None:
        self._epoch = epoch
        self.max_batches = max_batches
        self.metrics = metrics
        self._batches: dict[bytes, tuple[int, list[Any]]] = {}

    @property
    def batches(self) -> int:
        return len(self._batches)

    @property
    def sends(self) -> int:
        """Sends still running."""
        return sum(not h.done() for _, handles in self._batches.values() for h in handles)

    def keep(self, digest: bytes, sealed_epoch: int, handles: Iterable[Any]) -> None:
        """Keep the still-running ``handles`` of a batch sealed in ``sealed_epoch``."""
        running = [h for h in handles if not h.done()]
        if not running:
            return
        self._batches[digest] = (sealed_epoch, running)
        for handle in running:  # the callback holds the digest, not the handle
            handle.add_done_callback(lambda _task, d=digest: self._forget_if_done(d))
        while len(self._batches) > self.max_batches:
            self._cancel(next(iter(self._batches)))

    def expire(self) -> None:
        """Cancel the late sends of batches whose epoch has expired (see the module doc)."""
        for digest in [d for d, (e, _) in self._batches.items() if self._epoch.expired(e)]:
            self._cancel(digest)

    def close(self) -> None:
        for digest in list(self._batches):
            self._cancel(digest)

    def _forget_if_done(self, digest: bytes) -> None:
        entry = self._batches.get(digest)
        if entry is not None and all(h.done() for h in entry[1]):
            del self._batches[digest]

    def _cancel(self, digest: bytes) -> None:
        _, handles = self._batches.pop(digest)
        for handle in handles:
            if not handle.done():
                handle.cancel()
                self.metrics.late_sends_cancelled += 1
