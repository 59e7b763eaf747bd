"""narwhal.consensus.orphans: when a header can provably never be committed."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from narwhal.config import Committee
from narwhal.consensus.orphans import never_committed
from narwhal.consensus.protocols import leader_of
from narwhal.crypto import AuthorityKeys

COMMITTEE = Committee.local([AuthorityKeys.generate(1).public() for _ in range(4)], 1)
A, B, C, D = COMMITTEE.authorities_sorted()


def cert(author: bytes, round_: int, parents: list[str] = ()) -> SimpleNamespace:
    name = f"{author.hex()[:4]}@{round_}"
    return SimpleNamespace(header=SimpleNamespace(author=author, round=round_, parents=tuple(parents)),
                           digest=lambda: name, name=name)


class Rounds:
    def __init__(self, *certificates: SimpleNamespace) -> None:
        self.by_round: dict[int, dict[bytes, SimpleNamespace]] = {}
        for c in certificates:
            self.by_round.setdefault(c.header.round, {})[c.header.author] = c

    def round(self, round_: int) -> dict[bytes, SimpleNamespace]:
        return self.by_round.get(round_, {})


def full_round(round_: int, parents: dict[bytes, list[str]]) -> list[SimpleNamespace]:
    return [cert(a, round_, parents.get(a, [])) for a in (A, B, C, D)]


OURS = 3  # odd: not a leader round


def test_next_round_incomplete_we_cannot_tell() -> None:
    dag = Rounds(cert(A, OURS), cert(B, OURS + 1), cert(C, OURS + 1), cert(D, OURS + 1))
    assert not never_committed(dag, COMMITTEE, A, OURS)


def test_next_round_complete_and_nobody_references_ours() -> None:
    dag = Rounds(cert(A, OURS), *full_round(OURS + 1, {}))
    assert never_committed(dag, COMMITTEE, A, OURS)
    assert never_committed(Rounds(*full_round(OURS + 1, {})), COMMITTEE, A, OURS)  # never certified


def test_referenced_by_a_certificate_that_the_round_after_may_still_reference() -> None:
    ours = cert(A, OURS)
    referencing = full_round(OURS + 1, {B: [ours.name]})
    incomplete = [c for c in full_round(OURS + 2, {}) if c.header.author != D]
    assert not never_committed(Rounds(ours, *referencing, *incomplete), COMMITTEE, A, OURS)


def test_referenced_only_by_an_orphan_is_an_orphan() -> None:
    ours = cert(A, OURS)
    dag = Rounds(ours, *full_round(OURS + 1, {B: [ours.name]}), *full_round(OURS + 2, {}))
    assert never_committed(dag, COMMITTEE, A, OURS)


def test_referenced_through_the_round_after_is_not_an_orphan() -> None:
    ours = cert(A, OURS)
    above = full_round(OURS + 1, {B: [ours.name]})
    b_name = next(c.name for c in above if c.header.author == B)
    dag = Rounds(ours, *above, *full_round(OURS + 2, {C: [b_name]}))
    assert not never_committed(dag, COMMITTEE, A, OURS)


@pytest.mark.parametrize("supporters, expected", [([B], True), ([B, C], False)])
def test_a_leader_with_its_support_may_be_committed_directly(supporters, expected) -> None:
    round_ = 4
    leader = leader_of(COMMITTEE, round_)
    ours = cert(leader, round_)
    others = [a for a in (A, B, C, D) if a != leader]
    above = full_round(round_ + 1, {a: [ours.name] for a in others[:len(supporters)]})
    dag = Rounds(ours, *above, *full_round(round_ + 2, {}))
    # f + 1 = 2 supporters of 4: Bullshark/Tusk may commit it directly, whatever follows
    assert never_committed(dag, COMMITTEE, leader, round_) is expected
    # the same shape for a non-leader of that round is an orphan either way
    non_leader = others[-1]
    ours2 = cert(non_leader, round_)
    above2 = full_round(round_ + 1, {a: [ours2.name] for a in others[:2] if a != non_leader})
    assert never_committed(Rounds(ours2, *above2, *full_round(round_ + 2, {})), COMMITTEE, non_leader, round_)
