"""The primary's core: validate headers and vote, aggregate votes into certificates, and
garbage-collect old rounds. Certificates enter the DAG through
:mod:`narwhal.primary.acceptance`; batches are checked through
:mod:`narwhal.primary.payload`; the core wires the three together and is what the node
calls.

Rules kept here (``docs/protocol.md``, "Primary"):

- **Vote at most once per (author, round), for ever.** The choice is reserved in memory
  *before* the first ``await`` (so two concurrent deliveries cannot both vote) and written
  durably before the vote leaves. A different header for an already-voted (author, round)
  is equivocation: counted, never voted for, and both signed headers are kept once as
  evidence (:mod:`narwhal.primary.evidence`), as are two certificates of one (author,
  round) and a voter's two votes for different headers of ours.
- **Vote only for valid, complete headers**: member author who sent it himself, signature,
  round above the GC round, parents that are certificates of the previous round carrying a
  quorum of stake (fetched when missing), weak links naming the rounds of certificates we
  hold (fetched when missing, like parents), payload stored at our workers (asked to sync
  when missing). Incomplete headers are parked, bounded, and retried when what they miss
  arrives (a certificate inserted, a batch stored).
- **GC**: rounds below the GC round are dropped from memory, their reliable sends are
  cancelled, and workers are told to ``Cleanup``.

The core never touches sockets: it talks through the ``network`` object it is given, so
the same code runs over Noise/TCP and in deterministic in-memory tests.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from narwhal import crypto, messages
from narwhal.consensus.dag import Dag
from narwhal.messages import Certificate, Cleanup, Header, Vote
from narwhal.ports import MONOTONIC_CLOCK, Clock, PrimaryNetworkLike, StoreLike
from narwhal.primary.acceptance import CertificateAcceptance, fetch_each_round, round_key
from narwhal.primary.aggregators import VotesAggregator
from narwhal.primary.checks import Invalid, check_header, check_vote
from narwhal.primary.evidence import VOTE, EvidenceRecorder
from narwhal.primary.parked import Parked, ParkedHeaders
from narwhal.primary.payload import PayloadAvailability, payload_key
from narwhal.primary.sends import SendTracker

__all__ = ["Core", "round_key", "vote_key"]

log = logging.getLogger(__name__)

#: Headers waiting for parents or payload, shared equally by the authorities (each author's
#: oldest are dropped beyond its share: :mod:`narwhal.primary.parked`).
MAX_PARKED_HEADERS = 1_000


def vote_key(author: bytes, round_: int) -> bytes:
    return author + round_.to_bytes(8, "big")


class Core:
    def __init__(
        self,
        *,
        name: bytes,
        committee: Any,
        signer: Any,
        store: StoreLike,
        network: PrimaryNetworkLike,
        fetch_certificates: Callable[[Iterable[bytes], bytes | None, int], None],
        on_parents: Callable[[int, tuple[bytes, ...]], None],
        on_certificate: Callable[[Certificate], None] = lambda c: None,
        on_far_ahead: Callable[[], None] = lambda: None,
        worker_ids: Iterable[int] = (0,),
        clock: Clock = MONOTONIC_CLOCK,
    ) -> None:
        self.name = name
        self._clock = clock
        self.committee = committee
        self._signer = signer
        self._store = store
        self._network = network
        self._fetch = fetch_certificates
        self._worker_ids = tuple(worker_ids)
        self.dag = Dag(Certificate.genesis(committee.authorities_sorted()))
        self.voted: dict[tuple[bytes, int], bytes] = {}
        #: Which batches our workers hold; asks them for the others.
        self.payload = PayloadAvailability(
            store=store, clock=clock, frontier=lambda: self.frontier,
            synchronize=lambda worker_id, message, round_: self.spawn_send(
                network.to_workers(message, [worker_id]), round_))
        self._current: VotesAggregator | None = None
        self._parked_headers = ParkedHeaders(
            per_author=max(1, MAX_PARKED_HEADERS // len(committee.authorities)))
        #: Our sends in flight, by round: cancelled at GC (narwhal/primary/sends.py).
        self.sends = SendTracker()
        self._revoted: set[tuple[bytes, int]] = set()
        #: Rejections and notable events by reason (metrics).
        self.counters: Counter[str] = Counter()
        self._proposed_at = 0.0
        #: Seconds from proposing each of our recent headers to its certificate (metrics).
        self.certificate_latencies: collections.deque[float] = collections.deque(maxlen=200)
        #: Proofs of equivocation, kept in the store (``restore`` loads what it holds).
        self.evidence = EvidenceRecorder(store)
        #: Certificates into the DAG in causal order (narwhal/primary/acceptance.py).
        self.certificates = CertificateAcceptance(
            name=name, committee=committee, store=store, dag=self.dag, counters=self.counters,
            evidence=self.evidence, payload=self.payload, fetch_certificates=fetch_certificates,
            on_parents=on_parents, on_certificate=on_certificate, on_far_ahead=on_far_ahead,
            on_inserted=self.retry_parked_headers)

    @property
    def gc_round(self) -> int:
        """Rounds <= this are garbage-collected (:meth:`garbage_collect`)."""
        return self.certificates.gc_round

    @property
    def highest_seen(self) -> int:
        return self.certificates.highest_seen

    # -- recovery ------------------------------------------------------------------------

    def restore(self, *, certificates: Iterable[Certificate], votes: Iterable[tuple[bytes, int, bytes]],
                available: Iterable[tuple[bytes, int]], gc_round: int) -> None:
        """Rebuild memory from the store after a restart (certificates in round order)."""
        self.evidence.load()
        for author, round_, digest in votes:
            self.voted[(author, round_)] = digest
        self.certificates.restore(certificates, gc_round)
        self.payload.restore(available)

    def resync_payload(self) -> None:
        """Ask our workers for every batch our certificates reference but we lack (after a
        restart, the workers' own sync state is gone)."""
        for round_ in self.dag.rounds():
            if round_ <= self.gc_round:
                continue  # read back for consensus only (the DAG is shared with it)
            for author, certificate in self.dag.round(round_).items():
                missing = self.payload.missing(certificate.header.payload)
                if missing and author != self.name:
                    self.payload.request(author, missing, round_)

    # -- headers ---------------------------------------------------------------------------

    async def handle_header(self, header: Header, sender: bytes | None) -> None:
        """A header from its author (``sender``), or our own (sender None).

        A header we already verified (parked, or voted for and answered again) is dropped
        before its signature is checked again: a replay costs a hash, not a signature
        verification (~116 us, enough for a peer replaying ~8.6k/s to saturate the loop)."""
        if sender is not None and sender == header.author and self._seen_header(header):
            self.counters["header_duplicate"] += 1
            return
        try:
            check_header(header, self.committee, gc_round=self.gc_round,
                         highest_round=self.dag.highest_round, sender=sender)
        except Invalid as exc:
            self.counters[f"header_{exc.reason}"] += 1
            raise
        await self._try_vote(header)

    def _seen_header(self, header: Header) -> bool:
        """Verified before and nothing left to do for it: parked (retried when what it
        misses arrives), or voted for and our vote already sent again once."""
        key = (header.author, header.round)
        return self._parked_headers.holds(header) or (
            self.voted.get(key) == header.digest() and key in self._revoted)

    async def _try_vote(self, header: Header) -> None:
        key = (header.author, header.round)
        prior = self.voted.get(key)
        if prior is not None:
            if prior != header.digest():
                self._parked_headers.remove(header)  # never voted for: not retried again
                await self._header_equivocation(header, prior)
            elif header.author != self.name and key not in self._revoted:
                # The same header again: its author restarted and lost our vote. Signing
                # the same vote again is not equivocation; answer once per header.
                self._revoted.add(key)
                await self._send_vote(header)
            return
        missing_parents = self._missing_parents(header)
        missing_payload = self.payload.missing(header.payload)
        if missing_parents or missing_payload:
            await self._park_header(header, missing_parents, missing_payload)
            return
        self._check_parents(header, [self.dag.get(p) for p in header.parents])
        self._parked_headers.remove(header)
        await self._vote(header)

    def _missing_parents(self, header: Header) -> list[tuple[bytes, int]]:
        """Parents and weak links we lack (those collected are not checked against)."""
        return self.dag.missing(header, self.gc_round)

    def _check_parents(self, header: Header, parents: list[Certificate | None]) -> None:
        for digest, round_ in header.weak_links:
            linked = self.dag.get(digest)
            if linked is not None and linked.header.round != round_:
                self.counters["header_bad_weak_link_round"] += 1
                raise Invalid("bad_weak_link_round", "a weak link names the wrong round")
        if header.round - 1 <= self.gc_round and header.round > 1:
            return
        weight = 0
        for parent in parents:
            assert parent is not None
            if parent.header.round != header.round - 1:
                self.counters["header_bad_parent_round"] += 1
                raise Invalid("bad_parent_round", "a parent is not from the previous round")
            weight += self.committee.stake(parent.header.author)
        if weight < self.committee.quorum_threshold():
            self.counters["header_parents_no_quorum"] += 1
            raise Invalid("parents_no_quorum", "the parents do not carry a quorum of stake")

    async def _park_header(self, header: Header, missing_parents: list[tuple[bytes, int]],
                           missing_payload: list[tuple[bytes, int]]) -> None:
        parked = self._parked_headers.add(header)
        if parked is Parked.CONFLICT:
            await self._header_equivocation(header, self._parked_headers.get(header.author, header.round))
            return
        if parked is Parked.ADDED:
            self.counters["header_parked"] += 1
            self.counters["header_parked_dropped"] = self._parked_headers.dropped
        if missing_parents:
            fetch_each_round(self._fetch, missing_parents, header.author)
        if missing_payload:
            self.payload.request(header.author, missing_payload, header.round)

    async def _header_equivocation(self, header: Header, other: Header | bytes | None) -> None:
        """``header`` conflicts with ``other`` (a parked header, or the digest of the one we
        voted for): counted every time, kept as evidence once."""
        self.counters["equivocation"] += 1
        if other is None or self.evidence.known(header.author, header.round):
            return
        if isinstance(other, bytes):  # stored with our vote; read once per (author, round)
            blob = self._store.get("headers", other)
            if blob is None:
                log.warning("equivocation: %s sent a second header for round %d; the first "
                            "is not stored", header.author.hex()[:16], header.round)
                return
            other = messages.decode_as(Header, blob)
        await self.evidence.headers(other, header)

    async def _vote(self, header: Header) -> None:
        key = (header.author, header.round)
        digest = header.digest()
        self.voted[key] = digest  # reserved before any await: no second vote can start
        await self._store.write([
            ("headers", digest, messages.encode(header)),
            ("votes", vote_key(header.author, header.round), digest),
        ], durable=True)  # on the disk before the vote leaves: no second vote after a power cut
        self.counters["votes_cast"] += 1
        await self._send_vote(header)

    async def _send_vote(self, header: Header) -> None:
        unsigned = Vote(header.digest(), header.round, header.author, self.name, bytes(64))
        vote = attrs.evolve(unsigned, signature=self._signer.sign(unsigned.digest()))
        if header.author == self.name:
            await self.handle_vote(vote, None)
        else:
            self.sends.track(header.round, await self._network.send(header.author, vote))

    async def retry_parked_headers(self) -> None:
        """Re-examine parked headers (after certificates or payload arrived)."""
        for header in self._parked_headers:
            if header.round <= self.gc_round:
                self._parked_headers.remove(header)
                continue
            if not self._missing_parents(header) and not self.payload.missing(header.payload):
                try:
                    await self._try_vote(header)
                except Invalid:
                    self._parked_headers.remove(header)

    # -- our own header ------------------------------------------------------------------

    async def propose(self, header: Header) -> None:
        """Our proposer made ``header`` (already signed and persisted): broadcast, vote."""
        self._current = VotesAggregator(header, self.committee)
        self._proposed_at = self._clock.now()
        self.sends.track(header.round, await self._network.broadcast(header))
        if self.voted.get((self.name, header.round)) == header.digest():
            await self._send_vote(header)  # re-proposed after a restart: count our vote again
        else:
            await self._try_vote(header)

    async def handle_vote(self, vote: Vote, sender: bytes | None) -> None:
        if sender is not None and vote.author != sender:
            self.counters["vote_wrong_sender"] += 1
            raise Invalid("wrong_sender", "a vote must be sent by its voter")
        current = self._current
        if current is None or vote.header_digest != current.header.digest():
            if vote.origin == self.name and current is not None and vote.round < current.header.round:
                self.counters["vote_stale"] += 1  # for an older header of ours: harmless
                return
            if current is not None and await self._vote_equivocation(vote, current):
                raise Invalid("equivocation", "a second vote for another header of ours")
            self.counters["vote_unexpected"] += 1
            raise Invalid("unexpected_vote", "vote for a header we did not send")
        try:
            check_vote(vote, current.header, self.committee)
        except Invalid as exc:
            self.counters[f"vote_{exc.reason}"] += 1
            raise
        certificate = current.append(vote)
        if certificate is not None:
            self.counters["certificates_formed"] += 1
            self.certificate_latencies.append(self._clock.now() - self._proposed_at)
            self.sends.track(certificate.header.round, await self._network.broadcast(certificate))
            await self.accept_certificate(certificate)

    async def _vote_equivocation(self, vote: Vote, current: VotesAggregator) -> bool:
        """``vote`` is for another header of our current round, by a voter who voted for
        ours: with a valid signature, that voter signed two conflicting votes. Verified
        only then (what a vote for our header costs anyway), and once per voter and round."""
        header = current.header
        held = current.vote_of(vote.author)
        if (held is None or vote.origin != self.name or vote.round != header.round
                or self.evidence.known(vote.author, vote.round, VOTE, self.name)
                or not crypto.verify(vote.author, vote.digest(), vote.signature)):
            return False
        self.counters["vote_equivocation"] += 1
        await self.evidence.votes(held, vote)
        return True


    # -- certificates --------------------------------------------------------------------

    async def handle_certificate(self, certificate: Certificate, sender: bytes | None) -> None:
        """A certificate from a peer (or a fetch): see :class:`CertificateAcceptance`."""
        await self.certificates.handle_certificate(certificate, sender)

    async def accept_certificate(self, certificate: Certificate, hint: bytes | None = None) -> None:
        await self.certificates.accept_certificate(certificate, hint)

    async def accept_page(self, certificates: list[Certificate]) -> None:
        await self.certificates.accept_page(certificates)


    @property
    def frontier(self) -> int:
        """The highest round we know the committee has reached."""
        return max(self.dag.highest_round, self.highest_seen)


    def parents_of(self, round_: int) -> tuple[bytes, ...]:
        return self.certificates.parents_of(round_)

    def certificates_coming(self, round_: int) -> int:
        """Authorities whose certificate of ``round_`` we hold or expect: we hold it, or
        voted for their header (so it is being certified, or was)."""
        held = self.dag.round(round_)
        return sum(1 for author in self.committee.authorities
                   if author in held or (author, round_) in self.voted)

    # -- payload ---------------------------------------------------------------------------

    async def batch_available(self, digest: bytes, worker_id: int,
                              also: Sequence[tuple[str, bytes, bytes | None]] = ()) -> None:
        """A worker stored a batch (ours or another authority's); ``also`` are ops to commit
        atomically with its payload record. Returns once that record is durable (with
        ``also``, durable against power loss too: the worker forgets a batch of ours once
        we acknowledge its report).

        Parked headers are retried while the record is being written, not after: a vote
        needs the batch stored at our worker, which it is, not our record of it (after a
        crash we would only ask the worker again, and it answers from its store). So a
        store commit is off the path from a peer's batch to our vote."""
        if not self.payload.stored(digest, worker_id):
            return
        record = asyncio.ensure_future(self._store.write(
            [("payload", payload_key(digest, worker_id), b""), *also], durable=bool(also)))
        try:
            if self._parked_headers:
                await self.retry_parked_headers()
        finally:
            await record

    # -- garbage collection ------------------------------------------------------------------

    async def garbage_collect(self, gc_round: int) -> None:
        """Drop rounds <= ``gc_round``: memory, parked work, and their reliable sends."""
        if gc_round <= self.gc_round:
            return
        self.certificates.garbage_collect(gc_round)
        self.sends.cancel_through(gc_round)
        self.voted = {k: v for k, v in self.voted.items() if k[1] > gc_round}
        self.payload.garbage_collect(gc_round)
        self._revoted = {k for k in self._revoted if k[1] > gc_round}
        self.evidence.garbage_collect(gc_round)
        self._parked_headers.drop_through(gc_round)
        self.spawn_send(self._network.to_workers(Cleanup(gc_round)), None)

    # -- plumbing ----------------------------------------------------------------------------

    def spawn_send(self, coroutine: Any, round_: int | None) -> None:
        """Start a network call from sync code (see :meth:`SendTracker.spawn`)."""
        self.sends.spawn(coroutine, round_)

    async def close(self) -> None:
        self.sends.close()

