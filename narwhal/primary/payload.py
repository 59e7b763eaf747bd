"""Payload availability: which batches our workers hold, and asking them for the others.

A primary votes for a header only when every batch it names is stored at our workers
(``docs/protocol.md``, "Primary"): otherwise a certificate could commit a batch no honest
worker can serve. This module answers "is it there?" cheaply and, when it is not, has the
worker that should hold it fetch it from the header's author (``Synchronize``), once per
batch and again only after :data:`SYNC_REPEAT_AFTER`.

Split from the core (:mod:`narwhal.primary.core`) because it shares none of the voting or
certificate state: it needs the store (the durable ``payload`` records), a clock, the
round the committee has reached, and a way to send to our workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from narwhal import messages
from narwhal.messages import Synchronize
from narwhal.ports import Clock, StoreLike

__all__ = ["SYNC_REPEAT_AFTER", "PayloadAvailability", "payload_key"]

#: A batch sync is asked for again after this long if the batch is still missing.
SYNC_REPEAT_AFTER = 30.0


def payload_key(digest: bytes, worker_id: int) -> bytes:
    """The store key of our record that worker ``worker_id`` holds batch ``digest``."""
    return digest + worker_id.to_bytes(4, "big")


class PayloadAvailability:
    def __init__(self, *, store: StoreLike, clock: Clock, frontier: Callable[[], int],
                 synchronize: Callable[[int, Synchronize, int], None]) -> None:
        """``frontier()`` is the highest round the committee reached (what a batch learnt
        now is dated with); ``synchronize(worker_id, message, round)`` sends a sync request
        to one of our workers, tracked with the round it serves (cancelled at its GC)."""
        self._store = store
        self._clock = clock
        self._frontier = frontier
        self._synchronize = synchronize
        #: Batches stored at our workers -> the round we learnt it. Pruned with GC to bound
        #: memory; a header naming an older one (its batches proposed again) finds it in
        #: the store's payload records instead (see :meth:`missing`).
        self.available: dict[tuple[bytes, int], int] = {}
        #: digest -> (round it serves, when we asked): one request per batch at a time.
        self._requested: dict[bytes, tuple[int, float]] = {}

    def __contains__(self, entry: tuple[bytes, int]) -> bool:
        return entry in self.available

    def restore(self, entries: Iterable[tuple[bytes, int]]) -> None:
        """After a restart: what the store's payload records say our workers hold."""
        self.available.update(dict.fromkeys(entries, self._frontier()))

    def missing(self, payload: Iterable[tuple[bytes, int]]) -> list[tuple[bytes, int]]:
        """The batches of ``payload`` (a header's) not (known to be) stored at our workers.

        Why the store is asked too: ``available`` forgets batches at the GC horizon, and
        that is exactly when an orphaned header's batches are proposed again. Asking the
        worker for them costs a round trip before our vote, enough for the new header to
        miss the next round's parents and be orphaned again (seen in 5-minute runs: the
        same batches orphaned three times, committed 30 s late). The payload record says
        our worker stored the batch durably, and workers keep their batches."""
        missing = []
        for entry in payload:
            if entry in self.available:
                continue
            if self._store.get("payload", payload_key(*entry)) is not None:
                self.available[entry] = self._frontier()  # known again, until the next horizon
            else:
                missing.append(entry)
        return missing

    def request(self, author: bytes, missing: list[tuple[bytes, int]], round_: int) -> None:
        """Ask our workers to fetch ``missing`` from ``author``: once per digest, again after
        :data:`SYNC_REPEAT_AFTER` if it is still missing (the worker may have given up)."""
        now = self._clock.now()
        by_worker: dict[int, list[bytes]] = {}
        for digest, worker_id in missing:
            asked = self._requested.get(digest)
            if asked is None or now - asked[1] > SYNC_REPEAT_AFTER:
                self._requested[digest] = (round_, now)
                by_worker.setdefault(worker_id, []).append(digest)
        for worker_id, digests in by_worker.items():
            for start in range(0, len(digests), messages.MAX_DIGESTS_PER_REQUEST):
                chunk = tuple(digests[start:start + messages.MAX_DIGESTS_PER_REQUEST])
                self._synchronize(worker_id, Synchronize(chunk, author), round_)

    def stored(self, digest: bytes, worker_id: int) -> bool:
        """A worker reports it stored a batch: True if that is news."""
        if (digest, worker_id) in self.available:
            return False
        self.available[(digest, worker_id)] = self._frontier()
        self._requested.pop(digest, None)
        return True

    def garbage_collect(self, gc_round: int) -> None:
        """Forget what was learnt, and asked, for rounds <= ``gc_round``."""
        self.available = {k: r for k, r in self.available.items() if r > gc_round}
        self._requested = {d: v for d, v in self._requested.items() if v[0] > gc_round}
