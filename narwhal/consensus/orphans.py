"""When can a header provably never be committed? (So its batches can be proposed again.)

An *orphaned* header's certificate is in no committed leader's causal history. Waiting for
the GC horizon (everything below it is ignored by consensus) is always safe but costs
~``gc_depth`` rounds: ~10-20 s of latency for those batches at 50,000 tx/s. With weak links
a certificate nobody references yet is not lost: any later header may link it until the
horizon, so the shape of the DAG above it proves nothing. Two facts every node agrees on
do, and this module answers from them:

- **Never certified.** Only a header's author gathers its votes, and only for its latest
  header. Once round r+1 is complete here (all n certificates, ours among them), we have
  moved past round r: a header of ours of round r without a certificate never gets one.
- **Passed over.** Consensus outputs a certificate only above its author's last committed
  round (:meth:`ConsensusState.live`). Once a later certificate of ours is committed, an
  uncommitted one of round r below it never will be.

With an authority silent no round is complete, and the GC horizon (or a later commit of
ours) remains the rule.
"""

from __future__ import annotations

from typing import Protocol

from narwhal.config import Committee
from narwhal.messages import Certificate

__all__ = ["never_committed"]


class RoundsView(Protocol):
    def round(self, round_: int) -> dict[bytes, Certificate]: ...


def never_committed(dag: RoundsView, committee: Committee, author: bytes, round_: int,
                    last_committed: int) -> bool:
    """True only if ``author``'s uncommitted header of ``round_`` can never be committed
    (see above), ``last_committed`` being the highest round of ``author`` committed so far;
    False when it may still be, or when we cannot tell yet."""
    if last_committed >= round_:
        return True
    return len(dag.round(round_ + 1)) == len(committee.authorities) and author not in dag.round(round_)
