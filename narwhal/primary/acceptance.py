"""Certificate acceptance: certificates into the DAG in causal order, and nothing else.

Rules (``docs/protocol.md``, "Primary"):

- **Accept a certificate only after its ancestors**, parents and weak links (or when those
  are below the GC round), so the DAG and consensus see certificates in causal order. A certificate missing parents
  is parked, indexed by what it misses, and its ancestors are fetched; each insertion
  releases the parked certificates it completes.
- A certificate is **stored before it is inserted**: after a crash the DAG is rebuilt from
  the store, never ahead of it.
- **Two certificates of one (author, round)** are kept as evidence (both headers, and the
  two votes of every voter in both quorums), never both inserted.
- A quorum of round-r certificates gives the proposer its parents for round r+1.
- A valid certificate too far ahead to accept still tells us how far the committee is
  (``highest_seen``): a node back from a long outage learns it is behind.

Split from the core (:mod:`narwhal.primary.core`), which votes: the two share the DAG, the
GC round and the evidence recorder, and the core is told when a certificate was inserted
(its parked headers may now be complete).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from narwhal import messages
from narwhal.consensus.dag import Dag
from narwhal.messages import Certificate
from narwhal.ports import StoreLike
from narwhal.primary.aggregators import CertificatesAggregator, signed_vote
from narwhal.primary.checks import Invalid, check_certificate
from narwhal.primary.evidence import EvidenceRecorder
from narwhal.primary.payload import PayloadAvailability

__all__ = ["MAX_PARKED_CERTIFICATES", "CertificateAcceptance", "fetch_each_round", "round_key"]

log = logging.getLogger(__name__)

#: Certificates waiting for ancestors. Beyond it the oldest are dropped and refetched later.
MAX_PARKED_CERTIFICATES = 20_000


def round_key(round_: int, author: bytes = b"") -> bytes:
    """Store key ordered by round: 8-byte big-endian round, then the author."""
    return round_.to_bytes(8, "big") + author


def fetch_each_round(fetch: Callable[[Iterable[bytes], bytes | None, int], None],
                     missing: Iterable[tuple[bytes, int]], source: bytes | None) -> None:
    """Want the ``missing`` (digest, round) ancestors, one call per round (the fetcher
    drops a want once the GC round passes its round)."""
    by_round: dict[int, list[bytes]] = {}
    for digest, round_ in missing:
        by_round.setdefault(round_, []).append(digest)
    for round_, digests in sorted(by_round.items()):
        fetch(digests, source, round_)


class CertificateAcceptance:
    def __init__(
        self,
        *,
        name: bytes,
        committee: Any,
        store: StoreLike,
        dag: Dag,
        counters: Counter[str],
        evidence: EvidenceRecorder,
        payload: PayloadAvailability,
        fetch_certificates: Callable[[Iterable[bytes], bytes | None, int], None],
        on_parents: Callable[[int, tuple[bytes, ...]], None],
        on_certificate: Callable[[Certificate], None],
        on_far_ahead: Callable[[], None],
        on_inserted: Callable[[], Awaitable[None]],
    ) -> None:
        """``on_inserted()`` runs after certificates were inserted (the core retries the
        headers it parked for missing parents); the other callbacks are the core's."""
        self.name = name
        self.committee = committee
        self._store = store
        self.dag = dag
        self.counters = counters
        self._evidence = evidence
        self._payload = payload
        self._fetch = fetch_certificates
        self._on_parents = on_parents
        self._on_certificate = on_certificate
        self._on_far_ahead = on_far_ahead
        self._on_inserted = on_inserted
        #: Rounds <= this are garbage-collected: nothing of them is accepted or kept.
        self.gc_round = 0
        #: Highest round of any valid certificate received, even one still waiting for its
        #: ancestors: how far the committee is while we catch up. Certificates only: a
        #: header is one signature, and a lone faulty author must not move our frontier.
        self.highest_seen = 0
        self._aggregators: dict[int, CertificatesAggregator] = {}
        self._parked: dict[bytes, Certificate] = {}
        #: Missing parent digest -> digests of the parked certificates waiting for it.
        self._waiting_on: dict[bytes, set[bytes]] = {}
        self._accepting: set[bytes] = set()

    def restore(self, certificates: Iterable[Certificate], gc_round: int) -> None:
        """After a restart: the stored certificates above ``gc_round``, in round order."""
        self.gc_round = gc_round
        for certificate in sorted(certificates, key=lambda c: c.header.round):
            if certificate.header.round > gc_round and self.dag.insert(certificate):
                self._count_parent(certificate)

    async def handle_certificate(self, certificate: Certificate, sender: bytes | None) -> None:
        """A certificate from a peer (or a fetch): validate, then accept in causal order."""
        digest = certificate.digest()
        if digest in self.dag or digest in self._accepting:
            return
        if digest in self._parked and self.dag.missing(certificate.header, self.gc_round):
            return  # still waiting for an ancestor (one parked with every ancestor in, or with
            # them below a GC round that jumped past them, is taken again)
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
        """Store and insert ``certificate`` once its ancestors are in; park it otherwise."""
        header = certificate.header
        missing = self.dag.missing(header, self.gc_round)
        if missing:
            digest = certificate.digest()
            self._parked[digest] = certificate
            for ancestor, _ in missing:
                self._waiting_on.setdefault(ancestor, set()).add(digest)
            while len(self._parked) > MAX_PARKED_CERTIFICATES:
                self._parked.pop(next(iter(self._parked)))
                self.counters["certificate_parked_dropped"] += 1
            fetch_each_round(self._fetch, missing, hint or header.author)
            return
        await self._insert(certificate)
        await self._release_children(certificate.digest())
        await self._on_inserted()

    async def _insert(self, certificate: Certificate) -> None:
        digest = certificate.digest()
        header = certificate.header
        if digest in self._accepting or digest in self.dag:
            return
        if self.dag.has_author_round(header.author, header.round):
            self._parked.pop(digest, None)
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
            parents_in = all(d in in_page for d, _ in self.dag.missing(header, self.gc_round))
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
            await self._on_inserted()
        for certificate in rest:
            try:
                await self.handle_certificate(certificate, None)
            except Invalid as exc:
                log.info("fetched certificate %s rejected: %s", certificate.digest().hex()[:16], exc)

    def _stored(self, certificate: Certificate) -> None:
        """``certificate`` is in the store: into the DAG, then consensus and the rest."""
        header = certificate.header
        self._parked.pop(certificate.digest(), None)
        if header.round <= self.gc_round or not self.dag.insert(certificate):
            return
        self.counters["certificates_accepted"] += 1
        missing_payload = self._payload.missing(header.payload)
        if missing_payload and header.author != self.name:
            self._payload.request(header.author, missing_payload, header.round)  # catch up on batches
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
                child = self._parked.get(child_digest)
                if child is None:
                    continue  # already inserted, or dropped
                if child.header.round <= self.gc_round:
                    del self._parked[child_digest]
                elif not self.dag.missing(child.header, self.gc_round):
                    # parked until stored: if the write fails (disk full), it stays parked
                    # and is taken when it comes again (a child of it makes us fetch it)
                    await self._insert(child)
                    if child_digest in self.dag:
                        inserted.append(child_digest)

    async def _certificate_equivocation(self, held: Certificate, other: Certificate) -> None:
        """Two valid certificates of one (author, round): its author signed two headers,
        and every voter in both quorums (at least one with < 1/3 faulty stake: impossible
        unless more are faulty) signed two votes."""
        self.counters["certificate_conflict"] += 1
        await self._evidence.headers(held.header, other.header)
        theirs = dict(other.votes)
        for voter, signature in held.votes:
            if voter in theirs:
                await self._evidence.votes(signed_vote(held.header, voter, signature),
                                          signed_vote(other.header, voter, theirs[voter]))

    def parents_of(self, round_: int) -> tuple[bytes, ...]:
        aggregator = self._aggregators.get(round_)
        return aggregator.digests() if aggregator is not None else ()

    def garbage_collect(self, gc_round: int) -> None:
        """Forget rounds <= ``gc_round`` (the caller checked it is a new one): the DAG, the
        parent counts and the parked certificates."""
        self.gc_round = gc_round
        self.dag.prune_below(gc_round + 1)
        for round_ in [r for r in self._aggregators if r <= gc_round]:
            del self._aggregators[round_]
        for digest in [d for d, c in self._parked.items() if c.header.round <= gc_round]:
            del self._parked[digest]
        self._waiting_on = {}
        for digest, certificate in self._parked.items():
            for ancestor, _ in self.dag.missing(certificate.header, gc_round):
                self._waiting_on.setdefault(ancestor, set()).add(digest)


def _certificate_rows(certificate: Certificate) -> list[tuple[str, bytes, bytes | None]]:
    """The store rows of one certificate: its body, and its (round, author) index."""
    header, digest = certificate.header, certificate.digest()
    return [("certificates", digest, messages.encode(certificate)),
            ("certificates_by_round", round_key(header.round, header.author), digest)]
