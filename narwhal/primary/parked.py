"""Headers waiting for their parents or payload, bounded per author.

Why per author (issue 12): one global first-in-first-out list let a single Byzantine
author, sending many distinct valid headers, push out the *honest* headers parked before
them — headers we had already acknowledged, which their authors never send again, so we
never voted for them. Here each author has its own share of the space, and what one author
sends can only push out that author's own headers:

- **one header per (author, round)**: an honest author makes exactly one; a different
  header for a parked (author, round) is equivocation, refused (the caller counts it);
- **at most ``per_author`` headers per author**: beyond it that author's oldest (lowest
  round) header is dropped; a dropped honest header is not lost for good, its certificate
  still arrives through certificate processing.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterator

from narwhal.messages import Header

__all__ = ["Parked", "ParkedHeaders"]


class Parked(enum.Enum):
    ADDED = "added"
    PRESENT = "present"  # this very header is already parked
    CONFLICT = "conflict"  # another header of the same author and round is parked


class ParkedHeaders:
    def __init__(self, per_author: int) -> None:
        self.per_author = per_author
        self._by_key: dict[tuple[bytes, int], Header] = {}
        self._count: Counter[bytes] = Counter()
        #: Headers dropped to keep an author within its share.
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._by_key)

    def __iter__(self) -> Iterator[Header]:
        return iter(list(self._by_key.values()))

    def get(self, author: bytes, round_: int) -> Header | None:
        return self._by_key.get((author, round_))

    def holds(self, header: Header) -> bool:
        parked = self._by_key.get((header.author, header.round))
        return parked is not None and parked.digest() == header.digest()

    def add(self, header: Header) -> Parked:
        key = (header.author, header.round)
        parked = self._by_key.get(key)
        if parked is not None:
            return Parked.PRESENT if parked.digest() == header.digest() else Parked.CONFLICT
        self._by_key[key] = header
        self._count[header.author] += 1
        if self._count[header.author] > self.per_author:
            oldest = min(r for a, r in self._by_key if a == header.author)
            self._discard((header.author, oldest))
            self.dropped += 1
        return Parked.ADDED

    def remove(self, header: Header) -> None:
        """Forget ``header`` (voted for, or invalid); another header of its key stays."""
        if self.holds(header):
            self._discard((header.author, header.round))

    def drop_through(self, round_: int) -> None:
        """Forget every header of rounds <= ``round_`` (garbage collection)."""
        for key in [k for k in self._by_key if k[1] <= round_]:
            self._discard(key)

    def _discard(self, key: tuple[bytes, int]) -> None:
        del self._by_key[key]
        self._count[key[0]] -= 1
        if not self._count[key[0]]:
            del self._count[key[0]]
