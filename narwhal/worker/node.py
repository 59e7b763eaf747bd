"""The worker's logic without sockets: its components wired to a network port and a store.

Data flow (each arrow one component, each in its own module)::

    client --SubmitTransactions--> intake --> batch maker --> quorum waiter --OurBatch--> primary
                                   (backpressure)  (seal)      (store, replicate, 2f+1 acks)
    peer worker --Batch--> batch receiver (store, ack) --OthersBatch--> primary
    peer worker / primary --RequestBatches--> batch server (from the store)
    primary --Synchronize--> synchronizer --RequestBatches--> peer workers
    primary --Cleanup--> late sends + synchronizer (expire by cleanup epoch)

:class:`WorkerNode` owns these components and nothing of the network stack: what it
sends goes through a :class:`WorkerNetwork` (the real one is
:class:`~narwhal.net.sending.ReliableNetwork`; the simulator's crosses simulated links),
and what it receives arrives at its handlers (``on_*``), called by whoever owns the links
(``narwhal/worker/worker.py`` routes a real listener's requests to them). The store is
the caller's, opened and closed by it (sqlite in a node, in memory in the simulator).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from narwhal.config import Committee, Parameters
from narwhal.messages import (
    Batch,
    Cleanup,
    Encoded,
    OurBatch,
    RequestBatches,
    SubmitTransactions,
    Synchronize,
    TransactionsAccepted,
)
from narwhal.ports import LOOP_CLOCK, Clock, RandomSource, WorkerNetwork
from narwhal.worker.batch_maker import BatchMaker
from narwhal.worker.batch_receiver import BatchReceiver
from narwhal.worker.batch_server import BatchServer
from narwhal.worker.intake import DEFAULT_ADMISSION_TIMEOUT, PendingBytes, TransactionIntake
from narwhal.worker.late_sends import CleanupEpoch, LateSends
from narwhal.worker.metrics import WorkerMetrics
from narwhal.worker.quorum_waiter import QuorumWaiter
from narwhal.worker.reporter import PrimaryReporter
from narwhal.worker.retention import BatchRetention
from narwhal.worker.synchronizer import Synchronizer

__all__ = ["MIN_CHARGE_DIVISOR", "MIN_LATE_BATCHES", "WorkerNode"]

log = logging.getLogger(__name__)

#: Late batches kept is at least this, whatever the byte budget says.
MIN_LATE_BATCHES = 16
#: A peer's batch is charged at least batch_size // this against its storage quota: an
#: honest worker seals an under-full batch only on timeout (at most 1 / max_batch_delay a
#: second, 10/s by default: 1/2 batch_size a second of charge, against the quota's
#: >= 80 batch_size), so tiny batches cost honest peers almost nothing and a flood of them
#: is bounded in count (quota_rate / (batch_size // 20) a second: <= 1,600/s by default).
MIN_CHARGE_DIVISOR = 20


class WorkerNode:
    """Worker ``worker_id`` of authority ``name``: its components, wired (see the module
    docstring). ``start`` and ``stop`` it; feed it with the ``on_*`` handlers."""

    def __init__(self, *, name: bytes, worker_id: int, committee: Committee,
                 parameters: Parameters, store: Any, network: WorkerNetwork,
                 admission_timeout: float = DEFAULT_ADMISSION_TIMEOUT,
                 clock: Clock = LOOP_CLOCK, rng: RandomSource | None = None) -> None:
        """``clock``: what the storage quotas and the synchronizer's deadlines read;
        ``rng``: draws the peers the synchronizer asks (seed it for a replayable run)."""
        p = parameters
        self.name, self.worker_id = name, worker_id
        self._store = store
        self._cleanup_tasks: set[asyncio.Task[None]] = set()
        self.metrics = metrics = WorkerMetrics()
        self.epoch = epoch = CleanupEpoch(window=p.gc_depth)
        peers = {a: committee.authorities[a].workers[worker_id].network_key
                 for a in committee.others(name)}
        self.reporter = PrimaryReporter(network, committee.authorities[name].primary.network_key,
                                        metrics, on_acked=self._report_acked)
        self.pending = PendingBytes(p.max_pending_transactions_bytes)
        self.late = LateSends(epoch, max(MIN_LATE_BATCHES, p.max_pending_transactions_bytes
                                         // p.batch_size), metrics)
        self.quorum_waiter = QuorumWaiter(
            own_stake=committee.stake(name), threshold=committee.quorum_threshold(),
            peers={key: committee.stake(a) for a, key in peers.items()}, worker_id=worker_id,
            network=network, store=store, report=self.reporter.report,
            release=self.pending.release, late=self.late, epoch=epoch, metrics=metrics)
        self.batch_maker = BatchMaker(batch_size=p.batch_size, max_batch_delay=p.max_batch_delay,
                                      on_sealed=self.quorum_waiter.submit, metrics=metrics)
        self.intake = TransactionIntake(
            max_transaction_size=p.max_transaction_size, pending=self.pending,
            deliver=self.batch_maker.add, metrics=metrics, admission_timeout=admission_timeout,
            storage_failing=lambda: bool(getattr(store, "failing", False)))
        self.receiver = BatchReceiver(store=store, report=self.reporter.report,
                                      worker_id=worker_id,
                                      max_batch_bytes=p.batch_size + p.max_transaction_size,
                                      metrics=metrics, quota_rate=p.batch_quota_rate,
                                      quota_burst=p.batch_quota_burst,
                                      min_charge=p.batch_size // MIN_CHARGE_DIVISOR,
                                      clock=clock.now)
        self.server = BatchServer(store=store, max_frame_size=p.max_frame_size, metrics=metrics,
                                  authority=name)
        self.retention = BatchRetention(store, retain_seconds=p.retain_seconds,
                                        retain_bytes=p.retain_bytes)
        self.synchronizer = Synchronizer(
            peers=peers, worker_id=worker_id, network=network,
            store=store, receiver=self.receiver, report=self.reporter.report, epoch=epoch,
            metrics=metrics, retry_delay=p.sync_retry_delay, retry_nodes=p.sync_retry_nodes,
            reads=self.server.reads, clock=clock, rng=rng)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start reporting to our primary and pruning old batches, and replicate again the
        batches sealed but not yet reported before the last stop (or crash)."""
        self.reporter.start()
        self.retention.start()
        resumed = self.quorum_waiter.resume()
        if resumed:
            log.info("worker %d: replicating %d unreported batches again", self.worker_id, resumed)

    async def stop(self) -> None:
        """Drop what is buffered, cancel every send and task, close the store readers."""
        await self.stop_components()
        await self.server.close()

    async def stop_components(self) -> None:
        """Everything :meth:`stop` does but closing the batch server's store readers (a
        node with listeners closes them once nothing can ask for batches any more)."""
        self.batch_maker.close()
        await self.quorum_waiter.close()
        self.late.close()
        await self.synchronizer.close()
        await self.reporter.close()
        await self.retention.close()

    def _report_acked(self, message: Any) -> None:
        """Our primary holds an OurBatch durably: the batch no longer needs resuming."""
        if isinstance(message, OurBatch):
            task = asyncio.ensure_future(self._store.delete("our_batches", message.digest))
            self._cleanup_tasks.add(task)
            task.add_done_callback(self._cleanup_tasks.discard)

    # -- handlers ------------------------------------------------------------------------------

    async def on_submit(self, client: Any, message: SubmitTransactions) -> TransactionsAccepted:
        """A client's transactions (answered once they are in a batch being sealed)."""
        return await self.intake.handle(client, message)

    async def on_batch(self, peer: Any, batch: Batch) -> None:
        """A peer worker's batch: stored, then acknowledged (and reported)."""
        await self.receiver.handle(peer, batch)

    async def on_request_batches(self, peer: Any, request: RequestBatches) -> Encoded:
        return await self.server.handle(peer, request)

    async def on_synchronize(self, peer: Any, message: Synchronize) -> None:
        await self.synchronizer.handle(peer, message)

    async def on_cleanup(self, peer: Any, message: Cleanup) -> None:
        if self.epoch.advance(message.round):
            self.late.expire()
            self.synchronizer.expire()
