"""The synchronizer: fetch the batches our primary needs and we lack.

``Synchronize(digests, target)`` comes from our primary when a header names batches that
our worker does not hold. Digests we already hold are reported again (``OthersBatch``) at
once. The others are fetched in rounds, one ``RequestBatches`` per peer per round:

- round 0 asks the worker of ``target`` (the header's author certainly had them),
- each later round asks ``sync_retry_nodes`` other authorities' workers, drawn at random
  (a different draw each round, so one slow or lying peer cannot stall us);
- a round lasts a jittered delay that starts at ``sync_retry_delay`` and grows x1.5 per
  round up to ``MAX_DELAY_FACTOR`` times it. The requests are reliable sends, retried
  (and waiting for a connection) until the round ends. Round 0 ends early when the target
  has answered without everything: waiting longer would only delay the fallback.

Every returned batch is checked before it is used: its digest must be one we asked for in
this sync (anything else is counted ``sync_unexpected_batch`` and ignored) and its size
within the batch limit; it is then stored durably and reported to our primary exactly as
a batch received from its author (:meth:`BatchReceiver.store`).

Bounds: a digest is wanted by at most one sync at a time (concurrent ``Synchronize`` for
the same digest share it); at most ``max_wanted`` digests are wanted at once, and at most
an equal share of them (``max_wanted // authorities``) per target. A ``Synchronize`` beyond
either bound is refused ``OVERLOADED``, whole (our primary's reliable send, or its
committed-batch fetcher, asks again later), and counted ``sync_overloaded`` (global bound)
or ``sync_target_overloaded`` (the target's share). Why a share per target: the target is
the author of the header (or certificate) that named the batches, so a Byzantine author
whose headers name made-up digests can fill only its own share, and Synchronize for honest
authors' batches are still accepted while its fake digests wait for the GC horizon. The
default ``max_wanted`` is ``MAX_WANTED_DIGESTS``, raised so that every share holds at least
one full ``Synchronize`` (``MAX_DIGESTS_PER_REQUEST`` digests) in large committees; the
shares add up to at most ``max_wanted``, so the targets of the committee can never reach
the global bound (which stays, for targets outside it). A sync ends when it has everything
or, by the rule of :mod:`narwhal.worker.late_sends`, when a ``Cleanup`` expires its epoch.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import attrs

from narwhal.config import short_hex
from narwhal.errors import ErrorCode, RequestRejected
from narwhal.messages import (
    MAX_DIGESTS_PER_REQUEST,
    Message,
    OthersBatch,
    RequestBatches,
    Synchronize,
    batch_length,
)
from narwhal.net.retry import Backoff, RetryConfig
from narwhal.ports import LOOP_CLOCK, Clock, RandomSource, WorkerNetwork
from narwhal.serving_reads import ServingReads
from narwhal.worker.batch_receiver import BatchReceiver
from narwhal.worker.late_sends import CleanupEpoch
from narwhal.worker.metrics import WorkerMetrics

__all__ = ["MAX_WANTED_DIGESTS", "Synchronizer"]

log = logging.getLogger(__name__)

#: Digests being fetched at once: ten full headers' worth of payload, plenty for a primary
#: catching up, and a bound on the sync state a flood of Synchronize can build.
MAX_WANTED_DIGESTS = 10_000
#: The round delay grows up to this multiple of sync_retry_delay.
MAX_DELAY_FACTOR = 8


@attrs.define(eq=False)
class _Sync:
    """One Synchronize being served."""

    wanted: set[bytes]  # still missing
    asked: frozenset[bytes]  # everything this sync asked for
    target: bytes | None  # network key of the target authority's worker
    epoch: int
    author: bytes = b""  # the Synchronize's target authority, whose share this sync uses
    task: asyncio.Task[None] | None = None


class Synchronizer:
    def __init__(self, *, peers: dict[bytes, bytes], worker_id: int, network: WorkerNetwork,
                 store: Any, receiver: BatchReceiver, report: Callable[[Message], None],
                 epoch: CleanupEpoch,
                 metrics: WorkerMetrics, retry_delay: float, retry_nodes: int,
                 max_wanted: int | None = None, max_per_target: int | None = None,
                 clock: Clock = LOOP_CLOCK, rng: RandomSource | None = None,
                 reads: ServingReads | None = None) -> None:
        self._clock = clock
        #: Reader threads for the batches we already hold (their length is reported);
        #: None: read on the loop (stores without reader connections, in tests).
        self._reads = reads
        #: Draws the peers asked in later rounds; pass a seeded one for a replayable run.
        self._rng: RandomSource = rng if rng is not None else random.Random()
        self.peers = peers  # other authority -> network key of its worker with our id
        self.worker_id = worker_id
        self._network, self._store = network, store  # ReliableNetwork, Store
        self._receiver, self._report = receiver, report
        self._epoch, self.metrics = epoch, metrics
        self.retry = RetryConfig(initial_interval=retry_delay, multiplier=1.5,
                                 max_interval=retry_delay * MAX_DELAY_FACTOR)
        self.retry_nodes = retry_nodes
        self.authorities = len(peers) + 1
        #: Global bound on the digests being fetched, and each target's share of it.
        self.max_wanted = max_wanted if max_wanted is not None else max(
            MAX_WANTED_DIGESTS, self.authorities * MAX_DIGESTS_PER_REQUEST)
        self.max_per_target = max_per_target
        self._wanted: dict[bytes, _Sync] = {}
        self._by_target: Counter[bytes] = Counter()  # target -> digests it holds in _wanted
        self._syncs: set[_Sync] = set()

    @property
    def wanted(self) -> int:
        return len(self._wanted)

    @property
    def target_share(self) -> int:
        """Digests one target may have being fetched at once."""
        if self.max_per_target is not None:
            return self.max_per_target
        return max(1, self.max_wanted // self.authorities)

    def wanted_by_target(self) -> dict[str, int]:
        """Digests being fetched, by target authority (short hex): for the status."""
        return {short_hex(t): n for t, n in self._by_target.items() if n}

    async def handle(self, peer: Any, message: Synchronize) -> None:
        """The ``Synchronize`` handler: acked once the fetch is under way."""
        asked = [d for d in dict.fromkeys(message.digests) if d not in self._wanted]
        held = [d for d in asked if self._store.contains("batches", d)]  # no value read
        lengths = await self._lengths(held) if held else {}
        for digest, length in lengths.items():
            self._report(OthersBatch(digest, self.worker_id, length))
        # again after the read: another Synchronize may have asked for some meanwhile
        new = [d for d in asked if d not in lengths and d not in self._wanted]
        if not new:
            return
        target = message.target
        if self._by_target[target] + len(new) > self.target_share:
            self.metrics.error("sync_target_overloaded")
            raise RequestRejected(ErrorCode.OVERLOADED, f"too many batches of "
                                  f"{short_hex(target)} being synchronized")
        if len(self._wanted) + len(new) > self.max_wanted:
            self.metrics.error("sync_overloaded")
            raise RequestRejected(ErrorCode.OVERLOADED, "too many batches being synchronized")
        sync = _Sync(set(new), frozenset(new), self.peers.get(target), self._epoch.value, target)
        self._wanted.update(dict.fromkeys(new, sync))
        self._by_target[target] += len(new)
        self._syncs.add(sync)
        sync.task = asyncio.get_running_loop().create_task(self._fetch(sync))

    async def _lengths(self, digests: list[bytes]) -> dict[bytes, int]:
        """Transactions in each of the batches ``digests`` we hold, read off the loop (up to
        a 4 MiB batch each, only to count them). One whose retention deleted it meanwhile
        is left out."""
        def read(reader: Any) -> dict[bytes, int]:
            return {d: batch_length(blob) for d in digests
                    if (blob := reader.get("batches", d)) is not None}

        if self._reads is None:
            return read(self._store)
        return await self._reads.run(None, read)

    async def _fetch(self, sync: _Sync) -> None:
        backoff = Backoff(self.retry, rng=self._rng)
        first = sync.target is not None
        peers = [sync.target] if sync.target is not None else self._lucky_peers()
        try:
            while True:
                sync.wanted = {d for d in sync.wanted if not self._store.contains("batches", d)}
                if not sync.wanted:
                    return
                started, delay = self._clock.now(), backoff.delay_or_max()
                answered = await self._ask(peers, sync, delay)
                if not sync.wanted:
                    return
                if not (first and answered):
                    await self._clock.sleep(max(0.0, started + delay - self._clock.now()))
                first, peers = False, self._lucky_peers()
        except Exception:  # a store failure: the node is in trouble, but say so here
            self.metrics.error("sync_failed")
            log.exception("batch sync failed")
        finally:
            self._forget(sync)

    def _lucky_peers(self) -> list[bytes]:
        keys = list(self.peers.values())
        return self._rng.sample(keys, min(self.retry_nodes, len(keys)))

    async def _ask(self, peers: list[bytes], sync: _Sync, timeout: float) -> bool:
        """Ask ``peers`` for what ``sync`` still wants; use answers as they come, for at
        most ``timeout``. True if every peer answered (or refused for good) in time.

        The requests are reliable sends (they wait for a connection and retry transient
        failures) cancelled when the round ends."""
        request = RequestBatches(tuple(sync.wanted))
        handles = [await self._network.send(peer, request) for peer in peers]
        answers: asyncio.Queue[asyncio.Task[Any]] = asyncio.Queue()
        for handle in handles:
            handle.add_done_callback(answers.put_nowait)
        deadline = asyncio.get_running_loop().time() + timeout
        waiting = len(handles)
        try:
            while waiting and sync.wanted:
                async with asyncio.timeout_at(deadline):
                    answer = await answers.get()
                waiting -= 1
                await self._accept(answer, sync)
        except TimeoutError:
            pass
        finally:
            for handle in handles:
                handle.cancel()
        return not waiting

    async def _accept(self, answer: asyncio.Task[Any], sync: _Sync) -> None:
        if answer.cancelled() or answer.exception() is not None:
            self.metrics.error("sync_request_failed")
            return
        for batch in answer.result().batches:
            digest = batch.digest()
            if digest not in sync.asked:
                self.metrics.error("sync_unexpected_batch")
                log.warning("ignored a batch %s we did not ask for", digest.hex()[:16])
                continue
            if digest not in sync.wanted or self._receiver.too_large(batch):
                continue
            if await self._receiver.store(batch, digest):
                self.metrics.batches_synced += 1
            sync.wanted.discard(digest)

    def _forget(self, sync: _Sync) -> None:
        if sync not in self._syncs:
            return  # already forgotten (cancelled, then its task's finally)
        self._syncs.discard(sync)
        self._by_target[sync.author] -= len(sync.asked)
        if not self._by_target[sync.author]:
            del self._by_target[sync.author]
        for digest in sync.asked:
            if self._wanted.get(digest) is sync:
                del self._wanted[digest]

    def expire(self) -> None:
        """Give up the syncs whose epoch a Cleanup has expired."""
        for sync in [s for s in self._syncs if self._epoch.expired(s.epoch)]:
            self._cancel(sync)

    def _cancel(self, sync: _Sync) -> None:
        if sync.task is not None:
            sync.task.cancel()
        self._forget(sync)

    async def close(self) -> None:
        tasks = [s.task for s in self._syncs if s.task is not None]
        for sync in list(self._syncs):
            self._cancel(sync)
        await asyncio.gather(*tasks, return_exceptions=True)
