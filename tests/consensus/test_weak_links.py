"""Bullshark's weak links (issue 16): a late certificate no parent edge reaches is ordered
by the next leader that reaches a header weakly linking it, identically at every node.

The DAGs are hand-built or random; each random certificate weakly links the certificates
of rounds below its parents' that nothing references yet (what our proposer does), so the
property tests exercise orphans the parents leave behind."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from narwhal.consensus import Bullshark, Tusk, leader_of
from narwhal.consensus.dag import Dag
from narwhal.messages import Certificate, Header

from .test_protocols import COMMITTEE, GENESIS, KEYS, causal_order, run


def cert(author: bytes, round_: int, parents, weak=()) -> Certificate:
    digests = tuple(sorted(p.digest() for p in parents))
    links = tuple(sorted((c.digest(), c.header.round) for c in weak))
    return Certificate(Header(author, round_, (), digests, links, bytes(64)), ())


A, B, C, D = KEYS


def late_d_dag(link_round: int | None = 1):
    """Rounds 1-5 of 4 authorities where D's round-1 certificate came too late: no round-2
    certificate has it as a parent. D's round-3 certificate weakly links it (naming
    ``link_round``), unless ``link_round`` is None."""
    r1 = {a: cert(a, 1, GENESIS) for a in KEYS}
    r2 = {a: cert(a, 2, [r1[x] for x in (A, B, C)]) for a in KEYS}
    r3 = {}
    for a in KEYS:
        weak = ()
        if a == D and link_round is not None:
            weak = (r1[D],)
        r3[a] = cert(a, 3, r2.values(), weak)
        if weak and link_round != 1:
            header = r3[a].header
            wrong = Header(header.author, 3, (), header.parents, ((r1[D].digest(), link_round),), bytes(64))
            r3[a] = Certificate(wrong, ())
    r4 = {a: cert(a, 4, r3.values()) for a in KEYS}
    r5 = {a: cert(a, 5, r4.values()) for a in KEYS}
    return [GENESIS, *[list(r.values()) for r in (r1, r2, r3, r4, r5)]], r1[D]


def test_an_orphan_is_ordered_through_a_weak_link_by_the_next_leader():
    layers, orphan = late_d_dag()
    output, _ = run(Bullshark, layers)
    digests = [c.digest() for c in output]
    assert orphan.digest() in digests
    # ordered in its round's place: before every round-2 certificate of that commit
    position = digests.index(orphan.digest())
    assert all(c.header.round >= 2 for c in output[position + 1:])


def test_without_the_weak_link_the_orphan_is_never_ordered():
    layers, orphan = late_d_dag(link_round=None)
    output, _ = run(Bullshark, layers)
    assert output and orphan.digest() not in [c.digest() for c in output]


def test_a_weak_link_naming_the_wrong_round_is_not_followed():
    # a node that accepted the header without the linked certificate (its named round
    # collected) could not follow it: so nobody does
    layers, orphan = late_d_dag(link_round=0)
    output, _ = run(Bullshark, layers)
    assert output and orphan.digest() not in [c.digest() for c in output]


def test_leaders_are_linked_and_supported_through_parents_only():
    """A round-2 leader without f+1 support at round 3, reached from the round-4 leader only
    by a weak link: it is output in the round-4 leader's history, not committed as a leader."""
    leader2, leader4 = leader_of(COMMITTEE, 2), leader_of(COMMITTEE, 4)
    r1 = [cert(a, 1, GENESIS) for a in KEYS]
    r2 = {a: cert(a, 2, r1) for a in KEYS}
    others2 = [c for a, c in r2.items() if a != leader2]
    r3 = {a: cert(a, 3, others2) for a in KEYS}  # nobody names the round-2 leader
    r4 = {a: cert(a, 4, r3.values(), (r2[leader2],) if a == leader4 else ()) for a in KEYS}
    r5 = [cert(a, 5, r4.values()) for a in KEYS]
    layers = [GENESIS, r1, list(r2.values()), list(r3.values()), list(r4.values()), r5]
    output, state = run(Bullshark, layers)
    assert r2[leader2].digest() in [c.digest() for c in output]
    assert [round_ for _, round_, _ in state.leader_ends] == [4]
    assert not state.linked(r4[leader4], r2[leader2])


