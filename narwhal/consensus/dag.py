"""The in-memory certificate DAG of a primary: round -> author -> certificate.

It holds what validation and consensus need (rounds above the GC round) and nothing else;
the store holds everything durably. Insertion order is causal by construction: the core
inserts a certificate only after all its ancestors (parents and weak links) are present
or below the GC round (:meth:`missing`).

It also keeps the certificates no other certificate in it references yet
(:meth:`unreferenced`): the candidates for a proposer's weak links. A certificate leaves
that set when a child arrives, so keeping it costs one dict operation per edge.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from narwhal.messages import Certificate, Header

__all__ = ["Dag"]


class Dag:
    def __init__(self, genesis: Iterable[Certificate] = ()) -> None:
        self._rounds: dict[int, dict[bytes, Certificate]] = {}
        self._by_digest: dict[bytes, Certificate] = {}
        self._unreferenced: dict[bytes, Certificate] = {}
        self.highest_round = 0
        for certificate in genesis:
            self.insert(certificate)

    def __contains__(self, digest: bytes) -> bool:
        return digest in self._by_digest

    def __len__(self) -> int:
        return len(self._by_digest)

    def get(self, digest: bytes) -> Certificate | None:
        return self._by_digest.get(digest)

    def round(self, round_: int) -> dict[bytes, Certificate]:
        """author -> certificate at ``round_`` (empty if none)."""
        return self._rounds.get(round_, {})

    def has_author_round(self, author: bytes, round_: int) -> bool:
        return author in self._rounds.get(round_, {})

    def insert(self, certificate: Certificate) -> bool:
        """Add a certificate; False if it (or another of its author at its round) is there."""
        header = certificate.header
        by_author = self._rounds.setdefault(header.round, {})
        if header.author in by_author:
            return False
        by_author[header.author] = certificate
        digest = certificate.digest()
        self._by_digest[digest] = certificate
        for parent in header.parents:
            self._unreferenced.pop(parent, None)
        for linked, _ in header.weak_links:
            self._unreferenced.pop(linked, None)
        self._unreferenced[digest] = certificate
        self.highest_round = max(self.highest_round, header.round)
        return True

    def prune_below(self, round_: int) -> int:
        """Forget every round < ``round_``; returns how many certificates were dropped."""
        dropped = 0
        for r in [r for r in self._rounds if r < round_]:
            for certificate in self._rounds.pop(r).values():
                self._by_digest.pop(certificate.digest(), None)
                self._unreferenced.pop(certificate.digest(), None)
                dropped += 1
        return dropped

    def rounds(self) -> Iterator[int]:
        return iter(sorted(self._rounds))

    def missing(self, header: Header, gc_round: int) -> list[tuple[bytes, int]]:
        """The ancestors ``header`` names that we lack, as (digest, round): its parents and
        its weak links, except those at or below ``gc_round`` (collected: never waited for).
        Genesis is never collected here, so a round-1 header's parents are always checked."""
        parents_round = header.round - 1
        wanted = [] if 0 < parents_round <= gc_round else [
            (parent, parents_round) for parent in header.parents if parent not in self._by_digest]
        wanted += [(linked, round_) for linked, round_ in header.weak_links
                   if round_ > gc_round and linked not in self._by_digest]
        return wanted

    def unreferenced(self, below_round: int) -> list[Certificate]:
        """The certificates of rounds 1 .. ``below_round - 1`` that no certificate here
        references, oldest first (then by author): what a header of round
        ``below_round + 1`` may weakly link."""
        candidates = [c for c in self._unreferenced.values() if 0 < c.header.round < below_round]
        return sorted(candidates, key=lambda c: (c.header.round, c.header.author))
