"""Weak links in the primary (issue 16): proposed, validated, fetched and waited for like
parents, and what they are for: a lagging validator's certificate of a round it skipped is
committed with the next leader, its batches not proposed again."""

from __future__ import annotations

import os

import attrs
import pytest

from narwhal.consensus.dag import Dag
from narwhal.messages import Certificate, Header
from narwhal.primary.checks import Invalid, check_header

from .sim import Simulation
from .test_primary_logic import genesis_digests, signed_header


def signed(keys, header: Header) -> Header:
    return attrs.evolve(header, signature=keys.signing.sign(header.digest()))


@pytest.mark.parametrize(("weak_links", "reason"), [
    ([(bytes([i]) * 32, 1) for i in range(5)], "too_many_weak_links"),  # 5 in a committee of 4
    ([(bytes(32), 4)], "bad_weak_link_round"),  # the parents' round
    ([(bytes(32), 0)], "bad_weak_link_round"),  # genesis is never linked
    ([(b"\x01" * 32, 2)], "weak_link_is_parent"),
])
def test_invalid_weak_links_are_refused_before_the_signature(sim, weak_links, reason):
    keys = sim.keys[0]
    header = Header(keys.name, 5, (), (b"\x01" * 32,), tuple(weak_links), bytes(64))
    with pytest.raises(Invalid) as info:  # unsigned: the check comes first
        check_header(header, sim.committee, gc_round=0, highest_round=5)
    assert info.value.reason == reason


def test_the_dag_names_what_a_header_misses_and_what_nobody_references():
    genesis = Certificate.genesis([bytes([i]) * 32 for i in range(1, 5)])
    dag = Dag(genesis)
    a, b = (Certificate(Header(bytes([i]) * 32, 1, (), tuple(sorted(c.digest() for c in genesis)), (),
                               bytes(64)), ()) for i in (1, 2))
    dag.insert(a)
    dag.insert(b)
    assert dag.unreferenced(2) == sorted([a, b], key=lambda c: c.header.author)
    child = Certificate(Header(a.header.author, 2, (), (a.digest(),), (), bytes(64)), ())
    dag.insert(child)
    assert dag.unreferenced(2) == [b]  # a has a child now; round 2 is not below 2
    late = bytes(32)
    header = Header(a.header.author, 4, (), (b"\x07" * 32,), ((b.digest(), 1), (late, 2)), bytes(64))
    assert dag.missing(header, gc_round=0) == [(b"\x07" * 32, 3), (late, 2)]
    assert dag.missing(header, gc_round=2) == [(b"\x07" * 32, 3)]  # round 2 collected
    assert dag.missing(header, gc_round=3) == []
    linking = Certificate(Header(b.header.author, 3, (), (child.digest(),), ((b.digest(), 1),), bytes(64)), ())
    dag.insert(linking)
    assert b not in dag.unreferenced(3)  # a weak link references it too


def three_rounds(sim) -> list[list[Certificate]]:
    """Rounds 1-3, every authority citing every certificate of the round before (unsigned:
    restored as a store would give them back, not validated)."""
    layers = [Certificate.genesis(sim.names)]
    for round_ in (1, 2, 3):
        parents = tuple(sorted(c.digest() for c in layers[-1]))
        layers.append([Certificate(Header(name, round_, (), parents, (), bytes(64)), ()) for name in sim.names])
    return layers


async def test_a_header_is_voted_for_only_once_its_weak_links_are_held(sim):
    """Node 0 holds rounds 1-3. Node 1's round-4 header weakly linking a certificate node 0
    lacks is parked and the certificate fetched; one naming the wrong round for a
    certificate node 0 holds is refused; one naming it rightly is voted for."""
    node, author = sim.nodes[sim.names[0]].node, sim.keys[1]
    layers = three_rounds(sim)
    node.core.certificates.restore([c for layer in layers[1:] for c in layer], 0)
    fetched: list[tuple[list[bytes], int]] = []
    node.core._fetch = lambda digests, source, round_: fetched.append((list(digests), round_))
    parents = tuple(sorted(c.digest() for c in layers[3]))
    held = layers[1][2].digest()

    def header(link: tuple[bytes, int]) -> Header:
        return signed(author, Header(author.name, 4, (), parents, (link,), bytes(64)))

    with pytest.raises(Invalid, match="wrong round"):
        await node.core.handle_header(header((held, 2)), author.name)
    assert node.core.counters["header_bad_weak_link_round"] == 1
    missing = bytes(32)
    await node.core.handle_header(header((missing, 1)), author.name)
    assert node.core.voted.get((author.name, 4)) is None  # parked, not voted for
    assert fetched == [([missing], 1)]
    node.core._parked_headers.remove(header((missing, 1)))
    await node.core.handle_header(header((held, 1)), author.name)
    assert node.core.voted.get((author.name, 4)) == header((held, 1)).digest()