# --- random DAGs with weak links ------------------------------------------------------------


def random_dag_with_weak_links(seed: int, rounds: int) -> list[list[Certificate]]:
    """Random parents (a quorum or more of the previous round), authorities missing now and
    then, and now and then a certificate too late for every parent list; each certificate weakly links what a proposer holding the whole DAG so far would:
    certificates of rounds below its parents' that nothing references (``Dag.unreferenced``),
    at most one per authority, sometimes only some of them (a proposer that lacks them)."""
    rng = random.Random(seed)
    quorum = COMMITTEE.quorum_threshold()
    dag = Dag(GENESIS)
    layers = [GENESIS]
    for r in range(1, rounds + 1):
        previous = layers[-1]
        authors = [a for a in KEYS if rng.random() > 0.1] or list(KEYS)
        while len(authors) < quorum:
            authors.append(next(a for a in KEYS if a not in authors))
        candidates = dag.unreferenced(r - 1)[:len(KEYS)]
        # a late certificate of the previous round: no certificate of this round names it
        late = rng.choice(previous) if len(previous) > quorum and rng.random() < 0.4 else None
        on_time = [c for c in previous if c is not late]
        layer = []
        for author in sorted(authors):
            parents = on_time if len(on_time) <= quorum else rng.sample(
                on_time, rng.randint(quorum, len(on_time)))
            weak = [c for c in candidates if rng.random() < 0.7]
            layer.append(cert(author, r, parents, weak))
        for certificate in layer:
            dag.insert(certificate)
        layers.append(layer)
    return layers


@settings(max_examples=60, deadline=None)
@given(dag_seed=st.integers(0, 10_000), order_seeds=st.lists(st.integers(0, 10_000), min_size=2, max_size=3),
       protocol=st.sampled_from([Bullshark, Tusk]), gc_depth=st.sampled_from([3, 6, 50]))
def test_with_weak_links_any_causal_order_gives_the_same_commit_sequence(dag_seed, order_seeds,
                                                                          protocol, gc_depth):
    layers = random_dag_with_weak_links(dag_seed, rounds=16)
    sequences = []
    for seed in order_seeds:
        output, _ = run(protocol, layers, order=causal_order(layers, seed), gc_depth=gc_depth)
        sequences.append([c.digest() for c in output])
    for sequence in sequences:
        assert len(sequence) == len(set(sequence))  # integrity: nothing output twice
    shortest = min(len(s) for s in sequences)
    assert shortest > 0 and all(s[:shortest] == sequences[0][:shortest] for s in sequences)


def strip_weak_links(layers: list[list[Certificate]]) -> list[list[Certificate]]:
    """The same DAG with parent edges only (new digests, same shape)."""
    renamed: dict[bytes, Certificate] = {c.digest(): c for c in GENESIS}
    stripped = [GENESIS]
    for layer in layers[1:]:
        stripped.append([cert(c.header.author, c.header.round, [renamed[p] for p in c.header.parents])
                         for c in layer])
        for old, new in zip(layer, stripped[-1]):
            renamed[old.digest()] = new
    return stripped


def unordered(layers: list[list[Certificate]]) -> int:
    """Certificates more than two rounds below the last committed leader never output."""
    output, state = run(Bullshark, layers)
    done = {c.digest() for c in output}
    return sum(1 for layer in layers[1:] for c in layer
               if c.header.round < state.last_committed_round - 2 and c.digest() not in done)


def test_weak_links_leave_fewer_certificates_unordered():
    """Same leaders, same support (parent edges are the same), so each leader's history
    with weak links holds everything it holds without: never more left unordered, and over
    30 random DAGs fewer."""
    pairs = [(unordered(layers), unordered(strip_weak_links(layers)))
             for layers in (random_dag_with_weak_links(seed, rounds=16) for seed in range(30))]
    assert all(with_links <= without for with_links, without in pairs)
    assert sum(w for w, _ in pairs) < sum(wo for _, wo in pairs)
