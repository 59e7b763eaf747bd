"""The primary's core: validate headers and vote, aggregate votes into certificates,
accept certificates in causal order, and garbage-collect old rounds.

Rules kept here (``docs/protocol.md``, "Primary"):

- **Vote at most once per (author, round), for ever.** The choice is reserved in memory
  *before* the first ``await`` (so two concurrent deliveries cannot both vote) and written
  durably before the vote leaves. A different header for an already-voted (author, round)
  is equivocation: counted, never voted for, and both signed headers are kept once as
  evidence (:mod:`narwhal.primary.evidence`), as are two certificates of one (author,
  round) and a voter's two votes for different headers of ours.
- **Vote only for valid, complete headers**: member author who sent it himself, signature,
  round above the GC round, parents that are certificates of the previous round carrying a
  quorum of stake (fetched when missing), payload stored at our workers (asked to sync when
  missing). Incomplete headers are parked, bounded, and retried when what they miss arrives.
- **Accept certificates only after their parents** (or when those are below the GC round),
  so the DAG and consensus see certificates in causal order. Missing ancestors are
  fetched; the certificate is parked meanwhile.
- A quorum of round-r certificates gives the proposer its parents for round r+1.
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
from narwhal.primary.aggregators import CertificatesAggregator, VotesAggregator, signed_vote
from narwhal.primary.checks import Invalid, check_certificate, check_header, check_vote
from narwhal.primary.evidence import VOTE, EvidenceRecorder
from narwhal.primary.parked import Parked, ParkedHeaders
from narwhal.primary.payload import PayloadAvailability, payload_key
from narwhal.primary.sends import SendTracker

__all__ = ["Core", "round_key", "vote_key"]

log = logging.getLogger(__name__)

#: Headers waiting for parents or payload, shared equally by the authorities (each author's
#: oldest are dropped beyond its share: :mod:`narwhal.primary.parked`).
MAX_PARKED_HEADERS = 1_000
#: Certificates waiting for ancestors. Beyond it the oldest are dropped and refetched later.
MAX_PARKED_CERTIFICATES = 20_000


def round_key(round_: int, author: bytes = b"") -> bytes:
    """Store key ordered by round: 8-byte big-endian round, then the author."""
    return round_.to_bytes(8, "big") + author


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
        self._on_parents = on_parents
        self._on_certificate = on_certificate
        self._on_far_ahead = on_far_ahead
        self._worker_ids = tuple(worker_ids)
        self.dag = Dag(Certificate.genesis(committee.authorities_sorted()))
        self.gc_round = 0
        self.voted: dict[tuple[bytes, int], bytes] = {}
        #: Which batches our workers hold; asks them for the others.
        self.payload = PayloadAvailability(
            store=store, clock=clock, frontier=lambda: self.frontier,
            synchronize=lambda worker_id, message, round_: self.spawn_send(
                network.to_workers(message, [worker_id]), round_))
        self._current: VotesAggregator | None = None
        self._aggregators: dict[int, CertificatesAggregator] = {}
        self._parked_headers = ParkedHeaders(
            per_author=max(1, MAX_PARKED_HEADERS // len(committee.authorities)))
        self._parked_certificates: dict[bytes, Certificate] = {}
        #: Missing parent digest -> digests of the parked certificates waiting for it.
        self._waiting_on: dict[bytes, set[bytes]] = {}
        self._accepting: set[bytes] = set()
        #: Our sends in flight, by round: cancelled at GC (narwhal/primary/sends.py).
        self.sends = SendTracker()
        self._revoted: set[tuple[bytes, int]] = set()
        #: Rejections and notable events by reason (metrics).
        self.counters: Counter[str] = Counter()
        self._proposed_at = 0.0
        #: Highest round of any valid certificate received, even one still waiting for its
        #: ancestors: how far the committee is while we catch up. Certificates only: a
        #: header is one signature, and a lone faulty author must not move our frontier.
        self.highest_seen = 0
        #: Seconds from proposing each of our recent headers to its certificate (metrics).
        self.certificate_latencies: collections.deque[float] = collections.deque(maxlen=200)
        #: Proofs of equivocation, kept in the store (``restore`` loads what it holds).
        self.evidence = EvidenceRecorder(store)

    # -- recovery ------------------------------------------------------------------------

    def restore(self, *, certificates: Iterable[Certificate], votes: Iterable[tuple[bytes, int, bytes]],
                available: Iterable[tuple[bytes, int]], gc_round: int) -> None:
        """Rebuild memory from the store after a restart (certificates in round order)."""
        self.gc_round = gc_round
        self.evidence.load()
        for author, round_, digest in votes:
            self.voted[(author, round_)] = digest
        for certificate in sorted(certificates, key=lambda c: c.header.round):
            if certificate.header.round > gc_round and self.dag.insert(certificate):
                self._count_parent(certificate)
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

    def _missing_parents(self, header: Header) -> list[bytes]:
        if header.round - 1 <= self.gc_round and header.round > 1:
            return []  # parents already collected: nothing to check against
        return [p for p in header.parents if p not in self.dag]

    def _check_parents(self, header: Header, parents: list[Certificate | None]) -> None:
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

    async def _park_header(self, header: Header, missing_parents: list[bytes],
                           missing_payload: list[tuple[bytes, int]]) -> None:
        parked = self._parked_headers.add(header)
        if parked is Parked.CONFLICT:
            await self._header_equivocation(header, self._parked_headers.get(header.author, header.round))
            return
        if parked is Parked.ADDED:
            self.counters["header_parked"] += 1
            self.counters["header_parked_dropped"] = self._parked_headers.dropped
        if missing_parents:
            self._fetch(missing_parents, header.author, header.round - 1)
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

    async def _certificate_equivocation(self, held: Certificate, other: Certificate) -> None:
        """Two valid certificates of one (author, round): its author signed two headers,
        and every voter in both quorums (at least one with < 1/3 faulty stake: impossible
        unless more are faulty) signed two votes."""
        self.counters["certificate_conflict"] += 1
        await self.evidence.headers(held.header, other.header)
        theirs = dict(other.votes)
        for voter, signature in held.votes:
            if voter in theirs:
                await self.evidence.votes(signed_vote(held.header, voter, signature),
                                          signed_vote(other.header, voter, theirs[voter]))

    # -- certificates --------------------------------------------------------------------

    async def handle_certificate(self, certificate: Certificate, sender: bytes | None) -> None:
        """A certificate from a peer (or a fetch): validate, then accept in causal order."""
        digest = certificate.digest()
        if digest in self.dag or digest in self._accepting:
            return
        if digest in self._parked_certificates and certificate.header.round - 1 > self.gc_round \
                and not all(p in self.dag for p in certificate.header.parents):
            return  # still waiting for a parent (one parked with every parent in, or with its
            # parents below a GC round that jumped past them, is taken again)
        if certificate.header.round <= self.gc_round:
            self.counters["certificate_too_old"] += 1
            return
        try:
            check_certificate(certificate, self.committee, gc_round=self.gc_round,
                              highest_round=self.dag.highest_round)
        except Invalid as exc:
            self.counters[f"certificate_{exc.reason}"] += 1
            if exc.reason == "too_far_ahead":
                self._note_far_ahead(certificate)
            raise
        self.highest_seen = max(self.highest_seen, certificate.header.round)
        await self.accept_certificate(certificate, sender)

    def _note_far_ahead(self, certificate: Certificate) -> None:
        """A certificate too far ahead to accept: if it is otherwise valid, a quorum signed
        it, so the committee really is there and we are far behind (a long outage). It is
        still refused (we hold nothing for its round), but it moves our frontier and starts
        a catch-up by round. Without this a node that was down for MAX_ROUNDS_AHEAD rounds
        refused everything and never learnt it was behind. Each such check costs the
        signatures once per higher round: a peer cannot make us repeat it for free."""
        if certificate.header.round <= self.highest_seen:
            return
        try:
            check_certificate(certificate, self.committee, gc_round=self.gc_round,
                              highest_round=certificate.header.round)
        except Invalid:
            return
        self.highest_seen = certificate.header.round
        self.counters["far_behind"] += 1
        self._on_far_ahead()

    async def accept_certificate(self, certificate: Certificate, hint: bytes | None = None) -> None:
        """Store and insert ``certificate`` once its parents are in; park it otherwise."""
        header = certificate.header
        missing = [] if header.round - 1 <= self.gc_round else [
            p for p in header.parents if p not in self.dag]
        if missing:
            digest = certificate.digest()
            self._parked_certificates[digest] = certificate
            for parent in missing:
                self._waiting_on.setdefault(parent, set()).add(digest)
            while len(self._parked_certificates) > MAX_PARKED_CERTIFICATES:
                self._parked_certificates.pop(next(iter(self._parked_certificates)))
                self.counters["certificate_parked_dropped"] += 1
            self._fetch(missing, hint or header.author, header.round - 1)
            return
        await self._insert(certificate)
        await self._release_children(certificate.digest())
        await self.retry_parked_headers()

    async def _insert(self, certificate: Certificate) -> None:
        digest = certificate.digest()
        header = certificate.header
        if digest in self._accepting or digest in self.dag:
            return
        if self.dag.has_author_round(header.author, header.round):
            self._parked_certificates.pop(digest, None)
            await self._certificate_equivocation(self.dag.round(header.round)[header.author],
                                                 certificate)
            return
        self._accepting.add(digest)
        try:
            await self._store.write(_certificate_rows(certificate))
        finally:
            self._accepting.discard(digest)
        self._stored(certificate)

    async def accept_page(self, certificates: list[Certificate]) -> None:
        """A bulk page of certificates (catching up, :meth:`CertificateFetcher._take_page`):
        those whose parents are in the DAG or earlier in the page are checked like any
        other, written in **one** store write and inserted in round order; the others take
        the normal path. One write per certificate made a far-behind node wait for ~1,000
        store commits per page: about 5 ms each, most of its catch-up time."""
        ready: list[Certificate] = []
        rest: list[Certificate] = []
        in_page: set[bytes] = set()
        taken: set[tuple[bytes, int]] = set()
        for certificate in sorted(certificates, key=lambda c: c.header.round):
            header, digest = certificate.header, certificate.digest()
            if digest in self.dag or digest in self._accepting or header.round <= self.gc_round:
                continue
            parents_in = header.round - 1 <= self.gc_round or all(
                p in self.dag or p in in_page for p in header.parents)
            slot = (header.author, header.round)
            if not parents_in or slot in taken or self.dag.has_author_round(*slot):
                rest.append(certificate)
                continue
            try:
                check_certificate(certificate, self.committee, gc_round=self.gc_round, highest_round=max(
                    self.dag.highest_round, ready[-1].header.round if ready else 0))
            except Invalid as exc:
                self.counters[f"certificate_{exc.reason}"] += 1
                log.info("fetched certificate %s rejected: %s", digest.hex()[:16], exc)
                continue
            ready.append(certificate)
            in_page.add(digest)
            taken.add(slot)
            self.highest_seen = max(self.highest_seen, header.round)
        if ready:
            self._accepting.update(in_page)
            try:
                await self._store.write([row for c in ready for row in _certificate_rows(c)])
            finally:
                self._accepting.difference_update(in_page)
            for certificate in ready:
                self._stored(certificate)
            for certificate in ready:
                await self._release_children(certificate.digest())
            await self.retry_parked_headers()
        for certificate in rest:
            try:
                await self.handle_certificate(certificate, None)
            except Invalid as exc:
                log.info("fetched certificate %s rejected: %s", certificate.digest().hex()[:16], exc)

    def _stored(self, certificate: Certificate) -> None:
        """``certificate`` is in the store: into the DAG, then consensus and the rest."""
        header = certificate.header
        self._parked_certificates.pop(certificate.digest(), None)
        if header.round <= self.gc_round or not self.dag.insert(certificate):
            return
        self.counters["certificates_accepted"] += 1
        missing_payload = self.payload.missing(header.payload)
        if missing_payload and header.author != self.name:
            self.payload.request(header.author, missing_payload, header.round)  # catch up on batches
        self._count_parent(certificate)
        self._on_certificate(certificate)

    def _count_parent(self, certificate: Certificate) -> None:
        round_ = certificate.header.round
        aggregator = self._aggregators.setdefault(round_, CertificatesAggregator(self.committee))
        parents = aggregator.append(certificate)
        if parents is not None:
            self._on_parents(round_, parents)

    async def _release_children(self, digest: bytes) -> None:
        """``digest`` was inserted: insert the parked certificates it completes, and
        theirs in turn. Indexed by missing parent, so each insertion looks only at the
        certificates waiting for it (a catch-up parks thousands)."""
        inserted = [digest]
        while inserted:
            for child_digest in self._waiting_on.pop(inserted.pop(), ()):
                child = self._parked_certificates.get(child_digest)
                if child is None:
                    continue  # already inserted, or dropped
                if child.header.round <= self.gc_round:
                    del self._parked_certificates[child_digest]
                elif all(p in self.dag for p in child.header.parents):
                    # parked until stored: if the write fails (disk full), it stays parked
                    # and is taken when it comes again (a child of it makes us fetch it)
                    await self._insert(child)
                    if child_digest in self.dag:
                        inserted.append(child_digest)

    @property
    def frontier(self) -> int:
        """The highest round we know the committee has reached."""
        return max(self.dag.highest_round, self.highest_seen)

    def parents_of(self, round_: int) -> tuple[bytes, ...]:
        aggregator = self._aggregators.get(round_)
        return aggregator.digests() if aggregator is not None else ()

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
        self.gc_round = gc_round
        self.dag.prune_below(gc_round + 1)
        for round_ in [r for r in self._aggregators if r <= gc_round]:
            del self._aggregators[round_]
        self.sends.cancel_through(gc_round)
        self.voted = {k: v for k, v in self.voted.items() if k[1] > gc_round}
        self.payload.garbage_collect(gc_round)
        self._revoted = {k for k in self._revoted if k[1] > gc_round}
        self.evidence.garbage_collect(gc_round)
        self._parked_headers.drop_through(gc_round)
        for digest in [d for d, c in self._parked_certificates.items() if c.header.round <= gc_round]:
            del self._parked_certificates[digest]
        self._waiting_on = {}
        for digest, certificate in self._parked_certificates.items():
            for parent in certificate.header.parents:
                if parent not in self.dag:
                    self._waiting_on.setdefault(parent, set()).add(digest)
        self.spawn_send(self._network.to_workers(Cleanup(gc_round)), None)

    # -- plumbing ----------------------------------------------------------------------------

    def spawn_send(self, coroutine: Any, round_: int | None) -> None:
        """Start a network call from sync code (see :meth:`SendTracker.spawn`)."""
        self.sends.spawn(coroutine, round_)

    async def close(self) -> None:
        self.sends.close()


def _certificate_rows(certificate: Certificate) -> list[tuple[str, bytes, bytes | None]]:
    """The store rows of one certificate: its body, and its (round, author) index."""
    header, digest = certificate.header, certificate.digest()
    return [("certificates", digest, messages.encode(certificate)),
            ("certificates_by_round", round_key(header.round, header.author), digest)]
