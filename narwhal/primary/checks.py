"""Validation of headers, votes and certificates: everything a primary checks *before* a
message may change its state.

Each check raises :class:`~narwhal.errors.RequestRejected` with code ``INVALID`` (the peer
sent something wrong: the rpc layer answers with that error and counts it) and a
``reason`` key that the caller counts in its metrics. The checks are pure functions of
the message, the committee and the node's GC round: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from narwhal import crypto
from narwhal.errors import ErrorCode, RequestRejected
from narwhal.messages import Certificate, Header, Vote

__all__ = ["MAX_ROUNDS_AHEAD", "Invalid", "check_certificate", "check_header", "check_vote"]

#: Headers and certificates more than this many rounds ahead of the highest round we know
#: are refused: a peer must not make us fetch ancestors or hold state for far-future rounds.
MAX_ROUNDS_AHEAD = 1_000


class Committee(Protocol):
    @property
    def authorities(self) -> Mapping[bytes, Any]: ...

    def stake(self, name: bytes) -> int: ...

    def quorum_threshold(self) -> int: ...


class Invalid(RequestRejected):
    """A message that failed validation; ``reason`` is a short metrics label."""

    def __init__(self, reason: str, text: str) -> None:
        super().__init__(ErrorCode.INVALID, text)
        self.reason = reason


def _member(committee: Committee, name: bytes, what: str) -> None:
    if committee.stake(name) <= 0:  # the committee gives non-members no stake
        raise Invalid("non_member", f"{what} {name.hex()[:16]} is not in the committee")


def check_header(header: Header, committee: Committee, *, gc_round: int, highest_round: int,
                 sender: bytes | None = None) -> None:
    """Author is a member (and the sender, if known), round in range, weak links in range,
    signature valid."""
    _member(committee, header.author, "header author")
    if sender is not None and sender != header.author:
        raise Invalid("wrong_sender", "a header must be sent by its author")
    if header.round == 0:
        raise Invalid("genesis", "round-0 headers are genesis and are never sent")
    if header.round <= gc_round:
        raise Invalid("too_old", f"header round {header.round} is at or below the gc round {gc_round}")
    if header.round > highest_round + MAX_ROUNDS_AHEAD:
        raise Invalid("too_far_ahead", f"header round {header.round} is far ahead of {highest_round}")
    if len(header.parents) > len(committee.authorities):
        # one certificate per authority of the previous round at most: more would only make
        # us fetch digests nobody has (checked before the signature: it costs nothing)
        raise Invalid("too_many_parents", f"{len(header.parents)} parents in a committee of "
                      f"{len(committee.authorities)}")
    _check_weak_links(header, len(committee.authorities))
    if not crypto.verify(header.author, header.digest(), header.signature):
        raise Invalid("bad_signature", "header signature is invalid")


def _check_weak_links(header: Header, committee_size: int) -> None:
    """At most one per authority, each of a round in 1 .. round - 2 (the previous round is
    the parents'), none also a parent: what the DAG holds is checked when they are in it."""
    if len(header.weak_links) > committee_size:
        raise Invalid("too_many_weak_links", f"{len(header.weak_links)} weak links in a "
                      f"committee of {committee_size}")
    if any(not 0 < round_ < header.round - 1 for _, round_ in header.weak_links):
        raise Invalid("bad_weak_link_round", "a weak link must name a round below the parents'")
    if not set(header.parents).isdisjoint(digest for digest, _ in header.weak_links):
        raise Invalid("weak_link_is_parent", "a weak link repeats a parent")


def check_vote(vote: Vote, header: Header, committee: Committee) -> None:
    """A vote for exactly ``header`` by a member, with a valid signature."""
    if (vote.header_digest, vote.round, vote.origin) != (header.digest(), header.round, header.author):
        raise Invalid("unexpected_vote", "vote for a header we did not send")
    _member(committee, vote.author, "voter")
    if not crypto.verify(vote.author, vote.digest(), vote.signature):
        raise Invalid("bad_signature", "vote signature is invalid")


def check_certificate(certificate: Certificate, committee: Committee, *, gc_round: int,
                      highest_round: int) -> None:
    """Header valid, votes from distinct members with a quorum of stake, signatures valid."""
    header = certificate.header
    check_header(header, committee, gc_round=gc_round, highest_round=highest_round)
    voters = [voter for voter, _ in certificate.votes]
    if len(set(voters)) != len(voters):  # the codec already enforces sorted+unique; be explicit
        raise Invalid("duplicate_signer", "certificate has duplicate signers")
    weight = 0
    for voter in voters:
        _member(committee, voter, "certificate signer")
        weight += committee.stake(voter)
    if weight < committee.quorum_threshold():
        raise Invalid("insufficient_stake",
                      f"certificate signers hold {weight} stake, quorum is {committee.quorum_threshold()}")
    vote_digest = Vote(header.digest(), header.round, header.author, header.author, bytes(64)).digest()
    if not crypto.verify_many((voter, vote_digest, signature) for voter, signature in certificate.votes):
        raise Invalid("bad_signature", "a certificate vote signature is invalid")
