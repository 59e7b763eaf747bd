"""The primary's protocol logic, independent of how messages travel.

:class:`PrimaryNode` assembles the core, the proposer, the certificate fetcher and
consensus around a ``network`` object and a ``store``. The real :class:`~narwhal.primary.
primary.Primary` gives it the Noise/TCP network; the tests give it an in-memory network
and run many nodes in one process, deterministically — the same code either way.

Recovery: ``restore()`` rebuilds the state from the store (certificates, the votes we
cast, the batches known available, the last round we proposed), so a restarted node never
votes twice for one (author, round) and never proposes a round again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from narwhal import messages
from narwhal.consensus import Bullshark, ConsensusState, Tusk
from narwhal.consensus.orphans import never_committed
from narwhal.consensus.records import (
    CONSENSUS_STATE_KEY,
    OUTPUT_FLOOR_KEY,
    checkpoint_key,
    decode_consensus_state,
    decode_output_record,
    decode_state,
    encode_consensus_state,
    encode_output_record,
    encode_state,
)
from narwhal.errors import ErrorCode, RequestRejected
from narwhal.messages import (
    MAX_CERTIFICATES_PER_RESPONSE,
    Certificate,
    CertificatesResponse,
    Checkpoint,
    Encoded,
    Header,
    Vote,
)
from narwhal.net.retry import RetryConfig, is_transient, retry
from narwhal.ports import Clock, NodeNetwork, RandomSource
from narwhal.primary.committed_batches import CommittedBatches
from narwhal.primary.core import Core, round_key, vote_key
from narwhal.primary.fetcher import BULK_BEHIND, CertificateFetcher
from narwhal.primary.history import PRUNE_INTERVAL as HISTORY_PRUNE_INTERVAL
from narwhal.primary.history import HistoryRetention
from narwhal.primary.proposer import Proposer
from narwhal.primary.state_sync import CheckpointSync
from narwhal.serving_reads import ServingReads
from narwhal.store import StorageFailed

__all__ = ["PrimaryNode"]

log = logging.getLogger(__name__)

#: Bytes of certificates in one catch-up response (well below the 8 MiB frame limit).
MAX_RESPONSE_BYTES = 4 * 1024 * 1024
#: Output records read per step when a restart looks back through recent commits.
RESTORE_OUTPUT_CHUNK = 1_000
#: A round above any real one: the end of a key range over every round.
ROUND_END = 2**64 - 1
#: How a failed write of the ordered output is retried: for ever (no max_elapsed_time),
#: 0.1 s doubling to 5 s, so that writes resume within seconds of the disk having room.
OUTPUT_WRITE_RETRY = RetryConfig(initial_interval=0.1, max_interval=5.0, multiplier=2.0,
                                 randomization_factor=0.1, max_elapsed_time=None)
#: Longest wait before the proposer is restarted after failures in a row (0.1 s doubling).
PROPOSER_MAX_BACKOFF = 5.0
#: Seconds ``close`` waits for queued output writes before it gives up on them.
OUTPUT_CLOSE_GRACE = 5.0
#: Batch sizes remembered for the committed-transactions count; beyond it (batches that
#: never commit, e.g. below the GC horizon) new ones are not tracked: metrics only.
MAX_TRACKED_BATCH_SIZES = 1_000_000
#: Committed certificates kept in memory (``PrimaryNode.committed``, for tests and tools;
#: subscribers read the durable output). 10,000 held ~20 MB at 50,000 tx/s.
RECENT_COMMITTED = 1_000










def _until_space_returns(exc: BaseException) -> bool:
    """Which failed writes of our own output are tried again: the transient ones, and a
    full or failing disk (``StorageFailed`` is permanent for a *peer* whose request needed
    the write, not for us: the output must be written, in order, once space returns).
    Found with a real full tmpfs: the first output write that failed ended the chain of
    output writes for good, and the node never output anything again."""
    return is_transient(exc) or isinstance(exc, StorageFailed)








class PrimaryNode:
    def __init__(self, *, name: bytes, signer: Any, committee: Any, parameters: Any, store: Any,
                 network: NodeNetwork, rng: RandomSource | None = None,
                 clock: Clock | None = None) -> None:
        """``rng`` draws the peers the certificate fetcher asks (seed it for a replayable
        run; None: an unseeded ``random.Random``). ``clock``: what the core, the fetcher,
        the proposer and the committed-batch tracker read the time from (None: their
        defaults; the simulator passes the loop's, which is virtual there)."""
        timed: dict[str, Any] = {} if clock is None else {"clock": clock}
        self.name = name
        self.committee = committee
        self.parameters = parameters
        self.store = store
        self.fetcher = CertificateFetcher(
            others=network.others, request=network.request, have=lambda d: d in self.core.dag,
            deliver=lambda c, source: self.core.handle_certificate(c, None), behind=self._behind,
            deliver_page=lambda page, source: self.core.accept_page(page), rng=rng,
            on_beyond_retention=self._start_state_sync,
            # a page covers >= MAX / n rounds (less when its bytes are capped first: then
            # the next page waits on the gap, fetched by digest, as before)
            page_rounds=MAX_CERTIFICATES_PER_RESPONSE // len(committee.authorities) - 2, **timed)
        #: Finds a checkpoint peers agree on when every peer pruned what we need.
        self.state_sync = CheckpointSync(committee=committee, others=network.others,
                                         request=network.request)
        self._state_sync_task: asyncio.Task[None] | None = None
        #: State transfers done (checkpoints installed) in this run.
        self.state_transfers = 0
        #: Output indexes below it were never computed here (a state transfer skipped them).
        floor = store.get("consensus", OUTPUT_FLOOR_KEY)
        self._output_floor = int.from_bytes(floor, "big") if floor else 0
        self.core = Core(
            name=name, committee=committee, signer=signer, store=store, network=network,
            fetch_certificates=self.fetcher.fetch, on_parents=self._parents_ready,
            on_certificate=self._certificate_accepted, on_far_ahead=self.fetcher.catch_up,
            worker_ids=committee.worker_ids, **timed)
        genesis = tuple(sorted(c.digest() for c in Certificate.genesis(committee.authorities_sorted())))
        last = store.get("last_proposed", b"")
        self._last_header_digest = last[8:] if last else None
        self.proposer = Proposer(
            name=name, signer=signer, store=store, propose=self._propose,
            all_parents=self.core.parents_of, frontier=lambda: self.core.frontier,
            certificates_coming=self.core.certificates_coming, weak_links=self._weak_links,
            header_size=parameters.header_size, max_header_delay=parameters.max_header_delay,
            genesis_parents=genesis, last_proposed=int.from_bytes(last[:8], "big") if last else 0,
            **timed)
        protocol = Bullshark if parameters.consensus == "bullshark" else Tusk
        self.consensus = protocol(committee, ConsensusState(parameters.gc_depth, dag=self.core.dag))
        self.consensus_index = 0
        self.committed: list[Certificate] = []  # the last RECENT_COMMITTED of this run
        self._commit_writes: asyncio.Future[None] | None = None
        #: Failed attempts to write the ordered output (each retried until it succeeds).
        self.output_write_failures = 0
        #: Indexes computed but not yet on disk because the store refuses writes.
        self.output_write_failing = False
        #: Payload of each of our headers not (yet) seen committed, by round. A header whose
        #: round falls below the consensus GC horizon uncommitted can never be committed
        #: any more: its batches are proposed again (exactly once: see _take_orphans).
        self._uncommitted: dict[int, tuple[tuple[bytes, int], ...]] = {}
        #: Transactions per batch, as our workers reported them, until the batch commits.
        self._batch_sizes: dict[bytes, int] = {}
        self.transactions_committed = 0
        #: Pulsed (set, then cleared) after each commit write: wakes output subscribers.
        self.commit_written = asyncio.Event()
        #: Batches of committed certificates our workers lack: fetched whatever the GC round.
        self.committed_batches = CommittedBatches(
            request_worker=network.request_worker,
            **({} if clock is None else {"clock": clock.now}))
        self._committed_batches_task: asyncio.Task[None] | None = None
        #: Catch-up requests of peers are read from the store here, off the event loop.
        self.reads = ServingReads(store, name="primary")
        #: Deletes what is older than retain_seconds (rounds, output) from the store.
        self.history = HistoryRetention(store, retain_seconds=parameters.retain_seconds,
                                        authorities=committee.authorities)
        self._history_task: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def restore(self) -> None:
        """Rebuild memory from the store after a restart, reading only the rounds that can
        still matter (see :meth:`_restore_window`): restart time does not grow with history."""
        blob = self.store.get("consensus", CONSENSUS_STATE_KEY)
        if blob is not None:
            self.consensus_index = decode_consensus_state(blob, self.consensus.state)
        highest, gc_round, start = self._restore_window()
        digests = [digest for _, digest in self.store.items("certificates_by_round", start=round_key(start))]
        certificates = [messages.decode_as(Certificate, value)
                        for value in self.store.get_many("certificates", digests) if value is not None]
        votes = [(key[:32], int.from_bytes(key[32:], "big"), value)
                 for author in self.committee.authorities
                 for key, value in self.store.items("votes", start=vote_key(author, gc_round + 1),
                                                    end=vote_key(author, ROUND_END))]
        available = [(key[:32], int.from_bytes(key[32:], "big")) for key in self.store.keys("payload")]
        self.core.restore(certificates=certificates, votes=votes, available=available, gc_round=gc_round)
        self.fetcher.garbage_collect(gc_round)
        settled_rounds = self._restore_committed_payload(start)
        settled_rounds.update(int.from_bytes(k, "big") for k in self.store.keys("reproposed"))
        for header in self._our_headers(max(0, start - self.parameters.gc_depth)):
            if header.payload and header.round not in settled_rounds:
                self._uncommitted[header.round] = header.payload
        for certificate in sorted(certificates, key=lambda c: c.header.round):
            committed = self.consensus.process_certificate(certificate)
            if committed:  # commits the crash interrupted before they were persisted
                self._record_commits(committed)
        ours = [(key[:32], int.from_bytes(key[32:], "big")) for key in self.store.keys("our_batches")]
        for digest, worker_id in ours:  # acknowledged to our workers, not yet in a header
            self.proposer.add_digest(digest, worker_id)
        if certificates:
            log.info("restored %d certificates of rounds %d..%d, %d votes, gc round %d",
                     len(certificates), start, highest, len(votes), gc_round)

    def _restore_window(self) -> tuple[int, int, int]:
        """``(highest round stored, gc round, first round to read)``. Below the first round
        nothing can change what we do: the core forgets rounds <= the GC round, and
        consensus ignores certificates below its last committed round - gc_depth (both
        garbage-collect exactly so while running), so reading them would only cost time."""
        last = self.store.items("certificates_by_round", limit=1, reverse=True)
        highest = int.from_bytes(last[0][0][:8], "big") if last else 0
        depth = self.parameters.gc_depth
        gc_round = max(0, highest - depth)
        start = max(0, min(gc_round, self.consensus.state.last_committed_round - depth))
        return highest, gc_round, start

    def _restore_committed_payload(self, start: int) -> set[int]:
        """From the newest output records back to those of rounds below ``start``: have our
        workers fetch the committed batches they lack (a wish that must survive restarts;
        older ones come back when the output service misses them), and return the rounds of
        our own committed headers."""
        settled: set[int] = set()
        end: bytes | None = None
        while True:
            rows = self.store.items("output", end=end, limit=RESTORE_OUTPUT_CHUNK, reverse=True)
            for _, value in rows:
                index, rnd, author, _, payload = decode_output_record(value)
                if author == self.name:
                    settled.add(rnd)
                self._want_committed_payload(index, author, payload)
            if len(rows) < RESTORE_OUTPUT_CHUNK or min(
                    decode_output_record(v)[1] for _, v in rows) < start:
                return settled
            end = rows[-1][0]

    def _our_headers(self, start: int) -> list[Header]:
        """Our own headers from round ``start`` on: each one we proposed we also voted for,
        and the last proposed one (a crash may have come between the two writes). Why from
        a GC depth below the window: a header of ours orphaned just before the crash, and
        not yet proposed again, still has its batches proposed again after the restart."""
        digests = {bytes(digest) for _, digest in self.store.items(
            "votes", start=vote_key(self.name, start), end=vote_key(self.name, ROUND_END))}
        if self._last_header_digest is not None:
            digests.add(self._last_header_digest)
        blobs = self.store.get_many("headers", sorted(digests))
        return [messages.decode_as(Header, blob) for blob in blobs if blob is not None]

    async def run(self) -> None:
        """Run the proposer for ever (restarting it after an unexpected failure), and
        fetch the committed batches our workers lack."""
        self.core.resync_payload()
        if self._committed_batches_task is None:
            self._committed_batches_task = asyncio.ensure_future(self.committed_batches.run())
        if self._history_task is None:
            self._history_task = asyncio.ensure_future(self._prune_history())
        await self._repropose_last_header()
        failures, loop = 0, asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self.proposer.run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let one failure stop our proposals for good
                # e.g. the store refuses writes (disk full): back off, and log the
                # traceback once per streak rather than ten times a second
                failures = 1 if loop.time() - started > 30 * PROPOSER_MAX_BACKOFF else failures + 1
                delay = min(PROPOSER_MAX_BACKOFF, 0.1 * 2 ** min(failures - 1, 10))
                if failures == 1:
                    log.exception("proposer failed; restarting it in %.1f s", delay)
                else:
                    log.error("proposer failed again (%d in a row): %r; restarting it in %.1f s",
                              failures, exc, delay)
                await asyncio.sleep(delay)

    async def _propose(self, header: Header) -> None:
        if header.payload:
            self._uncommitted[header.round] = header.payload
        await self.core.propose(header)

    def _weak_links(self, round_: int) -> tuple[tuple[bytes, int], ...]:
        """Weak links for our header of ``round_``: the certificates of rounds below
        ``round_ - 1`` that nothing in our DAG references and consensus may still order
        (above their author's last committed round and the GC round), oldest first, at most
        one per authority."""
        if not self.parameters.weak_links:
            return ()
        state = self.consensus.state
        linked = [c for c in self.core.dag.unreferenced(round_ - 1)
                  if c.header.round > max(self.core.gc_round, state.last_committed.get(c.header.author, 0))]
        return tuple(sorted((c.digest(), c.header.round) for c in linked[:len(self.committee.authorities)]))

    def _behind(self) -> int | None:
        """The round to fetch certificates after, in bulk, when others are far ahead."""
        held = self.core.dag.highest_round
        if self.core.frontier - held <= BULK_BEHIND:
            return None
        return max(self.core.gc_round, held - 1)

    def _take_orphans(self, round_: int, horizon: int) -> dict[int, tuple[tuple[bytes, int], ...]]:
        """Our uncommitted headers that can never be committed, taken out of
        ``_uncommitted`` at once (no later check takes them again): round -> batches. Those at or below the consensus GC horizon (consensus ignores everything
        there, so their batches cannot be output twice), and, a certificate of ``round_``
        having just arrived, those below it that provably will never be committed (never
        certified, or passed over: :mod:`narwhal.consensus.orphans`), without waiting for
        the horizon."""
        ours = self.consensus.state.last_committed.get(self.name, 0)
        taken = sorted(r for r in self._uncommitted if r <= horizon or (
            r < round_ and never_committed(self.core.dag, self.committee, self.name, r, ours)))
        return {r: self._uncommitted.pop(r) for r in taken}

    async def _repropose(self, orphans: dict[int, tuple[tuple[bytes, int], ...]], horizon: int) -> None:
        """Propose the batches of the orphaned headers ``orphans`` (round -> batches) again.
        Those whose header waited for the GC ``horizon`` (the last resort) are counted
        apart: with weak links, a latency tail only a silent or far-behind validator of ours
        should cause."""
        payload = [entry for entries in orphans.values() for entry in entries]
        if not payload:
            return
        # pending again, and never again taken for orphans after a restart: exactly once
        await self.store.write([*(("our_batches", d + w.to_bytes(4, "big"), b"") for d, w in payload),
                                *(("reproposed", r.to_bytes(8, "big"), b"") for r in orphans)])
        for digest, worker_id in payload:
            self.proposer.add_digest(digest, worker_id)
        self.core.counters["batches_reproposed"] += len(payload)
        self.core.counters["batches_reproposed_at_horizon"] += sum(
            len(entries) for r, entries in orphans.items() if r <= horizon)
        log.info("proposing %d batches again: their headers (rounds %s) were never committed",
                 len(payload), sorted(orphans))

    async def _repropose_last_header(self) -> None:
        """After a restart, send our last header again if it never became a certificate:
        the crash may have come before its broadcast, or lost the votes it gathered. Its
        digest is unchanged, so this is never equivocation."""
        digest = self._last_header_digest
        if digest is None:
            return
        blob = self.store.get("headers", digest)
        if blob is None:
            return
        header = messages.decode_as(Header, blob)
        certified = self.core.dag.round(header.round).get(self.name)
        if certified is None and header.round > self.core.gc_round:
            log.info("re-proposing our header of round %d after a restart", header.round)
            self.core.counters["header_reproposed"] += 1
            await self.core.propose(header)

    async def close(self) -> None:
        for task in (self._committed_batches_task, self._history_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self.fetcher.close()
        await self.core.close()
        if self._commit_writes is not None:
            await self._finish_commit_writes()
        await self.reads.close()

    # -- inbound messages (the sender is an authenticated authority) -------------------------

    async def on_header(self, sender: bytes, header: Header) -> None:
        await self.core.handle_header(header, sender)

    async def on_vote(self, sender: bytes, vote: Vote) -> None:
        await self.core.handle_vote(vote, sender)

    async def on_certificate(self, sender: bytes, certificate: Certificate) -> None:
        await self.core.handle_certificate(certificate, sender)

    async def on_batch(self, digest: bytes, worker_id: int, *, ours: bool, transactions: int = 0) -> None:
        """Our worker stored a batch: ours (quorum reached) or another authority's."""
        if worker_id not in self.committee.worker_ids:
            raise RequestRejected(ErrorCode.INVALID, f"no worker {worker_id}")
        self.committed_batches.arrived(digest, worker_id)
        if transactions and len(self._batch_sizes) < MAX_TRACKED_BATCH_SIZES:
            self._batch_sizes.setdefault(digest, transactions)
        if ours and (digest, worker_id) in self.core.payload:
            return  # a repeated report (our ack to the worker was lost): never propose it twice
        # ours: durable before the worker's report is acknowledged, so that after a crash
        # the proposer still includes it (it is removed when a header carries it)
        mine = [("our_batches", digest + worker_id.to_bytes(4, "big"), b"")] if ours else []
        await self.core.batch_available(digest, worker_id, also=mine)
        if ours:
            self.proposer.add_digest(digest, worker_id)

    async def certificates_by_digest(self, digests: list[bytes], source: Any = None) -> Encoded:
        """The stored certificates of ``digests`` (a peer's ``CertificatesRequest``), read
        off the event loop (:mod:`narwhal.serving_reads`)."""
        return await self.reads.run(source, lambda reader: _bounded_response(
            reader.get_many("certificates", digests)))

    async def certificates_after(self, after_round: int, max_items: int,
                                 source: Any = None) -> Encoded:
        """Stored certificates of rounds > ``after_round``, oldest first (a peer's
        ``FetchCertificates``), read off the event loop."""
        def read(reader: Any) -> Encoded:
            rows = reader.items("certificates_by_round", start=round_key(after_round + 1),
                                limit=max_items)
            return _bounded_response(reader.get_many("certificates", [d for _, d in rows]))
        return await self.reads.run(source, read)

    async def checkpoint_at_or_after(self, min_round: int, source: Any = None) -> Checkpoint:
        """Our earliest checkpoint of a leader round >= ``min_round`` (a peer's
        ``CheckpointRequest``), read off the event loop; NOT_FOUND if we hold none."""
        def read(reader: Any) -> bytes | None:
            rows = reader.items("consensus", start=checkpoint_key(min_round),
                                end=checkpoint_key(ROUND_END), limit=1)
            return bytes(rows[0][1]) if rows else None
        blob = await self.reads.run(source, read)
        if blob is None:
            raise RequestRejected(ErrorCode.NOT_FOUND, f"no checkpoint at or after round {min_round}")
        return decode_state(blob)

    @property
    def output_floor(self) -> int:
        """The lowest output index this node can serve (retention, state transfer)."""
        return max(int(self.history.pruned_index), self._output_floor)

    def _start_state_sync(self, first_held: int) -> None:
        """Every peer pruned the rounds after ours (their first held round: ``first_held``):
        find a checkpoint they agree on, above which they hold every round, and go on
        from it. One search at a time."""
        if self._state_sync_task is None or self._state_sync_task.done():
            min_round = first_held + self.parameters.gc_depth + 1
            self._state_sync_task = asyncio.ensure_future(self._state_sync(min_round))

    async def _state_sync(self, min_round: int) -> None:
        try:
            checkpoint = await self.state_sync.agree(min_round)
            await self.install_checkpoint(checkpoint)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("state transfer failed")
            self.fetcher.forget_retention()

    async def install_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Resume consensus from ``checkpoint`` (see :mod:`narwhal.primary.state_sync`):
        garbage-collect everything up to its leader round - gc_depth and fetch what is
        above; the output indexes up to its index were never computed here and are served
        ``PRUNED``. Persisted before it takes effect, so a restart resumes from it too."""
        state = self.consensus.state
        if checkpoint.index <= self.consensus_index or checkpoint.leader_round <= state.last_committed_round:
            self.fetcher.forget_retention()
            return  # we are not behind it (what we fetched meanwhile caught us up)
        last_committed = dict(checkpoint.last_committed)
        blob = encode_state(checkpoint.index, checkpoint.leader_round, last_committed)
        previous = self._commit_writes
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)  # an older state lands first
        await self.store.write([("consensus", CONSENSUS_STATE_KEY, blob),
                                ("consensus", checkpoint_key(checkpoint.leader_round), blob),
                                ("consensus", OUTPUT_FLOOR_KEY, (checkpoint.index + 1).to_bytes(8, "big"))],
                               durable=True)
        skipped = checkpoint.index - self.consensus_index
        state.reset(last_committed, checkpoint.leader_round)
        self.consensus_index = checkpoint.index
        self._output_floor = checkpoint.index + 1
        self.state_transfers += 1
        gc_round = checkpoint.leader_round - self.parameters.gc_depth
        log.warning("state transfer: resuming consensus from the checkpoint of round %d (output "
                    "index %d) that peers of f+1 stake agree on; %d output indexes were never "
                    "computed here and are answered PRUNED", checkpoint.leader_round,
                    checkpoint.index, skipped)
        self.fetcher.forget_retention()
        self.fetcher.garbage_collect(gc_round)
        await self.core.garbage_collect(gc_round)
        self.commit_written.set()  # subscribers waiting for an index below the floor
        self.commit_written.clear()
        self.fetcher.catch_up()

    # -- callbacks from the core -------------------------------------------------------------

    def _parents_ready(self, round_: int, parents: tuple[bytes, ...]) -> None:
        self.proposer.parents_ready(round_, parents)

    def _certificate_accepted(self, certificate: Certificate) -> None:
        """The core accepted a certificate (causal order): run consensus on it."""
        self.proposer.certificate_arrived(certificate.header.round)
        committed = self.consensus.process_certificate(certificate)
        if committed:
            self._record_commits(committed)
        gc_round = self.consensus.state.last_committed_round - self.parameters.gc_depth
        if gc_round > self.core.gc_round:
            self.fetcher.garbage_collect(gc_round)
            self.core.spawn_send(self.core.garbage_collect(gc_round), None)
            self.core.spawn_send(self.history.note(gc_round, self.consensus_index), None)
        orphans = self._take_orphans(certificate.header.round, gc_round)
        if orphans:
            self.core.spawn_send(self._repropose(orphans, gc_round), None)

    async def _prune_history(self) -> None:
        """Every PRUNE_INTERVAL: delete the history older than retain_seconds."""
        while True:
            await asyncio.sleep(HISTORY_PRUNE_INTERVAL)
            try:
                await self.history.prune(lambda read: self.reads.run(None, read))
            except asyncio.CancelledError:
                raise
            except Exception:  # a failed pass (disk error) is tried again at the next one
                log.exception("retention: deleting old history failed; trying again in %.0f s",
                              HISTORY_PRUNE_INTERVAL)

    def _record_commits(self, committed: list[Certificate]) -> None:
        """Number the newly committed certificates and persist them with the consensus
        state, atomically and in commit order (a crash before the write completes is
        recovered by recomputing the same commits from the stored certificates)."""
        ops: list[tuple[str, bytes, bytes | None]] = []
        for certificate in committed:
            self.consensus_index += 1
            header = certificate.header
            log.info("Committed certificate %s round=%d author=%s index=%d batches=%d",
                     certificate.digest().hex()[:16], header.round, header.author.hex()[:8],
                     self.consensus_index, len(header.payload))
            for digest, _ in header.payload:
                log.info("Committed batch %s", digest.hex())
                self.transactions_committed += self._batch_sizes.pop(digest, 0)
            ops.append(("output", self.consensus_index.to_bytes(8, "big"),
                        encode_output_record(self.consensus_index, certificate)))
            self._want_committed_payload(self.consensus_index, header.author, header.payload)
            if header.author == self.name:
                self._uncommitted.pop(header.round, None)
            self.committed.append(certificate)
        del self.committed[:-RECENT_COMMITTED]
        before = self.consensus_index - len(committed)
        for outputs, leader_round, last_committed in self.consensus.state.leader_ends:
            ops.append(("consensus", checkpoint_key(leader_round),
                        encode_state(before + outputs, leader_round, last_committed)))
        ops.append(("consensus", CONSENSUS_STATE_KEY,
                    encode_consensus_state(self.consensus.state, self.consensus_index)))
        previous = self._commit_writes
        first, last = self.consensus_index - len(committed) + 1, self.consensus_index

        async def write() -> None:
            if previous is not None:
                await previous  # in order: a later state never lands before an earlier one
            await retry(lambda: self.store.write(ops), OUTPUT_WRITE_RETRY,
                        on_retry=lambda n, exc, delay: self._output_write_failed(first, last, n, exc, delay),
                        transient=_until_space_returns)
            if self.output_write_failing:
                self.output_write_failing = False
                log.warning("ordered output indexes %d..%d written: the store accepts writes again",
                            first, last)
            self.commit_written.set()
            self.commit_written.clear()

        self._commit_writes = asyncio.ensure_future(write())

    def _output_write_failed(self, first: int, last: int, attempt: int, error: BaseException,
                             delay: float) -> None:
        """A write of the ordered output failed (disk full, I/O error): it is retried, never
        skipped, and every later write waits behind it, so the output stays contiguous (a
        skipped write followed by a later consensus state would leave a hole for ever)."""
        self.output_write_failures += 1
        if not self.output_write_failing or attempt % 20 == 0:
            log.error("cannot write the ordered output (indexes %d..%d, attempt %d): %s; "
                      "output is held back and retried in %.1f s until the store accepts writes "
                      "(check free disk space)", first, last, attempt, error, delay)
        self.output_write_failing = True

    async def _finish_commit_writes(self) -> None:
        """At shutdown: give the queued output writes OUTPUT_CLOSE_GRACE seconds, then stop
        retrying (what is not written is recomputed from the stored certificates at restart)."""
        chain = self._commit_writes
        assert chain is not None
        try:
            await asyncio.wait_for(asyncio.shield(chain), OUTPUT_CLOSE_GRACE)
        except TimeoutError:
            chain.cancel()
            log.error("stopping with ordered output up to index %d not written (the store refused "
                      "writes); it is recomputed from the stored certificates at restart",
                      self.consensus_index)
        except Exception as exc:  # noqa: BLE001 -- a permanent error (a bug): no retry helps
            log.error("stopping with ordered output up to index %d not written: %r",
                      self.consensus_index, exc)
        await asyncio.gather(chain, return_exceptions=True)

    def _want_committed_payload(self, index: int, author: bytes,
                                payload: Iterable[tuple[bytes, int]]) -> None:
        """Index ``index`` is committed: have our workers fetch the batches they lack."""
        for digest, worker_id in self.core.payload.missing(payload):
            self.committed_batches.want(index, digest, worker_id, author)

    # -- observability -------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        core = self.core
        return {
            "role": "primary",
            "authority": self.name.hex(),
            "round": self.proposer.round,
            "last_proposed": self.proposer.last_proposed,
            "headers_proposed": self.proposer.headers_proposed,
            "weak_links_proposed": self.proposer.weak_links_proposed,
            "batches_reproposed": core.counters["batches_reproposed"],
            "batches_reproposed_at_horizon": core.counters["batches_reproposed_at_horizon"],
            "dag_round": core.dag.highest_round,
            "gc_round": core.gc_round,
            "consensus": self.consensus.name,
            "committed_round": self.consensus.state.last_committed_round,
            "consensus_index": self.consensus_index,
            "transactions_committed": self.transactions_committed,
            "certificates": core.counters["certificates_accepted"],
            "votes_cast": core.counters["votes_cast"],
            "certificates_formed": core.counters["certificates_formed"],
            "certificate_latency_ms": _median_ms(core.certificate_latencies),
            "pending_digests": self.proposer.pending_digests,
            # batches of our headers not yet seen committed (proposed again if orphaned)
            "uncommitted_batches": sum(len(p) for p in self._uncommitted.values()),
            "fetching": self.fetcher.wanted, "certificates_fetched": self.fetcher.fetched,
            "bulk_fetches": self.fetcher.bulk_requests,
            "beyond_retention": int(self.fetcher.beyond_retention),
            "state_transfers": self.state_transfers, "output_floor": self.output_floor,
            "committed_batches": self.committed_batches.status(),
            "output_write_failures": self.output_write_failures,
            "output_write_failing": int(self.output_write_failing),
            "evidence": core.evidence.status(),
            "history": self.history.status(),
            "serving_reads": self.reads.status(),
            "counters": dict(core.counters),
        }


def _median_ms(samples: Any) -> float | None:
    """Median of recent samples (seconds) in milliseconds, None before the first."""
    ordered = sorted(samples)
    return ordered[len(ordered) // 2] * 1000 if ordered else None


def _bounded_response(encoded: list[bytes | None]) -> Encoded:
    """The stored certificates we hold, up to ``MAX_RESPONSE_BYTES``, spliced as they are."""
    certificates, size = [], 0
    for value in encoded:
        if value is None:
            continue
        size += len(value)
        if size > MAX_RESPONSE_BYTES:
            break
        certificates.append(value)
    return messages.splice(CertificatesResponse, certificates)
