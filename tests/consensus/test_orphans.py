"""narwhal.consensus.orphans: when a header can provably never be committed.

With weak links an unreferenced certificate can still be linked by any later header, so
only two facts count: never certified once the next round is complete, or passed over by
a later commit of its author."""

from __future__ import annotations

from types import SimpleNamespace

from narwhal.config import Committee
from narwhal.consensus.orphans import never_committed
from narwhal.crypto import AuthorityKeys

COMMITTEE = Committee.local([AuthorityKeys.generate(1).public() for _ in range(4)], 1)
A, B, C, D = COMMITTEE.authorities_sorted()


def cert(author: bytes, round_: int) -> SimpleNamespace:
    return SimpleNamespace(header=SimpleNamespace(author=author, round=round_))


class Rounds:
    def __init__(self, *certificates: SimpleNamespace) -> None:
        self.by_round: dict[int, dict[bytes, SimpleNamespace]] = {}
        for c in certificates:
            self.by_round.setdefault(c.header.round, {})[c.header.author] = c

    def round(self, round_: int) -> dict[bytes, SimpleNamespace]:
        return self.by_round.get(round_, {})


def full_round(round_: int) -> list[SimpleNamespace]:
    return [cert(a, round_) for a in (A, B, C, D)]


OURS = 3


def test_never_certified_once_the_next_round_is_complete() -> None:
    assert never_committed(Rounds(*full_round(OURS + 1)), COMMITTEE, A, OURS, last_committed=0)


def test_never_certified_but_the_next_round_incomplete_we_cannot_tell() -> None:
    dag = Rounds(cert(B, OURS + 1), cert(C, OURS + 1), cert(D, OURS + 1))
    assert not never_committed(dag, COMMITTEE, A, OURS, last_committed=0)


def test_certified_and_unreferenced_may_still_be_weakly_linked() -> None:
    # the old rule 1 (next round complete, nobody references ours) no longer proves anything
    dag = Rounds(cert(A, OURS), *full_round(OURS + 1), *full_round(OURS + 2))
    assert not never_committed(dag, COMMITTEE, A, OURS, last_committed=OURS - 1)


def test_passed_over_by_a_later_commit_of_ours() -> None:
    dag = Rounds(cert(A, OURS))
    assert never_committed(dag, COMMITTEE, A, OURS, last_committed=OURS + 1)
    assert never_committed(dag, COMMITTEE, A, OURS, last_committed=OURS)
