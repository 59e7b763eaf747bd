"""Committed batch bodies for the output streams, shared by every subscriber.

Why a shared source: subscribers replaying history from index 1 all want the same batches
in the same order; each asking our worker for each batch would cost the worker a read, and
the primary's loop the response's decryption, once per subscriber. :class:`OutputBatches`
asks once per batch (concurrent asks for one digest share the answer) and keeps the bodies
of recent batches in a cache of at most ``cache_bytes``.

Bodies arrive undecoded (:func:`~narwhal.primary.output_parts.batch_body_of_response`) and
are accepted only if their digest is the one asked for; that SHA-256 (~0.5 ms for a 500 KB
batch on our machines) runs in a thread, off the event loop (hashlib releases the GIL).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections import Counter
from collections.abc import Awaitable, Callable

from narwhal.errors import NarwhalError
from narwhal.messages import RequestBatches, batch_body_digest, encode, tag_of
from narwhal.primary.output_parts import batch_body_of_response

__all__ = ["DEFAULT_CACHE_BYTES", "OutputBatches", "RequestWorkerBytes"]

log = logging.getLogger(__name__)

#: Bytes of recent batch bodies kept for subscribers that follow each other closely.
DEFAULT_CACHE_BYTES = 32 * 1024 * 1024
#: Bodies smaller than this are hashed on the loop: a thread hop costs more than it saves.
THREAD_HASH_BYTES = 64 * 1024

#: ``request(worker_id, tag, body, timeout) -> (response tag, response body)``, undecoded.
RequestWorkerBytes = Callable[[int, int, bytes, float], Awaitable[tuple[int, bytes]]]


class OutputBatches:
    def __init__(self, request: RequestWorkerBytes, *, timeout: float,
                 cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self._request, self._timeout, self.cache_bytes = request, timeout, cache_bytes
        self._cache: collections.OrderedDict[bytes, memoryview] = collections.OrderedDict()
        self._cached = 0
        self._asking: dict[bytes, asyncio.Task[memoryview | None]] = {}
        #: worker_fetches, cache_hits, fetch_misses (worker lacks it), fetch_errors,
        #: digest_mismatches.
        self.stats: Counter[str] = Counter()

    async def get(self, digest: bytes, worker_id: int) -> memoryview | None:
        """The body of batch ``digest`` (one try at our worker ``worker_id``), or None
        when the worker does not hold it or could not answer (the caller retries).

        The ask is a task of its own that every caller awaits shielded: one caller leaving
        (its subscriber gone, its stream cancelled) never cancels the others' answer. (It
        did: the first asker's cancellation reached every waiter as CancelledError, and
        their streams ended silently with their connections still open.)"""
        body = self._cache.get(digest)
        if body is not None:
            self._cache.move_to_end(digest)
            self.stats["cache_hits"] += 1
            return body
        asking = self._asking.get(digest)
        if asking is None:
            asking = self._asking[digest] = asyncio.ensure_future(self._ask(digest, worker_id))
            asking.add_done_callback(_retrieve)
        else:
            self.stats["cache_hits"] += 1
        return await asyncio.shield(asking)

    async def close(self) -> None:
        """Cancel the asks in flight (the service is stopping)."""
        asking = list(self._asking.values())
        for task in asking:
            task.cancel()
        await asyncio.gather(*asking, return_exceptions=True)

    async def _ask(self, digest: bytes, worker_id: int) -> memoryview | None:
        try:
            body = await self._fetch(digest, worker_id)
        finally:
            del self._asking[digest]
        if body is not None:
            self._keep(digest, body)
        return body

    async def _fetch(self, digest: bytes, worker_id: int) -> memoryview | None:
        self.stats["worker_fetches"] += 1
        request = RequestBatches((digest,))
        try:
            _, response = await self._request(worker_id, tag_of(request), encode(request),
                                              self._timeout)
        except NarwhalError as exc:
            if not exc.transient:
                raise
            self.stats["fetch_errors"] += 1
            log.debug("output: asking worker %d for batch %s failed: %s", worker_id,
                      digest.hex()[:16], exc)
            return None
        body = batch_body_of_response(response)  # a view: the response is not copied
        if body is None:
            self.stats["fetch_misses"] += 1
            return None
        if len(body) < THREAD_HASH_BYTES:
            actual = batch_body_digest(body)
        else:
            actual = await asyncio.to_thread(batch_body_digest, body)
        if actual != digest:
            self.stats["digest_mismatches"] += 1
            log.warning("output: worker %d answered batch %s with a batch of digest %s",
                        worker_id, digest.hex()[:16], actual.hex()[:16])
            return None
        return body

    def _keep(self, digest: bytes, body: memoryview) -> None:
        if len(body) > self.cache_bytes:
            return
        self._cache[digest] = body
        self._cached += len(body)
        while self._cached > self.cache_bytes:
            _, old = self._cache.popitem(last=False)
            self._cached -= len(old)


def _retrieve(task: asyncio.Task[memoryview | None]) -> None:
    """Mark an ask's failure as seen: every caller may have left before it ended."""
    if not task.cancelled():
        task.exception()
