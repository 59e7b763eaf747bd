"""When can a header provably never be committed? (So its batches can be proposed again.)

An *orphaned* header's certificate is in no committed leader's causal history. Waiting for
the GC horizon (everything below it is ignored by consensus) is always safe but costs
~``gc_depth`` rounds: ~10-20 s of latency for those batches at 50,000 tx/s. This module
answers the question earlier, from facts every node will agree on:

- parents come only from the previous round, so every path from a later certificate down
  to round r passes through each round in between;
- an authority has at most one certificate per round (honest authorities vote once per
  author and round), so once we hold all n certificates of a round, that round is final.

Rule 1: round r+1 complete and none of its certificates has ours (round r) as a parent:
nothing will ever reach ours. Rule 2: rounds r+1 and r+2 complete, and no round r+2
certificate has as a parent any round r+1 certificate that references ours: nothing above
round r+1 reaches ours, so only a *direct* commit of a leader could include it: ours, if
it leads round r and the round r+1 certificates referencing it carry the validity stake
(f+1), which both Bullshark and Tusk require; a round r+1 leader referencing ours has no
support at r+2 by assumption. With an authority silent, no round is ever complete here and
the GC horizon remains the rule.
"""

from __future__ import annotations

from typing import Protocol

from narwhal.config import Committee
from narwhal.consensus.protocols import leader_of
from narwhal.messages import Certificate

__all__ = ["never_committed"]


class RoundsView(Protocol):
    def round(self, round_: int) -> dict[bytes, Certificate]: ...


def never_committed(dag: RoundsView, committee: Committee, author: bytes, round_: int) -> bool:
    """True only if ``author``'s header of ``round_`` can never be committed (see above);
    False when it may still be, or when we cannot tell yet."""
    n = len(committee.authorities)
    above = dag.round(round_ + 1)
    if len(above) < n:
        return False
    ours = dag.round(round_).get(author)
    if ours is None:  # never certified: whenever it is, no round r+1 certificate names it
        return True
    digest = ours.digest()
    referencing = [c for c in above.values() if digest in c.header.parents]
    if not referencing:
        return True
    support = sum(committee.stake(c.header.author) for c in referencing)
    if round_ % 2 == 0 and leader_of(committee, round_) == author \
            and support >= committee.validity_threshold():
        return False  # a leader with its support: it may be committed directly
    two_above = dag.round(round_ + 2)
    if len(two_above) < n:
        return False
    linked = {c.digest() for c in referencing}
    return not any(p in linked for c in two_above.values() for p in c.header.parents)
