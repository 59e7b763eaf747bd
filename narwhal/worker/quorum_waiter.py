"""The quorum waiter: replicate each of our batches and wait for a quorum of durable acks.

For every sealed batch, in its own task (batches overlap; their number is bounded by the
pending-bytes budget of the intake):

1. store it durably in ``batches`` and, at the same time (the two latencies overlap),
   ``ReliableNetwork.broadcast_encoded`` it (its body, encoded once), to the same-id worker of every other
   authority. A peer answers only after storing it durably, so each completed send is a
   durable copy. If our own write fails, the send handles are dropped, which cancels them;
2. once our write is durable (our copy counts towards the quorum), sum our stake and the
   stake of every peer whose send completed until it reaches
   ``committee.quorum_threshold()`` (2f+1); then report ``OurBatch(digest, worker_id)`` to
   our primary and release the batch's bytes from the intake's pending budget;
3. hand the sends still running to :class:`~narwhal.worker.late_sends.LateSends`: slower
   peers keep receiving the batch in the background until they ack or GC cancels them.

If every send ends and the quorum is still short (peers refused the batch: permanent
errors), the batch is dropped and counted ``quorum_failed``; its transactions were never
promised to the client.

If our own write fails (the disk is full: :class:`~narwhal.store.StorageFailed`), the
batch is not dropped: its transactions were acknowledged to the client when they entered
the batch. Its write is tried again every :data:`STORE_RETRY` seconds, its sends go on,
and it keeps its bytes of the pending budget, so the batches waiting like this are bounded
by that budget (the intake refuses new transactions while the store fails, anyway).
Found with a real full tmpfs: the batch sealed as the disk filled was dropped, and the
transactions the client had been told were accepted never reached the output.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from narwhal.messages import Batch, Message, OurBatch, decode_as, encode, tag_of
from narwhal.ports import SendHandle, WorkerNetwork
from narwhal.store import StorageFailed
from narwhal.worker.late_sends import CleanupEpoch, LateSends
from narwhal.worker.metrics import WorkerMetrics

__all__ = ["QuorumWaiter"]

log = logging.getLogger(__name__)

BATCH_TAG = tag_of(Batch)
#: Seconds between two tries to store a sealed batch while our store refuses writes.
STORE_RETRY = 0.5


class QuorumWaiter:
    def __init__(self, *, own_stake: int, threshold: int, peers: Mapping[bytes, int],
                 worker_id: int, network: WorkerNetwork, store: Any,
                 report: Callable[[Message], None], release: Callable[[int], None],
                 late: LateSends, epoch: CleanupEpoch, metrics: WorkerMetrics) -> None:
        self.own_stake, self.threshold = own_stake, threshold
        self.peers = dict(peers)  # network key of each peer worker -> its authority's stake
        self.worker_id = worker_id
        self._network, self._store = network, store  # ReliableNetwork, Store
        self._report, self._release = report, release  # PrimaryReporter.report, PendingBytes.release
        self._late, self._epoch, self.metrics = late, epoch, metrics
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def outstanding(self) -> int:
        return len(self._tasks)

    def submit(self, batch: Batch, nbytes: int) -> None:
        """Replicate a freshly sealed batch of ``nbytes`` transaction bytes.

        Only the batch's encoded body is kept from here on, not its decoded transactions:
        they would double the memory of every batch waiting for its quorum (up to the whole
        pending budget), and nothing past this point reads them."""
        digest, body, count = batch.digest(), encode(batch), len(batch.transactions)
        task = asyncio.get_running_loop().create_task(self._replicate(digest, body, count, nbytes))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _replicate(self, digest: bytes, body: bytes, count: int, nbytes: int) -> None:
        started, epoch = time.monotonic(), self._epoch.value
        try:
            _, handles = await asyncio.gather(
                self._store_until_written(digest, body),
                self._network.broadcast_encoded(list(self.peers), BATCH_TAG, body))
            self.metrics.txs_stored += count
            if not await self._quorum(handles):
                self.metrics.error("quorum_failed")
                log.warning("Batch %s failed to reach a quorum: peers refused it", digest.hex())
                return
        except Exception:
            self.metrics.error("replication_failed")
            log.exception("cannot replicate batch %s", digest.hex())
            return
        finally:
            self._release(nbytes)
        self.metrics.quorums_reached += 1
        log.info("Batch %s reached quorum in %.0f ms", digest.hex(), (time.monotonic() - started) * 1e3)
        self._report(OurBatch(digest, self.worker_id, count))
        self._late.keep(digest, epoch, handles)

    async def _store_until_written(self, digest: bytes, body: bytes) -> None:
        """Store the batch (durably), trying again while the disk is full or failing."""
        # "our_batches" marks it ours until our primary acknowledges its report,
        # so a restarted worker replicates and reports it again (see resume())
        ops = [("batches", digest, body), ("our_batches", digest, b"")]
        tries = 0
        while True:
            try:
                await self._store.write(ops, durable=True)
                if tries:
                    log.info("batch %s stored after %d failed writes", digest.hex()[:16], tries)
                return
            except StorageFailed as exc:
                tries += 1
                self.metrics.error("store_retried")
                log.log(logging.WARNING if tries == 1 else logging.DEBUG,
                        "batch %s is not stored (%s): trying again every %.1f s until it is",
                        digest.hex()[:16], exc, STORE_RETRY)
            await asyncio.sleep(STORE_RETRY)

    def resume(self) -> int:
        """After a restart: replicate and report again every batch of ours whose report our
        primary never acknowledged (we may have crashed before its quorum, or before the
        report left). Peers ack a batch they hold at once; the primary ignores a repeat."""
        digests = self._store.keys("our_batches")
        for digest in digests:
            body = self._store.get("batches", digest)
            if body is not None:
                self.submit(decode_as(Batch, body), 0)
        return len(digests)

    async def _quorum(self, handles: Sequence[SendHandle]) -> bool:
        """Wait until our stake plus the acked peers' reaches the threshold (True), or
        until every send has ended without reaching it (False)."""
        stake, running = self.own_stake, len(handles)
        reached = asyncio.get_running_loop().create_future()

        def done(peer_stake: int, task: asyncio.Task[Any]) -> None:
            nonlocal stake, running
            running -= 1
            if not task.cancelled() and task.exception() is None:
                stake += peer_stake
                self.metrics.acks_received += 1
            if not reached.done() and (stake >= self.threshold or running == 0):
                reached.set_result(stake >= self.threshold)

        if stake >= self.threshold or not handles:
            return stake >= self.threshold
        for handle in handles:
            handle.add_done_callback(functools.partial(done, self.peers[handle.peer]))
        return bool(await reached)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
