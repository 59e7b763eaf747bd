"""The in-memory certificate DAG of a primary: round -> author -> certificate.

It holds what validation and consensus need (rounds above the GC round) and nothing else;
the store holds everything durably. Insertion order is causal by construction: the core
inserts a certificate only after all its parents are present (or below the GC round).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from narwhal.messages import Certificate

__all__ = ["Dag"]


class Dag:
    def __init__(self, genesis: Iterable[Certificate] = ()) -> None:
        self._rounds: dict[int, dict[bytes, Certificate]] = {}
        self._by_digest: dict[bytes, Certificate] = {}
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
        self._by_digest[certificate.digest()] = certificate
        self.highest_round = max(self.highest_round, header.round)
        return True

    def prune_below(self, round_: int) -> int:
        """Forget every round < ``round_``; returns how many certificates were dropped."""
        dropped = 0
        for r in [r for r in self._rounds if r < round_]:
            for certificate in self._rounds.pop(r).values():
                self._by_digest.pop(certificate.digest(), None)
                dropped += 1
        return dropped

    def rounds(self) -> Iterator[int]:
        return iter(sorted(self._rounds))
