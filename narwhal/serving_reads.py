"""Store reads that answer peers run on reader threads, never on the event loop.

Why (issue 12, item 3): the primary's catch-up handlers (``CertificatesRequest``,
``FetchCertificates``) and the worker's batch server (``RequestBatches``) read up to a
4 MiB response from the store per request. Read on the event loop, every such request
stalled it for the whole read (a ~4 MiB response from the OS cache ~1.5-3 ms here, from a
busy disk far more: ``bench/serving_reads.py``), and the peer chose how many to send: its
requests, not our work, set the loop's lag, and with it our votes, acks and heartbeats.

How: :class:`ServingReads` owns ``threads`` reader threads, each with its own read-only
connection (:meth:`narwhal.store.Store.open_reader`; the value log is read with
``pread``, safe from any thread). ``await run(source, read)`` runs ``read(reader)`` on one
of them; the loop only hands the job over and takes the answer. The store's writer is not
involved: WAL readers never block it, and its guarantees are unchanged (a read started
after a write returned sees it).

Bounds (a peer cannot queue unlimited reads): at most ``per_source`` reads of one source
admitted (running or waiting for a thread) and ``max_admitted`` in all; beyond either, the
request is refused at once with ``OVERLOADED`` (the requester asks another peer, or again
later) and counted in ``refused``. Source ``None`` is our own node (our primary asking
its worker for a subscriber's batches): only the total bound applies to it. A read holds
its place until its thread has finished
it, even when the request was cancelled meanwhile, so cancelled requests cannot pile up
work behind the threads.

Stores without ``open_reader`` (the tests' in-memory stand-ins) are read inline.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from narwhal.errors import ErrorCode, RequestRejected
from narwhal.store import Reader

__all__ = ["DEFAULT_MAX_ADMITTED", "DEFAULT_PER_SOURCE", "DEFAULT_THREADS", "ServingReads",
           "source_of"]

T = TypeVar("T")
#: Reader threads: reads mostly wait on sqlite and ``pread`` (the GIL released), and the
#: machines we run on have few cores to spare beside the event loop.
DEFAULT_THREADS = 2
#: Reads of one source admitted at once: a catching-up peer asks one request per source
#: of wants at a time, so honest peers stay well below it.
DEFAULT_PER_SOURCE = 8
#: Reads admitted in all (at most a 4 MiB response each).
DEFAULT_MAX_ADMITTED = 64


def source_of(peer: Any, own: bytes | None = None) -> Hashable:
    """Who a request comes from, for the per-source bound: the authenticated peer's role,
    authority and worker id (stable across its reconnections); ``None`` for a peer of our
    own authority ``own`` (trusted: only the total bound applies)."""
    info = peer.info
    if own is not None and info.authority == own:
        return None
    return info.role, info.authority, getattr(info, "worker_id", None)


class ServingReads:
    """A bounded pool of reader threads for requests served from the store (see the
    module docstring). ``close()`` it before closing the store."""

    def __init__(self, store: Any, *, threads: int = DEFAULT_THREADS,
                 per_source: int = DEFAULT_PER_SOURCE,
                 max_admitted: int = DEFAULT_MAX_ADMITTED, name: str = "store") -> None:
        self._store = store
        self._open_reader: Callable[[], Reader] | None = getattr(store, "open_reader", None)
        self.threads, self.per_source, self.max_admitted = threads, per_source, max_admitted
        self._name = name
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._readers: list[Reader] = []
        self._readers_lock = threading.Lock()
        self._by_source: collections.Counter[Hashable] = collections.Counter()
        self._closed = False
        #: Reads admitted and not yet finished by their thread; served; refused over a bound.
        self.admitted = self.served = self.refused = 0

    async def run(self, source: Hashable, read: Callable[[Any], T]) -> T:
        """``read(reader)`` on a reader thread; ``RequestRejected`` (``OVERLOADED``) when
        ``source`` or everyone has too many reads admitted."""
        if self._open_reader is None:
            self.served += 1
            return read(self._store)
        if self._closed:
            raise RequestRejected(ErrorCode.SHUTTING_DOWN, "store reads are closed")
        if self.admitted >= self.max_admitted or (
                source is not None and self._by_source[source] >= self.per_source):
            self.refused += 1
            raise RequestRejected(ErrorCode.OVERLOADED, "too many store reads under way; "
                                  "ask again later")
        self._by_source[source] += 1
        self.admitted += 1
        loop = asyncio.get_running_loop()
        job = self._pool().submit(self._in_thread, read)

        def finished(_: concurrent.futures.Future[T]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody counts
                loop.call_soon_threadsafe(self._release, source)

        job.add_done_callback(finished)
        result = await asyncio.wrap_future(job)
        self.served += 1
        return result

    def _release(self, source: Hashable) -> None:
        self.admitted -= 1
        self._by_source[source] -= 1
        if not self._by_source[source]:
            del self._by_source[source]

    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                self.threads, thread_name_prefix=f"serving-reads:{self._name}")
        return self._executor

    def _in_thread(self, read: Callable[[Reader], T]) -> T:
        reader: Reader | None = getattr(self._local, "reader", None)
        if reader is None:
            assert self._open_reader is not None
            reader = self._local.reader = self._open_reader()
            with self._readers_lock:
                self._readers.append(reader)
        return read(reader)

    async def close(self) -> None:
        """Refuse new reads, wait for those running, close the readers' connections."""
        self._closed = True
        if self._executor is not None:
            await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        with self._readers_lock:
            for reader in self._readers:
                reader.close_connection()
            self._readers.clear()

    def status(self) -> dict[str, int]:
        return {"threads": self.threads, "admitted": self.admitted, "served": self.served,
                "refused": self.refused}
