"""Committed batches our workers must hold: asked for until they do, however old.

Why this exists (issue 11: a restarted node's output stalled for ever). The ordered output
serves every committed certificate's transactions from our own workers. Until now the only
request that made a worker fetch another authority's batch came from the header path
(:meth:`PayloadAvailability.request`), and that path is bound to the GC horizon on purpose: its
reliable ``Synchronize`` is cancelled when its round is garbage-collected, and the worker
expires its sync a GC depth later. A node catching up after a restart commits rounds that
fall below the horizon the moment they are committed, so those requests died before the
worker had the batch, and nothing asked again: the output waited for ever on a batch the
rest of the committee held.

The rule here: **committed data is wanted until it is held**. Each batch of a committed
certificate that our worker is not known to hold (no payload record, or our output found
it missing) is asked for with ``Synchronize(digests, author)`` — the worker fetches from
the author's worker first, then from others — again and again, with a growing delay, until
our worker reports it stored (``OthersBatch``, which it also sends at once for a batch it
already holds). Nothing here depends on the GC round.

Operators see it: after :data:`WARN_AFTER` requests a batch is logged at WARNING with the
consensus index waiting for it, and :meth:`status` gives the batches still missing, the
oldest index waiting and the requests made (``/metrics``:
``narwhal_output_missing_batches``, ``narwhal_output_oldest_missing_index``,
``narwhal_output_sync_requests``).

Bounds: one entry per missing committed batch (at most what consensus committed while our
worker lacked it); at most :data:`messages.MAX_DIGESTS_PER_REQUEST` digests per worker per
tick, oldest index first, so a far-behind node never floods its worker (whose sync state
is itself capped).

Socket-free: it is given ``request_worker`` (one try to our worker) and a clock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import attrs

from narwhal import messages
from narwhal.errors import NarwhalError
from narwhal.messages import Synchronize

__all__ = ["WARN_AFTER", "CommittedBatches"]

log = logging.getLogger(__name__)

#: Requests for one batch after which it is logged at WARNING (once).
WARN_AFTER = 5
#: Seconds before a missing batch is asked for again: doubles per request up to the maximum.
FIRST_DELAY = 0.5
MAX_DELAY = 15.0
#: Seconds between two looks at what is due.
TICK = 0.25
#: Seconds one Synchronize to our worker may take (it is acknowledged once under way).
REQUEST_TIMEOUT = 5.0

#: ``request_worker(worker_id, message, timeout)``: one try, the worker's response.
RequestWorker = Callable[[int, Any, float], Awaitable[Any]]


@attrs.define
class _Missing:
    index: int  # the first consensus index whose output waits for this batch
    author: bytes  # the certificate's author: its worker certainly stored the batch
    requests: int = 0
    due: float = 0.0  # when to ask (again)


class CommittedBatches:
    """Missing committed batches, keyed by ``(digest, worker_id)``, in commit order."""

    def __init__(self, *, request_worker: RequestWorker,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._request_worker = request_worker
        self._clock = clock
        self._missing: dict[tuple[bytes, int], _Missing] = {}
        #: requests (Synchronize sent), request_failures, arrived (wanted, then stored),
        #: stalled (batches logged at WARNING).
        self.stats: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._missing)

    def __contains__(self, entry: tuple[bytes, int]) -> bool:
        return entry in self._missing

    def want(self, index: int, digest: bytes, worker_id: int, author: bytes) -> None:
        """Output index ``index`` needs this batch and our worker does not (surely) hold it."""
        self._missing.setdefault((digest, worker_id), _Missing(index, author, due=self._clock()))

    def arrived(self, digest: bytes, worker_id: int) -> None:
        """Our worker reported the batch stored."""
        if self._missing.pop((digest, worker_id), None) is not None:
            self.stats["arrived"] += 1

    async def run(self) -> None:
        """Ask for what is due, for ever."""
        while True:
            await self.ask_due()
            await asyncio.sleep(TICK)

    async def ask_due(self) -> None:
        """One ``Synchronize`` per (worker, author) for the batches due, oldest first."""
        now = self._clock()
        groups: dict[tuple[int, bytes], list[bytes]] = {}
        taken: Counter[int] = Counter()
        for (digest, worker_id), entry in self._missing.items():  # insertion = commit order
            if entry.due > now or taken[worker_id] >= messages.MAX_DIGESTS_PER_REQUEST:
                continue
            taken[worker_id] += 1
            entry.requests += 1
            entry.due = now + min(MAX_DELAY, FIRST_DELAY * 2 ** (entry.requests - 1))
            if entry.requests == WARN_AFTER:
                self.stats["stalled"] += 1
                log.warning("output index %d is waiting for batch %s (worker %d, author %s): "
                            "not at our worker after %d sync requests; still asking",
                            entry.index, digest.hex(), worker_id, entry.author.hex()[:16],
                            entry.requests)
            groups.setdefault((worker_id, entry.author), []).append(digest)
        if groups:
            await asyncio.gather(*(self._ask(worker_id, author, digests)
                                   for (worker_id, author), digests in groups.items()))

    async def _ask(self, worker_id: int, author: bytes, digests: list[bytes]) -> None:
        self.stats["requests"] += 1
        try:
            await self._request_worker(worker_id, Synchronize(tuple(digests), author),
                                       REQUEST_TIMEOUT)
        except (NarwhalError, OSError, TimeoutError) as exc:  # not connected, refused
            # (overloaded), timeout: asked again when due
            self.stats["request_failures"] += 1
            log.debug("Synchronize of %d committed batches to worker %d failed: %s",
                      len(digests), worker_id, exc)

    def status(self) -> dict[str, Any]:
        oldest = min((e.index for e in self._missing.values()), default=None)
        return {"missing_batches": len(self._missing), "oldest_missing_index": oldest,
                "sync_requests": self.stats["requests"],
                "sync_request_failures": self.stats["request_failures"],
                "batches_arrived": self.stats["arrived"], "stalled": self.stats["stalled"]}