async def test_a_certificate_waits_for_its_weak_links(sim):
    """A certificate is inserted only once the certificate it weakly links is (the DAG, and
    so consensus, sees ancestors first); the link's arrival releases it."""
    node = sim.nodes[sim.names[0]].node
    layers = three_rounds(sim)
    late = layers[1][3]  # node 3's round-1 certificate: not held
    node.core.certificates.restore([c for layer in layers[1:3] for c in layer if c is not late], 0)
    fetched: list[tuple[list[bytes], int]] = []
    node.core.certificates._fetch = lambda digests, source, round_: fetched.append((list(digests), round_))
    parents = tuple(sorted(c.digest() for c in layers[2][:3]))
    child = Certificate(Header(sim.names[1], 3, (), parents, ((late.digest(), 1),), bytes(64)), ())
    assert node.core.dag.missing(child.header, gc_round=1) == []  # once collected: not waited for
    await node.core.certificates.accept_certificate(child)
    assert child.digest() not in node.core.dag
    assert fetched == [([late.digest()], 1)]
    await node.core.certificates.accept_certificate(late)
    assert late.digest() in node.core.dag and child.digest() in node.core.dag


async def test_a_lagging_validators_skipped_round_is_committed_through_a_weak_link():
    """Node 3's round-1 certificate reaches nobody (its broadcast is lost) and node 3 is
    then away while the others go on: when it is back it jumps ahead, so no certificate of
    round 2 will ever name its round-1 one. Its next header links it weakly; the others
    fetch it, and the next leader commits it: its batch is committed once everywhere, and
    nobody proposed it again (before weak links it waited for the GC horizon, or was
    proposed again once passed over)."""
    sim = Simulation(4, gc_depth=50)
    late = sim.names[3]
    digest = os.urandom(32)
    await sim.make_batch(3, digest)
    sim.drop = lambda sender, receiver, m: (isinstance(m, Certificate) and sender == late
                                            and m.header.round == 1)
    try:
        sim.start()
        lagging = sim.nodes[late].node
        await sim.run_until(lambda: lagging.core.dag.has_author_round(late, 1), timeout=10)
        sim.down.add(late)
        others = [sim.nodes[n].node for n in sim.names[:3]]
        await sim.run_until(lambda: min(n.core.dag.highest_round for n in others) >= 8, timeout=20)
        assert all(not n.core.dag.has_author_round(late, 1) for n in others)
        sim.down.discard(late)
        orphan = lagging.core.dag.round(1)[late].digest()

        def committed_everywhere() -> bool:
            return all(any(digest in dict(c.header.payload) for c in n.node.committed)
                       for n in sim.nodes.values())

        await sim.run_until(committed_everywhere, timeout=20)
        for sim_node in sim.nodes.values():
            assert [c.digest() for c in sim_node.node.committed
                    if digest in dict(c.header.payload)] == [orphan]  # once, its first header
            assert sim_node.node.consensus.state.last_committed_round < 50  # before any horizon
        linked = {d for n in sim.nodes.values() for c in n.node.committed for d, _ in c.header.weak_links}
        assert orphan in linked
        assert lagging.core.counters["batches_reproposed"] == 0
        assert lagging.status()["weak_links_proposed"] >= 1
        assert all(n.node.status()["batches_reproposed_at_horizon"] == 0 for n in sim.nodes.values())
    finally:
        await sim.stop()


async def test_genesis_parents_are_still_checked_for_round_one(sim):
    """``Dag.missing`` never treats genesis as collected: a round-1 header naming a parent
    that is not a genesis certificate is parked, not voted for."""
    sim.start()
    await sim.stop()
    node, author = sim.nodes[sim.names[0]].node, sim.keys[1]
    parents = sorted(genesis_digests(sim))[:2] + [b"\x09" * 32]
    await node.core.handle_header(signed_header(author, 1, parents), author.name)
    assert node.core.voted.get((author.name, 1)) is None
