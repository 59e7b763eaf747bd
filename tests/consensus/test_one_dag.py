"""Consensus reads the core's DAG (one DAG, not two): the same order as on a DAG of its
own, and after a state transfer it still sees the certificates the node already held."""

from __future__ import annotations

import random

import pytest

from narwhal.consensus import Bullshark, ConsensusState, Tusk
from narwhal.consensus.dag import Dag
from narwhal.messages import Certificate
from tests.consensus.test_protocols import COMMITTEE, GENESIS, KEYS, build, cert


def random_layers(rng: random.Random, rounds: int) -> list[list[Certificate]]:
    """Authorities missing from rounds and parents left out at random: orphans, skipped
    leaders and certificates committed late, all on one DAG."""
    layers = [list(GENESIS)]
    for round_ in range(1, rounds + 1):
        previous = layers[-1]
        layer = [cert(author, round_, rng.sample(previous, rng.randint(max(1, len(previous) - 2), len(previous))))
                 for author in KEYS if rng.random() > 0.2]
        layers.append(layer or [cert(KEYS[0], round_, previous)])
    return layers


def causal_order(rng: random.Random, layers: list[list[Certificate]]) -> list[Certificate]:
    delivered = {c.digest() for c in layers[0]}
    pending = [c for layer in layers[1:] for c in layer]
    order = []
    while pending:
        ready = [c for c in pending if all(p in delivered for p in c.header.parents)]
        chosen = rng.choice(ready)
        pending.remove(chosen)
        delivered.add(chosen.digest())
        order.append(chosen)
    return order


def order_on_own_dag(protocol_cls, certificates, gc_depth):
    protocol = protocol_cls(COMMITTEE, ConsensusState(gc_depth))
    return [c.digest() for x in certificates for c in protocol.process_certificate(x)]


def order_on_a_core_dag(protocol_cls, certificates, gc_depth):
    """As in a node: the core inserts above its GC round, then consensus runs, then the
    core garbage-collects up to the consensus horizon."""
    dag, gc_round = Dag(GENESIS), 0
    protocol = protocol_cls(COMMITTEE, ConsensusState(gc_depth, dag=dag))
    output = []
    for certificate in certificates:
        if certificate.header.round <= gc_round or not dag.insert(certificate):
            continue
        output += [c.digest() for c in protocol.process_certificate(certificate)]
        if protocol.state.last_committed_round - gc_depth > gc_round:
            gc_round = protocol.state.last_committed_round - gc_depth
            dag.prune_below(gc_round + 1)
    return output


@pytest.mark.parametrize("protocol_cls", [Bullshark, Tusk])
@pytest.mark.parametrize("seed", range(40))
def test_the_core_dag_gives_the_order_of_a_dag_of_its_own(protocol_cls, seed):
    rng = random.Random(seed)
    certificates = causal_order(rng, random_layers(rng, rng.randint(10, 40)))
    gc_depth = rng.choice([2, 3, 5, 50])
    own = order_on_own_dag(protocol_cls, certificates, gc_depth)
    assert own  # the DAGs are built to commit
    assert order_on_a_core_dag(protocol_cls, certificates, gc_depth) == own


def test_after_a_state_transfer_certificates_already_held_are_still_ordered():
    """Node B has the first round-5 certificate when it installs the checkpoint of the
    round-4 leader (committed at A by the second). With a DAG of consensus's own that
    ``reset`` emptied, B's next leader left that certificate out: B's output diverged."""
    certificates = [c for layer in build(12)[1:] for c in layer]
    a = Bullshark(COMMITTEE, ConsensusState(50))
    outputs: list[bytes] = []
    checkpoint = None
    for position, certificate in enumerate(certificates):
        committed = a.process_certificate(certificate)
        outputs += [c.digest() for c in committed]
        if committed and a.state.last_committed_round == 4:
            ends, leader_round, last_committed = a.state.leader_ends[-1]
            checkpoint = (len(outputs) - len(committed) + ends, leader_round, last_committed, position)
    assert checkpoint is not None
    index, leader_round, last_committed, position = checkpoint
    held = certificates[:position]  # everything but the support that committed the leader at A
    assert held[-1].header.round == 5

    dag = Dag(GENESIS)
    b = Bullshark(COMMITTEE, ConsensusState(50, dag=dag))
    for certificate in held:
        assert dag.insert(certificate)
        assert b.process_certificate(certificate) == [] or certificate.header.round < 5
    b.state.reset(last_committed, leader_round)
    after = []
    for certificate in certificates[position:]:
        dag.insert(certificate)
        after += [c.digest() for c in b.process_certificate(certificate)]
    assert after and after == outputs[index:]
