"""Bullshark and Tusk: pure functions from a causally ordered certificate stream to a
total order of certificates.

Both keep the same :class:`ConsensusState` (the last committed round per authority, over
the DAG of :mod:`narwhal.consensus.dag`) and differ only in *which* leader a new
certificate can decide and *where* its support is counted (``docs/protocol.md``,
"Consensus"):

- **Bullshark** (partially synchronous, as in MystenLabs/narwhal): a certificate of round R
  may decide the leader of round r = R-1 (r even, r >= 2) with f+1 stake of round-R
  certificates among its children.
- **Tusk** (as in asonnino/narwhal): a certificate of round R may decide the leader of round
  r-2 where r = R-1 (r even, r >= 4) with f+1 stake of round r-1 children.

When a leader is decided, every earlier uncommitted leader (every second round down to
``last_committed_round + 2``) that is linked to it through parent edges is committed first,
oldest first; each committed leader outputs its causal history that was not output yet:
certificates ``c`` with ``c.round > last_committed[c.author]``, above the GC horizon. That
history follows weak links too (Bullshark's: a header's references to older certificates
its parents do not reach); leader links and support count parent edges only.

Determinism: nothing here depends on dict or set iteration order or on arrival order.
Each sub-DAG is sorted by (round, author key); leaders are chosen by a fixed rotation over
the committee sorted by key. The rotation is ``sorted_keys[(round // 2) % n]``: leaders only
exist on even rounds, and the references' ``round % n`` would give, with an even committee
size, the leadership to half of the authorities only.
"""

from __future__ import annotations

from typing import Protocol

from narwhal.consensus.dag import Dag
from narwhal.messages import Certificate

__all__ = ["Bullshark", "ConsensusState", "Tusk", "leader_of"]


class Committee(Protocol):
    def stake(self, name: bytes) -> int: ...

    def validity_threshold(self) -> int: ...

    def authorities_sorted(self) -> list[bytes]: ...


