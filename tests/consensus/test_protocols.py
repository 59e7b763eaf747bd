"""Bullshark and Tusk on hand-built DAGs, and determinism under any causal delivery order."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from narwhal.consensus import Bullshark, ConsensusState, Tusk, leader_of
from narwhal.messages import Certificate, Header

KEYS = [bytes([i + 1]) * 32 for i in range(4)]  # already in sorted order


class Committee:
    def __init__(self, keys=KEYS):
        self.keys = sorted(keys)

    def stake(self, name):
        return 1 if name in self.keys else 0

    def validity_threshold(self):
        return (len(self.keys) + 2) // 3

    def quorum_threshold(self):
        return 2 * len(self.keys) // 3 + 1

    def authorities_sorted(self):
        return list(self.keys)


COMMITTEE = Committee()
GENESIS = Certificate.genesis(KEYS)


def cert(author: bytes, round_: int, parents) -> Certificate:
    digests = tuple(sorted(p.digest() for p in parents))
    return Certificate(Header(author, round_, (), digests, (), bytes(64)), ())


def build(rounds: int, *, skip=(), parents_of=None) -> list[list[Certificate]]:
    """Round-by-round certificates; by default each cites every certificate of the round
    before. ``skip`` = {(author, round)} absent; ``parents_of(author, round, previous)``
    chooses parents."""
    layers = [GENESIS]
    for r in range(1, rounds + 1):
        previous = layers[-1]
        layer = []
        for author in KEYS:
            if (author, r) in skip:
                continue
            chosen = parents_of(author, r, previous) if parents_of else previous
            layer.append(cert(author, r, chosen))
        layers.append(layer)
    return layers


def run(protocol_cls, layers, order=None, gc_depth=50):
    protocol = protocol_cls(COMMITTEE, ConsensusState(gc_depth))
    output = []
    certificates = order if order is not None else [c for layer in layers[1:] for c in layer]
    for certificate in certificates:
        output.extend(protocol.process_certificate(certificate))
    return output, protocol.state


def key(c: Certificate):
    return (c.header.round, KEYS.index(c.header.author))


def test_leader_rotation_covers_the_whole_committee():
    leaders = [leader_of(COMMITTEE, r) for r in range(2, 18, 2)]
    assert set(leaders) == set(KEYS)
    assert leaders[:4] == [KEYS[1], KEYS[2], KEYS[3], KEYS[0]]


def test_bullshark_commits_the_leader_and_its_history_in_round_then_author_order():
    layers = build(3)
    output, state = run(Bullshark, layers)
    leader = leader_of(COMMITTEE, 2)
    # leader of round 2 is decided by round 3; its history is all of round 1 plus itself
    assert [key(c) for c in output] == [(1, 0), (1, 1), (1, 2), (1, 3), (2, KEYS.index(leader))]
    assert state.last_committed_round == 2
    assert len({c.digest() for c in output}) == len(output)


def test_bullshark_needs_f_plus_one_support():
    leader = leader_of(COMMITTEE, 2)

    def parents_of(author, r, previous):
        if r == 3 and author != KEYS[0]:  # only one round-3 certificate cites the leader
            return [c for c in previous if c.header.author != leader]
        return previous

    layers = build(3, parents_of=parents_of)
    output, state = run(Bullshark, layers)
    assert output == [] and state.last_committed_round == 0


def test_bullshark_skips_a_missing_leader_and_commits_the_next():
    leader2 = leader_of(COMMITTEE, 2)
    layers = build(5, skip={(leader2, 2)})
    output, state = run(Bullshark, layers)
    assert state.last_committed_round == 4
    assert all(c.header.author != leader2 or c.header.round != 2 for c in output)
    assert output[-1].header.author == leader_of(COMMITTEE, 4) and output[-1].header.round == 4


def test_bullshark_commits_an_earlier_linked_leader_first():
    """Leader 2 lacks support at round 3, but leader 4 is linked to it: when leader 4
    commits, leader 2 (and its history) is output before leader 4's."""
    leader2 = leader_of(COMMITTEE, 2)

    def parents_of(author, r, previous):
        if r == 3 and author != KEYS[0]:
            return [c for c in previous if c.header.author != leader2]
        return previous

    layers = build(5, parents_of=parents_of)
    output, state = run(Bullshark, layers)
    rounds = [c.header.round for c in output]
    leader2_position = next(i for i, c in enumerate(output) if c.header.round == 2 and c.header.author == leader2)
    assert rounds == sorted(rounds)  # history before leaders, oldest first
    assert leader2_position < len(output) - 1
    assert output[-1].header.round == 4 and output[-1].header.author == leader_of(COMMITTEE, 4)
    assert state.last_committed_round == 4


