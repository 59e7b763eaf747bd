"""Reports to our primary: ``OurBatch`` and ``OthersBatch``, by reliable send.

Why a separate component: a report must reach the primary even if it is restarting
(reliable send: retried until acked), but nobody may wait for that. A peer's ``Batch`` is
acked as soon as it is stored, not when our primary has heard of it, and the quorum
waiter moves on to the next batch. So :meth:`PrimaryReporter.report` only queues; one pump
task hands the queue to ``ReliableNetwork.send`` and keeps each handle until the primary
acks (a dropped handle would cancel its send).

Bounds: the primary's executor holds at most ``max_pending`` sends (``send`` waits beyond
that, which stalls only the pump), and the queue in front of it at most
``max_queued`` reports: past that the oldest report is dropped and counted. A dropped
``OthersBatch`` costs a ``Synchronize`` later (answered from our store at once); a dropped
``OurBatch`` loses that batch's transactions, which were never promised.

A report our primary refuses ``STORAGE_FAILED`` (its disk is full) is sent again every
:data:`REPORT_RETRY` seconds: permanent for a peer, which asks another, but our primary is
the only one that can take it, and an ``OurBatch`` carries transactions the client was
told were accepted. (Found with a real full tmpfs: the report was dropped.)
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from narwhal.errors import ErrorCode, RemoteError
from narwhal.messages import Message
from narwhal.ports import WorkerNetwork
from narwhal.worker.metrics import WorkerMetrics

__all__ = ["MAX_QUEUED_REPORTS", "PrimaryReporter"]

log = logging.getLogger(__name__)

#: Reports waiting for room in the primary's executor (~100 bytes each).
MAX_QUEUED_REPORTS = 100_000
#: Seconds before a report our primary could not store is sent again.
REPORT_RETRY = 0.5


class PrimaryReporter:
    def __init__(self, network: WorkerNetwork, primary: bytes, metrics: WorkerMetrics,
                 max_queued: int = MAX_QUEUED_REPORTS,
                 on_acked: Callable[[Message], None] | None = None) -> None:
        self._network = network  # ReliableNetwork
        self._on_acked = on_acked  # called with each report our primary acknowledged
        self._primary = primary
        self.metrics = metrics
        self.max_queued = max_queued
        self._queue: collections.deque[Message] = collections.deque()
        self._wakeup = asyncio.Event()
        self._in_flight: set[Any] = set()
        self._task: asyncio.Task[None] | None = None

    @property
    def outstanding(self) -> int:
        """Reports queued or sent and not yet acked."""
        return len(self._queue) + len(self._in_flight)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._pump(), name="worker-reporter")

    def report(self, message: Message) -> None:
        if len(self._queue) >= self.max_queued:
            self._queue.popleft()
            self.metrics.error("report_dropped")
        self._queue.append(message)
        self._wakeup.set()

    async def _pump(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                message = self._queue.popleft()
                try:
                    handle = await self._network.send(self._primary, message)
                except Exception:
                    log.exception("cannot send a report to our primary")
                    self.metrics.error("report_failed")
                    continue
                self._in_flight.add(handle)
                handle.add_done_callback(lambda task, h=handle, m=message: self._acked(h, task, m))

    def _acked(self, handle: Any, task: asyncio.Task[Any], message: Message) -> None:
        self._in_flight.discard(handle)
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            self.metrics.reports_acked += 1
            if self._on_acked is not None:
                self._on_acked(message)
        elif isinstance(error, RemoteError) and error.code is ErrorCode.STORAGE_FAILED:
            self.metrics.error("report_deferred")  # our primary's disk is full: again later
            asyncio.get_running_loop().call_later(REPORT_RETRY, self.report, message)
        else:
            self.metrics.error("report_failed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for handle in list(self._in_flight):
            handle.cancel()
        self._in_flight.clear()