def leader_of(committee: Committee, round_: int) -> bytes:
    """The authority that leads ``round_`` (an even round), identical at every node."""
    authorities = committee.authorities_sorted()
    return authorities[(round_ // 2) % len(authorities)]


class ConsensusState:
    """What consensus remembers: how far each author is committed, over one DAG.

    **One DAG.** A node's core already holds every accepted certificate above the GC round
    in a :class:`Dag`; consensus reads that same object (``dag=``) instead of keeping a
    copy. What consensus may still order is a filter on it, :meth:`live`: above its
    author's last committed round and not below the GC horizon (``last_committed_round -
    gc_depth``). That is exactly the set the former private copy held, because
    ``last_committed`` and the horizon only grow; and after a state transfer
    (:meth:`reset`) the certificates the node already holds above the checkpoint stay
    visible, as they are at the nodes that did not need one. The DAG's owner prunes it
    (the core at its GC round, which the node sets to this horizon); a state built without
    ``dag=`` owns its DAG and prunes it itself at each commit.
    """

    def __init__(self, gc_depth: int, dag: Dag | None = None) -> None:
        self.gc_depth = gc_depth
        self._owns_dag = dag is None
        self.dag = Dag() if dag is None else dag
        self.last_committed: dict[bytes, int] = {}
        self.last_committed_round = 0
        #: Of the last :meth:`commit`, for each leader it committed: (outputs up to and
        #: including that leader's sub-DAG, its round, ``last_committed`` right after it).
        #: The state at a leader boundary is the same at every honest node (a checkpoint).
        self.leader_ends: list[tuple[int, int, dict[bytes, int]]] = []

    def reset(self, last_committed: dict[bytes, int], last_committed_round: int) -> None:
        """Start again from a checkpoint (state transfer)."""
        self.last_committed = dict(last_committed)
        self.last_committed_round = last_committed_round
        self.leader_ends = []
        if self._owns_dag:
            self._prune()

    def live(self, certificate: Certificate) -> bool:
        """Not committed yet and not below the GC horizon: consensus may still order it.
        Genesis (round 0) counts as committed from the start."""
        header = certificate.header
        return header.round > self.last_committed.get(header.author, 0) and (
            header.round >= self.last_committed_round - self.gc_depth)

    def insert(self, certificate: Certificate) -> None:
        """Add a certificate (causal order); one the DAG holds already (its owner inserted
        it) or that is no longer live is left as it is."""
        if self.live(certificate):
            self.dag.insert(certificate)

    def _get(self, digest: bytes) -> Certificate | None:
        certificate = self.dag.get(digest)
        return certificate if certificate is not None and self.live(certificate) else None

    def leader(self, committee: Committee, round_: int) -> Certificate | None:
        leader = self.dag.round(round_).get(leader_of(committee, round_))
        return leader if leader is not None and self.live(leader) else None

    def support(self, committee: Committee, leader: Certificate, round_: int) -> int:
        """Stake of round ``round_`` certificates that have ``leader`` as a parent."""
        digest = leader.digest()
        return sum(committee.stake(author) for author, c in self.dag.round(round_).items()
                   if digest in c.header.parents and self.live(c))

    def linked(self, leader: Certificate, previous: Certificate) -> bool:
        """Is there a path of parent edges from ``leader`` down to ``previous``?"""
        frontier = {leader.digest(): leader}
        for round_ in range(leader.header.round, previous.header.round, -1):
            frontier = {digest: parent for c in frontier.values() for digest in c.header.parents
                        if (parent := self._get(digest)) is not None and parent.header.round == round_ - 1}
            if not frontier:
                return False
        return previous.digest() in frontier

    def commit(self, committee: Committee, leader: Certificate) -> list[Certificate]:
        """Commit ``leader`` and the linked uncommitted leaders before it; return the output."""
        leaders = [leader]
        for round_ in range(leader.header.round - 2, self.last_committed_round + 1, -2):
            previous = self.leader(committee, round_)
            if previous is not None and self.linked(leaders[-1], previous):
                leaders.append(previous)
        output: list[Certificate] = []
        self.leader_ends = []
        for committed_leader in reversed(leaders):
            for certificate in self._sub_dag(committed_leader):
                self._mark_committed(certificate)
                output.append(certificate)
            self.leader_ends.append((len(output), committed_leader.header.round,
                                     dict(self.last_committed)))
        if self._owns_dag:
            self._prune()
        return output

    def _sub_dag(self, leader: Certificate) -> list[Certificate]:
        """The leader's causal history not output yet, sorted by (round, author): through
        parents and weak links alike. A weak link is followed only when its certificate
        has the round the link names: a node that accepted the header without holding it
        (the named round was collected there) must order exactly the same."""
        horizon = self.last_committed_round - self.gc_depth
        seen = {leader.digest()}
        stack = [leader]
        result = []
        while stack:
            certificate = stack.pop()
            result.append(certificate)
            header = certificate.header
            edges = [(parent, header.round - 1) for parent in header.parents]
            for digest, round_ in edges + list(header.weak_links):
                ancestor = self._get(digest)
                if ancestor is None or digest in seen or ancestor.header.round != round_:
                    continue  # already committed, below the GC horizon, or a wrong link
                seen.add(digest)
                if ancestor.header.round > horizon:
                    stack.append(ancestor)
        return sorted(result, key=lambda c: (c.header.round, c.header.author))

    def _mark_committed(self, certificate: Certificate) -> None:
        author, round_ = certificate.header.author, certificate.header.round
        self.last_committed[author] = max(self.last_committed.get(author, 0), round_)
        self.last_committed_round = max(self.last_committed_round, round_)

    def _prune(self) -> None:
        """Forget the rounds below the GC horizon (only a DAG this state owns)."""
        self.dag.prune_below(self.last_committed_round - self.gc_depth)


class _LeaderCommit:
    """Shared by both protocols: insert, find the decidable leader, check its support, commit."""

    name = ""

    def __init__(self, committee: Committee, state: ConsensusState) -> None:
        self.committee = committee
        self.state = state

    def rounds_to_check(self, round_: int) -> tuple[int, int] | None:
        """(leader round, round whose certificates support it) decidable at ``round_``."""
        raise NotImplementedError

    def process_certificate(self, certificate: Certificate) -> list[Certificate]:
        """Add ``certificate`` (causal order); the certificates it commits, in order."""
        state = self.state
        state.insert(certificate)
        rounds = self.rounds_to_check(certificate.header.round)
        if rounds is None:
            return []
        leader_round, support_round = rounds
        if leader_round <= state.last_committed_round:
            return []
        leader = state.leader(self.committee, leader_round)
        if leader is None:
            return []
        if state.support(self.committee, leader, support_round) < self.committee.validity_threshold():
            return []
        return state.commit(self.committee, leader)


class Bullshark(_LeaderCommit):
    """Decide the leader of round R-1 when a round-R certificate arrives (R-1 even, >= 2),
    with the support of round R."""

    name = "bullshark"

    def rounds_to_check(self, round_: int) -> tuple[int, int] | None:
        leader_round = round_ - 1
        if leader_round % 2 != 0 or leader_round < 2:
            return None
        return leader_round, round_


class Tusk(_LeaderCommit):
    """Decide the leader of round r-2 when a round-R certificate arrives, r = R-1 even and
    >= 4, with the support of round r-1."""

    name = "tusk"

    def rounds_to_check(self, round_: int) -> tuple[int, int] | None:
        r = round_ - 1
        if r % 2 != 0 or r < 4:
            return None
        return r - 2, r - 1