def test_each_certificate_is_output_at_most_once_over_many_rounds():
    layers = build(30)
    output, state = run(Bullshark, layers)
    digests = [c.digest() for c in output]
    assert len(digests) == len(set(digests))
    assert state.last_committed_round == 28
    # everything up to round 27 is committed (round 28's leader commits rounds <= 28 it sees)
    committed_rounds = {c.header.round for c in output}
    assert committed_rounds == set(range(1, 29))


def test_gc_horizon_is_respected():
    layers = build(20)
    _output, state = run(Bullshark, layers, gc_depth=2)
    assert state.last_committed_round == 18
    assert all(round_ >= state.last_committed_round - 2 for round_ in state.dag.rounds())


def test_redelivered_committed_certificates_are_never_output_again():
    layers = build(12)
    certs = [c for layer in layers[1:] for c in layer]
    protocol = Bullshark(COMMITTEE, ConsensusState(gc_depth=2))
    first = [o for c in certs for o in protocol.process_certificate(c)]
    assert first
    again = [o for c in certs for o in protocol.process_certificate(c)]
    assert again == []


def test_tusk_decides_the_leader_two_rounds_back():
    layers = build(5)
    output, state = run(Tusk, layers)
    # the round-5 certificates make r = 4, so the leader of round 2 is decided
    assert state.last_committed_round == 2
    assert output[-1].header.round == 2 and output[-1].header.author == leader_of(COMMITTEE, 2)
    assert [c.header.round for c in output[:-1]] == [1, 1, 1, 1]


def test_tusk_needs_f_plus_one_support():
    leader = leader_of(COMMITTEE, 2)

    def parents_of(author, r, previous):
        if r == 3 and author != KEYS[0]:
            return [c for c in previous if c.header.author != leader]
        return previous

    output, _state = run(Tusk, build(5, parents_of=parents_of))
    assert all(c.header.round != 2 or c.header.author != leader for c in output)


# --- determinism -------------------------------------------------------------------------------


def random_dag(seed: int, rounds: int) -> list[list[Certificate]]:
    rng = random.Random(seed)

    def parents_of(author, r, previous):
        quorum = COMMITTEE.quorum_threshold()
        if len(previous) <= quorum:
            return previous
        return rng.sample(previous, rng.randint(quorum, len(previous)))

    skip = {(a, r) for a in KEYS for r in range(1, rounds + 1) if rng.random() < 0.1}
    # keep at least a quorum per round
    for r in range(1, rounds + 1):
        present = [a for a in KEYS if (a, r) not in skip]
        while len(present) < COMMITTEE.quorum_threshold():
            a = next(a for a in KEYS if (a, r) in skip)
            skip.discard((a, r))
            present.append(a)
    return build(rounds, skip=skip, parents_of=parents_of)


def causal_order(layers, seed: int) -> list[Certificate]:
    """A random delivery order in which every certificate comes after its ancestors in the
    layers: its parents and its weak links."""
    rng = random.Random(seed)
    by_digest = {c.digest(): c for layer in layers for c in layer}
    delivered = {c.digest() for c in GENESIS}
    pending = [c for layer in layers[1:] for c in layer]
    order = []
    while pending:
        ready = [c for c in pending if all(
            a in delivered or a not in by_digest
            for a in (*c.header.parents, *(d for d, _ in c.header.weak_links)))]
        choice = rng.choice(ready)
        pending.remove(choice)
        delivered.add(choice.digest())
        order.append(choice)
    return order


@settings(max_examples=40, deadline=None)
@given(dag_seed=st.integers(0, 10_000), order_seeds=st.lists(st.integers(0, 10_000), min_size=2, max_size=3),
       protocol=st.sampled_from([Bullshark, Tusk]))
def test_any_causal_delivery_order_gives_the_same_commit_sequence(dag_seed, order_seeds, protocol):
    layers = random_dag(dag_seed, rounds=14)
    sequences = []
    for seed in order_seeds:
        output, _ = run(protocol, layers, order=causal_order(layers, seed))
        sequences.append([c.digest() for c in output])
    # a later delivery may decide a leader earlier or later, but the committed sequences
    # are prefixes of one another (agreement) and each is duplicate-free (integrity)
    for sequence in sequences:
        assert len(sequence) == len(set(sequence))
    shortest = min(len(s) for s in sequences)
    assert all(s[:shortest] == sequences[0][:shortest] for s in sequences)
