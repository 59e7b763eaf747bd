"""Stake counting: votes into a certificate, certificates into the next round's parents.

Both are pure and small on purpose (asonnino/narwhal's quorum logic is ~90 lines): they
answer "do we have 2f+1 stake of distinct, already-validated signers yet?" exactly once.
Validation (membership, signatures) happens before anything is appended here.
"""

from __future__ import annotations

from typing import Protocol

from narwhal.messages import Certificate, Header, Vote

__all__ = ["CertificatesAggregator", "VotesAggregator", "signed_vote"]


def signed_vote(header: Header, voter: bytes, signature: bytes) -> Vote:
    """The vote ``voter`` signed for ``header`` (as a certificate or an aggregator keeps it:
    the voter and the signature)."""
    return Vote(header.digest(), header.round, header.author, voter, signature)


class Stakes(Protocol):
    def stake(self, name: bytes) -> int: ...

    def quorum_threshold(self) -> int: ...


class VotesAggregator:
    """Collects votes for one of our headers; returns its certificate once, at quorum."""

    def __init__(self, header: Header, committee: Stakes) -> None:
        self.header = header
        self._committee = committee
        self._votes: dict[bytes, bytes] = {}
        self._weight = 0
        self._done = False

    @property
    def weight(self) -> int:
        return self._weight

    def vote_of(self, voter: bytes) -> Vote | None:
        """The validated vote ``voter`` cast for our header, if any."""
        signature = self._votes.get(voter)
        return None if signature is None else signed_vote(self.header, voter, signature)

    def append(self, vote: Vote) -> Certificate | None:
        """Add a validated vote; the certificate when this vote reaches the quorum.

        A second vote from the same voter is ignored (it adds no stake)."""
        if vote.author in self._votes:
            return None
        self._votes[vote.author] = vote.signature
        self._weight += self._committee.stake(vote.author)
        if self._done or self._weight < self._committee.quorum_threshold():
            return None
        self._done = True
        return Certificate(self.header, tuple(sorted(self._votes.items())))


class CertificatesAggregator:
    """Collects one round's certificates; returns the parent digests once, at quorum."""

    def __init__(self, committee: Stakes) -> None:
        self._committee = committee
        self._digests: dict[bytes, bytes] = {}  # author -> certificate digest
        self._weight = 0
        self._done = False

    def append(self, certificate: Certificate) -> tuple[bytes, ...] | None:
        author = certificate.header.author
        if author in self._digests:
            return None
        self._digests[author] = certificate.digest()
        self._weight += self._committee.stake(author)
        if self._done or self._weight < self._committee.quorum_threshold():
            return None
        self._done = True
        return tuple(sorted(self._digests.values()))

    def digests(self) -> tuple[bytes, ...]:
        """Every certificate digest collected so far (the proposer may use more than 2f+1)."""
        return tuple(sorted(self._digests.values()))
