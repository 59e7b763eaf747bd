"""Proposer, core and aggregators without sockets: an in-memory network of real PrimaryNodes."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import attrs
import pytest

from narwhal.errors import RequestRejected
from narwhal.messages import Certificate, FetchCertificates, Header, Synchronize, Vote
from narwhal.primary.aggregators import CertificatesAggregator, VotesAggregator
from narwhal.primary.node import PrimaryNode

from .sim import Simulation


def signed_header(keys, round_, parents, payload=()):
    unsigned = Header(keys.name, round_, tuple(sorted(payload)), tuple(sorted(parents)), (), bytes(64))
    return attrs.evolve(unsigned, signature=keys.signing.sign(unsigned.digest()))


def genesis_digests(sim):
    return [c.digest() for c in Certificate.genesis(sim.names)]


async def test_four_nodes_advance_rounds_and_agree_on_certificates(sim):
    sim.start()
    for i in range(8):
        await sim.make_batch(i % 4, os.urandom(32))
    await sim.run_until(lambda: min(sim.rounds()) >= 20)
    nodes = list(sim.nodes.values())
    quorum = sim.committee.quorum_threshold()
    by_author_round: dict = {}
    for sim_node in nodes:
        for round_ in sim_node.node.core.dag.rounds():
            for author, certificate in sim_node.node.core.dag.round(round_).items():
                if round_ == 0:
                    continue
                assert len(certificate.votes) >= quorum  # every certificate has 2f+1 signers
                other = by_author_round.setdefault((author, round_), certificate)
                assert other.digest() == certificate.digest()  # one certificate per (author, round)
    assert all(n.errors == [] for n in nodes)
    assert all(n.node.core.counters["equivocation"] == 0 for n in nodes)
    # consensus commits and its order agrees across nodes (prefixes of one another)
    outputs = [[c.digest() for c in n.node.committed] for n in nodes]
    shortest = min(len(o) for o in outputs)
    assert shortest > 0 and all(o[:shortest] == outputs[0][:shortest] for o in outputs)
    # the batches made it into headers
    payload = {d for n in nodes for c in n.node.committed for d, _ in c.header.payload}
    assert len(payload) >= 1


async def test_one_node_down_the_others_keep_advancing_then_it_catches_up(sim):
    sim.start()
    down = sim.names[3]
    sim.down.add(down)
    await sim.run_until(lambda: min(r for n, r in zip(sim.names, sim.rounds()) if n != down) >= 15)
    assert sim.nodes[down].node.core.dag.highest_round < 5
    sim.down.discard(down)
    await sim.run_until(lambda: sim.nodes[down].node.core.dag.highest_round >= 15, timeout=30)
    # it fetched the missing history and proposes again
    await sim.run_until(lambda: sim.nodes[down].node.proposer.last_proposed >= 15, timeout=30)


async def _down_until_others_reach(sim: Simulation, rounds: int,
                                   before_up: Callable[[PrimaryNode], None] = lambda node: None,
                                   ) -> PrimaryNode:
    """Node 3 down while the others reach ``rounds``, then up again until its DAG does."""
    sim.start()
    down = sim.names[3]
    sim.down.add(down)
    await sim.run_until(lambda: min(r for n, r in zip(sim.names, sim.rounds()) if n != down) >= rounds)
    lagging = sim.nodes[down].node
    assert lagging.core.dag.highest_round < 5
    before_up(lagging)
    sim.down.discard(down)
    await sim.run_until(lambda: lagging.core.dag.highest_round >= rounds, timeout=30)
    return lagging


async def test_a_node_far_behind_catches_up_in_bulk_not_one_round_trip_per_round():
    # gc_depth 10: the others' sends to it are cancelled long before it is back, so what it
    # gets is what it fetches (with the default depth their retries raced the fetch, and
    # now and then brought most of it: fetched 18 in a full-suite run)
    sim = Simulation(4, gc_depth=10)
    certificates_per_write: list[int] = []

    def count_writes(node: PrimaryNode) -> None:
        write = node.store.write

        async def counting(ops, durable=False):
            certificates_per_write.append(sum(1 for family, _, _ in ops if family == "certificates"))
            await write(ops, durable)

        node.store.write = counting

    try:
        lagging = await _down_until_others_reach(sim, 60, count_writes)
        fetcher = lagging.fetcher
        assert fetcher.bulk_requests >= 1
        # ~55 missing rounds: walking back would take ~55 requests, one page brings them
        assert fetcher.bulk_requests <= 5 and fetcher.fetched >= 150
        # ... and is written at once, not one store write (and wait) per certificate
        assert max(certificates_per_write) >= 100
        assert all(n.node.core.counters["equivocation"] == 0 for n in sim.nodes.values())
    finally:
        await sim.stop()


async def test_catch_up_asks_consecutive_pages_of_two_peers_at_once():
    """Far behind, a node asks two peers at once for two consecutive bulk pages (the second
    starting a little before where the first must end), so no one peer serves all of its
    catch-up and each round trip brings two pages."""
    sim = Simulation(4, gc_depth=10)
    asked: list[tuple[bytes, int]] = []

    def record_pages(node: PrimaryNode) -> None:
        request = node.fetcher._request

        async def recording(peer, message, timeout):
            if isinstance(message, FetchCertificates):
                asked.append((peer, message.after_round))
            return await request(peer, message, timeout)

        node.fetcher._request = recording

    try:
        lagging = await _down_until_others_reach(sim, 600, record_pages)
        assert len(asked) >= 2
        (first_peer, first_after), (second_peer, second_after) = asked[:2]
        assert first_peer != second_peer
        # a page holds 1,000 certificates: 250 rounds of 4; the next starts 2 rounds early
        assert second_after == first_after + 1000 // 4 - 2
        assert lagging.core.dag.highest_round >= 600
        assert all(n.node.core.counters["equivocation"] == 0 for n in sim.nodes.values())
    finally:
        await sim.stop()


async def test_a_node_behind_by_more_than_max_rounds_ahead_learns_it_and_catches_up(monkeypatch):
    """Everything the others send is refused as too far ahead, yet a valid certificate
    among it proves where the committee is: the node must catch up (it used to stay at its
    round for ever: seen after 120 s down at 20,000 tx/s, bench/local.py --restart-down)."""
    monkeypatch.setattr("narwhal.primary.checks.MAX_ROUNDS_AHEAD", 20)
    # gc_depth 10: the others' sends to it of rounds it could still accept are cancelled
    # (garbage-collected) long before it is back, as in a real long outage
    sim = Simulation(4, gc_depth=10)
    try:
        lagging = await _down_until_others_reach(sim, 60)
        assert lagging.core.counters["certificate_too_far_ahead"] >= 1  # it was refusing them
        assert lagging.core.counters["far_behind"] >= 1 and lagging.fetcher.bulk_requests >= 1
        await sim.run_until(lambda: lagging.proposer.last_proposed >= 60, timeout=30)
        assert all(n.node.core.counters["equivocation"] == 0 for n in sim.nodes.values())
    finally:
        await sim.stop()


async def test_equivocating_header_gets_no_second_vote(sim):
    node = sim.nodes[sim.names[0]].node
    author = sim.keys[1]
    first = signed_header(author, 1, genesis_digests(sim))
    second = signed_header(author, 1, genesis_digests(sim), payload=[(b"\x07" * 32, 0)])
    await node.core.batch_available(b"\x07" * 32, 0)
    await node.on_header(author.name, first)
    await node.on_header(author.name, second)
    assert node.core.counters["votes_cast"] == 1
    assert node.core.counters["equivocation"] == 1
    votes = [m for _, m in sim.nodes[sim.names[0]].network.sent if isinstance(m, Vote)]
    assert [v.header_digest for v in votes] == [first.digest()]


async def test_vote_is_persisted_before_it_is_sent(sim):
    sim_node = sim.nodes[sim.names[0]]
    author = sim.keys[1]
    header = signed_header(author, 1, genesis_digests(sim))
    await sim_node.node.on_header(author.name, header)
    assert ("votes", author.name + (1).to_bytes(8, "big")) in sim_node.store.log
    assert any(isinstance(m, Vote) for _, m in sim_node.network.sent)


async def test_restarted_node_never_votes_twice_nor_reproposes(sim):
    name = sim.names[0]
    author = sim.keys[1]
    header = signed_header(author, 1, genesis_digests(sim))
    await sim.nodes[name].node.on_header(author.name, header)
    sim.start(name)
    await sim.run_until(lambda: sim.nodes[name].node.proposer.last_proposed >= 1)
    proposed = sim.nodes[name].node.proposer.last_proposed
    await sim.restart(name)
    restarted = sim.nodes[name].node
    assert restarted.proposer.round > proposed
    other = signed_header(author, 1, genesis_digests(sim), payload=[(b"\x09" * 32, 0)])
    await restarted.core.batch_available(b"\x09" * 32, 0)
    await restarted.on_header(author.name, other)
    assert restarted.core.counters["votes_cast"] == 0
    assert restarted.core.counters["equivocation"] == 1


@pytest.mark.parametrize("case", ["bad_signature", "non_member", "wrong_sender", "too_far_ahead"])
async def test_invalid_headers_are_rejected_with_a_reason(sim, case):
    node = sim.nodes[sim.names[0]].node
    author = sim.keys[1]
    header = signed_header(author, 1, genesis_digests(sim))
    sender = author.name
    if case == "bad_signature":
        header = attrs.evolve(header, signature=bytes(64))
    elif case == "non_member":
        from narwhal.crypto import AuthorityKeys

        header = signed_header(AuthorityKeys.generate(1), 1, genesis_digests(sim))
        sender = header.author
    elif case == "wrong_sender":
        sender = sim.names[2]
    elif case == "too_far_ahead":
        header = signed_header(author, 5_000, genesis_digests(sim))
    with pytest.raises(RequestRejected):
        await node.on_header(sender, header)
    assert node.core.counters[f"header_{case}"] == 1
    assert node.core.counters["votes_cast"] == 0


async def test_header_with_unknown_parents_is_parked_and_fetched(sim):
    node = sim.nodes[sim.names[0]].node
    author = sim.keys[1]
    header = signed_header(author, 2, [os.urandom(32) for _ in range(3)])
    await node.on_header(author.name, header)
    assert node.core.counters["header_parked"] == 1
    assert node.fetcher.wanted == 3  # asked for, from the header's author first
    assert node.core.counters["votes_cast"] == 0


async def test_header_with_missing_payload_asks_workers_and_waits(sim):
    sim_node = sim.nodes[sim.names[0]]
    author = sim.keys[1]
    batch = os.urandom(32)
    header = signed_header(author, 1, genesis_digests(sim), payload=[(batch, 0)])
    await sim_node.node.on_header(author.name, header)
    assert sim_node.node.core.counters["votes_cast"] == 0
    await asyncio.sleep(0)  # the Synchronize is sent from a background task
    syncs = sim_node.network.to_worker_log
    assert syncs and syncs[-1].digests == (batch,) and syncs[-1].target == author.name
    await sim_node.node.on_batch(batch, 0, ours=False)  # the worker fetched it
    assert sim_node.node.core.counters["votes_cast"] == 1


async def test_a_batch_forgotten_at_the_gc_horizon_needs_no_worker_round_trip(sim):
    """Batches proposed again (their first header orphaned) are older than the GC horizon,
    which dropped them from memory: the payload record in the store still vouches for
    them, so the vote is not held up by a Synchronize to our worker."""
    sim_node = sim.nodes[sim.names[0]]
    core, author = sim_node.node.core, sim.keys[1]
    batch = os.urandom(32)
    await sim_node.node.on_batch(batch, 0, ours=False)  # our worker stored it: recorded
    await core.garbage_collect(core.frontier + 5)  # ...and forgotten from memory
    assert (batch, 0) not in core.payload
    header = signed_header(author, core.gc_round + 2, [os.urandom(32)], payload=[(batch, 0)])
    assert core.payload.missing(header.payload) == []  # found in the store, known again
    assert (batch, 0) in core.payload
    unknown = signed_header(author, core.gc_round + 2, [os.urandom(32)], payload=[(os.urandom(32), 0)])
    assert len(core.payload.missing(unknown.payload)) == 1  # never stored here: still asked for


async def test_vote_for_a_header_we_did_not_send_is_rejected(sim):
    node = sim.nodes[sim.names[0]].node
    voter = sim.keys[1]
    unsigned = Vote(os.urandom(32), 1, sim.names[0], voter.name, bytes(64))
    vote = attrs.evolve(unsigned, signature=voter.signing.sign(unsigned.digest()))
    with pytest.raises(RequestRejected):
        await node.on_vote(voter.name, vote)
    assert node.core.counters["vote_unexpected"] == 1


async def test_certificates_with_too_few_or_bad_signers_are_rejected(sim):
    node = sim.nodes[sim.names[0]].node
    author = sim.keys[1]
    header = signed_header(author, 1, genesis_digests(sim))
    vote_digest = Vote(header.digest(), 1, author.name, author.name, bytes(64)).digest()
    votes = sorted((k.name, k.signing.sign(vote_digest)) for k in sim.keys[1:3])  # 2 < quorum 3
    with pytest.raises(RequestRejected):
        await node.on_certificate(author.name, Certificate(header, tuple(votes)))
    assert node.core.counters["certificate_insufficient_stake"] == 1
    forged = sorted((k.name, bytes(64)) for k in sim.keys[1:4])
    with pytest.raises(RequestRejected):
        await node.on_certificate(author.name, Certificate(header, tuple(forged)))
    assert node.core.counters["certificate_bad_signature"] == 1
    good = sorted((k.name, k.signing.sign(vote_digest)) for k in sim.keys[1:4])
    await node.on_certificate(author.name, Certificate(header, tuple(good)))
    assert node.core.counters["certificates_accepted"] == 1


def test_aggregators_count_distinct_stake_once():
    sim = Simulation(4)
    committee = sim.committee
    header = signed_header(sim.keys[0], 1, genesis_digests(sim))
    aggregator = VotesAggregator(header, committee)
    vote = Vote(header.digest(), 1, header.author, sim.names[1], bytes(64))
    assert aggregator.append(vote) is None
    assert aggregator.append(vote) is None and aggregator.weight == 1  # duplicate ignored
    assert aggregator.append(attrs.evolve(vote, author=sim.names[2])) is None
    certificate = aggregator.append(attrs.evolve(vote, author=sim.names[3]))
    assert certificate is not None and len(certificate.votes) == 3
    assert aggregator.append(attrs.evolve(vote, author=sim.names[0])) is None  # only once
    parents = CertificatesAggregator(committee)
    genesis = Certificate.genesis(sim.names)
    assert [parents.append(c) for c in genesis[:2]] == [None, None]
    assert parents.append(genesis[2]) is not None
    assert parents.append(genesis[3]) is None and len(parents.digests()) == 4


async def test_restarted_node_reproposes_an_uncertified_header_and_gets_it_certified(sim):
    """Crash after proposing, with the votes lost: the restarted node sends the same header
    again, the others vote again for that same digest, and the header is certified."""
    name = sim.names[0]
    sim.drop = lambda sender, receiver, message: receiver == name and isinstance(message, Vote)
    sim.start()
    await sim.run_until(lambda: sim.nodes[name].node.proposer.last_proposed >= 3)
    await sim.stop(name)
    last = sim.nodes[name].node.proposer.last_proposed
    assert name not in sim.nodes[name].node.core.dag.round(last)  # never certified
    sim.drop = lambda sender, receiver, message: False
    await sim.restart(name)
    await sim.run_until(lambda: sim.nodes[name].node.core.counters["header_reproposed"] == 1)
    await sim.run_until(lambda: name in sim.nodes[name].node.core.dag.round(last), timeout=30)
    assert all(n.node.core.counters["equivocation"] == 0 for n in sim.nodes.values())


async def test_parents_arriving_while_a_header_is_being_stored_are_not_lost():
    """Regression: the quorum of round r can complete while the proposer is still writing
    its round-r header; the proposer must then go on to round r+1, not wait for ever."""
    from narwhal.primary.proposer import Proposer

    class SlowStore:
        async def write(self, ops, durable=False):
            proposer.parents_ready(1, (b"\x01" * 32,))  # arrives during the durable write
            await asyncio.sleep(0)

    proposed = []

    async def propose(header):
        proposed.append(header.round)

    sim = Simulation(4)
    proposer = Proposer(name=sim.names[0], signer=sim.keys[0].signing, store=SlowStore(),
                        propose=propose, header_size=1, max_header_delay=0.01,
                        genesis_parents=tuple(genesis_digests(sim)))
    task = asyncio.ensure_future(proposer.run())
    try:
        await sim.run_until(lambda: len(proposed) >= 2, timeout=5)
    finally:
        task.cancel()
    assert proposed[:2] == [1, 2]


async def test_a_repeated_own_batch_report_is_proposed_once(sim):
    node = sim.nodes[sim.names[0]].node
    digest = os.urandom(32)
    await node.on_batch(digest, 0, ours=True)
    await node.on_batch(digest, 0, ours=True)  # the worker retried: our ack was lost
    assert node.proposer.pending_digests == 1


async def test_committed_transactions_are_counted_from_the_workers_reports(sim):
    sim.start()
    for i in range(4):
        await sim.make_batch(i, os.urandom(32))  # 10 transactions each
    await sim.run_until(lambda: all(n.node.transactions_committed == 40 for n in sim.nodes.values()))


@pytest.mark.parametrize("coming, arrives", [(3, False), (4, True), (4, False)])
async def test_a_due_header_waits_briefly_for_a_certificate_known_to_be_coming(coming, arrives):
    """With 3 of 4 certificates of the parents' round held: if we voted for the fourth
    author's header (``coming`` = 4), the header waits for its certificate, but never longer
    than the grace; if not (a crashed authority, ``coming`` = 3), it is proposed at once."""
    from narwhal.primary.proposer import Proposer

    class Store:
        async def write(self, ops, durable=False):
            pass

    held = [b"\x01" * 32, b"\x02" * 32, b"\x03" * 32]
    proposed: list[tuple[int, float, tuple[bytes, ...]]] = []
    loop = asyncio.get_running_loop()

    async def propose(header):
        proposed.append((header.round, loop.time(), header.parents))

    sim = Simulation(4)
    proposer = Proposer(name=sim.names[0], signer=sim.keys[0].signing, store=Store(),
                        propose=propose, header_size=1_000_000, max_header_delay=0.05,
                        parents_grace=0.5, genesis_parents=tuple(genesis_digests(sim)),
                        all_parents=lambda round_: tuple(held) if round_ == 1 else (),
                        certificates_coming=lambda round_: coming if round_ == 1 else 0)
    task = asyncio.ensure_future(proposer.run())
    try:
        await sim.run_until(lambda: len(proposed) >= 1, timeout=5)  # round 1, on genesis
        ready = loop.time()
        proposer.parents_ready(1, tuple(held))
        if coming == 4:
            await asyncio.sleep(0.2)  # past max_header_delay: due, but waiting
            assert len(proposed) == 1
        if arrives:
            held.append(b"\x04" * 32)
            proposer.certificate_arrived(1)
        await sim.run_until(lambda: len(proposed) >= 2, timeout=5)
    finally:
        task.cancel()
    round_, at, parents = proposed[1]
    assert round_ == 2 and len(parents) == (4 if arrives else 3)
    if coming == 4 and not arrives:
        assert 0.45 <= at - ready < 1.5  # gave up after the grace
    else:
        assert at - ready < 0.45  # proposed when the last one came, or at once


async def test_an_orphaned_header_is_proposed_again_as_soon_as_it_cannot_be_committed(sim):
    """Node 0's round-1 header never becomes a certificate (its votes are lost), so once all
    four round-2 certificates exist none can reference it: its batch is proposed again at
    once, long before the GC horizon, and committed exactly once everywhere."""
    digest = os.urandom(32)
    await sim.make_batch(0, digest)
    me = sim.names[0]
    sim.drop = lambda sender, receiver, m: isinstance(m, Vote) and receiver == me and m.round == 1
    sim.start()
    node = sim.nodes[me].node
    await sim.run_until(lambda: node.core.counters["batches_reproposed"] == 1, timeout=10)
    assert node.consensus.state.last_committed_round < sim.parameters.gc_depth  # no horizon yet
    assert me not in node.core.dag.round(1)  # the orphan was never certified
    sim.drop = lambda sender, receiver, message: False

    def committed_everywhere() -> bool:
        return all(any(digest in dict(c.header.payload) for c in n.node.committed)
                   for n in sim.nodes.values())

    await sim.run_until(committed_everywhere, timeout=20)
    await sim.run_until(lambda: min(sim.rounds()) >= 12)
    for sim_node in sim.nodes.values():
        carrying = [c for c in sim_node.node.committed if digest in dict(c.header.payload)]
        assert len(carrying) == 1  # exactly once
    assert node.store.keys("reproposed") == [(1).to_bytes(8, "big")]  # a restart will not redo it


async def test_a_batch_proposed_again_is_not_proposed_a_third_time_after_a_restart():
    sim = Simulation(4, gc_depth=5)
    try:
        digest = os.urandom(32)
        await sim.make_batch(0, digest)
        me = sim.names[0]
        sim.drop = lambda sender, receiver, m: isinstance(m, Vote) and receiver == me and m.round == 1
        sim.start()
        await sim.run_until(lambda: sim.nodes[me].node.core.counters["batches_reproposed"] == 1, timeout=10)
        sim.drop = lambda sender, receiver, message: False
        await sim.run_until(lambda: any(digest in dict(c.header.payload) for c in sim.nodes[me].node.committed))
        await sim.restart(me)  # its store still holds the orphaned round-1 header
        restarted = sim.nodes[me].node
        await sim.run_until(lambda: restarted.consensus.state.last_committed_round > 20, timeout=30)
        assert restarted.core.counters["batches_reproposed"] == 0  # the horizon passed round 1
        for sim_node in sim.nodes.values():
            outputs = [c for _, blob in sim_node.store.items("output")
                       for c in [blob] if digest in blob]
            assert len(outputs) == 1  # in the durable output exactly once
    finally:
        await sim.stop()


async def test_committed_batches_a_caught_up_node_lacks_are_asked_for_until_held():
    """Issue 11: a node down while batches were made commits them while catching up, in
    rounds its GC horizon passes at once, so the header path's Synchronize (bound to the
    round) is gone. The committed batches are still asked of our worker (target: the
    certificate's author) until it reports them stored — and again after a restart."""
    sim = Simulation(4, gc_depth=3)
    late = sim.names[3]
    try:
        sim.start()
        sim.down.add(late)
        batches = {os.urandom(32): i for i in range(3)}
        for digest, author_index in batches.items():
            await sim.make_batch(author_index, digest, only=sim.names[:3])
        await sim.run_until(lambda: min(sim.rounds()[:3]) >= 20)
        sim.down.discard(late)
        node = sim.nodes[late].node
        await sim.run_until(lambda: node.core.gc_round >= 10 and all(
            (d, 0) in node.committed_batches for d in batches))

        def asked() -> dict[bytes, bytes]:
            return {d: m.target for m in sim.nodes[late].network.to_worker_log
                    if isinstance(m, Synchronize) for d in m.digests}
        await sim.run_until(lambda: batches.keys() <= asked().keys())
        assert all(asked()[d] == sim.names[i] for d, i in batches.items())  # from the author
        assert node.committed_batches.status()["oldest_missing_index"] >= 1

        await sim.restart(late)  # the wish survives a restart (rebuilt from the output)
        node = sim.nodes[late].node
        assert all((d, 0) in node.committed_batches for d in batches)
        for digest in batches:  # our worker fetched them
            await node.on_batch(digest, 0, ours=False)
        assert len(node.committed_batches) == 0
        assert node.committed_batches.status()["batches_arrived"] == 3
    finally:
        await sim.stop()


async def test_a_replayed_header_is_dropped_before_its_signature_is_verified_again(sim, monkeypatch):
    """Issue 12: a peer replaying a header we already verified costs us a hash, not a
    signature verification, whether we parked it or voted for it (and re-voted once)."""
    from narwhal.primary import checks
    node = sim.nodes[sim.names[0]].node
    author = sim.keys[1]
    parked = signed_header(author, 2, [os.urandom(32) for _ in range(3)])  # unknown parents
    voted = signed_header(author, 1, genesis_digests(sim))
    verified = []
    real_verify = checks.crypto.verify
    monkeypatch.setattr(checks.crypto, "verify",
                        lambda *args: verified.append(args) or real_verify(*args))
    await node.on_header(author.name, parked)
    await node.on_header(author.name, voted)
    assert len(verified) == 2 and node.core.counters["votes_cast"] == 1
    await node.on_header(author.name, voted)  # its author restarted: our vote again, once
    assert len(verified) == 3
    for _ in range(5):
        await node.on_header(author.name, parked)
        await node.on_header(author.name, voted)
    assert len(verified) == 3 and node.core.counters["header_duplicate"] == 10
    assert node.core.counters["votes_cast"] == 1
    with pytest.raises(RequestRejected):  # the sender check still comes first
        await node.on_header(sim.names[2], voted)


async def test_one_author_flooding_headers_cannot_push_out_another_authors_parked_header(sim):
    """Issue 12: parking is shared per author. A Byzantine author sending many distinct
    valid headers (unknown parents, so all parked) only pushes out its own; a second header
    for a parked (author, round) is equivocation, not parked."""
    from narwhal.primary.checks import MAX_ROUNDS_AHEAD
    from narwhal.primary.core import MAX_PARKED_HEADERS
    core = sim.nodes[sim.names[0]].node.core
    honest, byzantine = sim.keys[2], sim.keys[1]
    kept = signed_header(honest, 3, [os.urandom(32) for _ in range(3)])
    await core.handle_header(kept, honest.name)
    share = core._parked_headers.per_author
    flood = min(MAX_ROUNDS_AHEAD, share + 50)
    for round_ in range(2, 2 + flood):  # 4 headers a round: more than all the space there is
        for _ in range(4):
            await core.handle_header(signed_header(byzantine, round_, [os.urandom(32)]),
                                     byzantine.name)
    assert 4 * flood > MAX_PARKED_HEADERS
    assert core._parked_headers.holds(kept)
    assert len(core._parked_headers) == 1 + min(flood, share)
    assert core.counters["header_parked_dropped"] == max(0, flood - share)
    assert core.counters["equivocation"] == 3 * flood
    twin = signed_header(honest, 3, [os.urandom(32) for _ in range(3)])
    await core.handle_header(twin, honest.name)
    assert core.counters["equivocation"] == 3 * flood + 1 and core._parked_headers.holds(kept)


async def test_catch_up_requests_are_read_on_a_reader_thread(tmp_path, monkeypatch):
    """Issue 12: a peer's CertificatesRequest / FetchCertificates is read off the loop."""
    import threading

    from narwhal.store import Reader, Store

    sim = Simulation(4)
    served = sim.names[0]
    store = Store.open(tmp_path / "primary.db", synchronous="NORMAL")
    sim.nodes[served] = sim._make(sim.nodes[served].keys, store)
    threads: list[int] = []
    real_get_many = Reader.get_many

    def spy(self, family, keys):
        threads.append(threading.get_ident())
        return real_get_many(self, family, keys)

    try:
        sim.start()
        await sim.run_until(lambda: min(sim.rounds()) >= 5)
        node = sim.nodes[served].node
        monkeypatch.setattr(Reader, "get_many", spy)
        after = await node.certificates_after(0, 100, source="peer")
        digests = [c.digest() for c in node.core.dag.round(2).values()]
        by_digest = await node.certificates_by_digest(digests, source="peer")
        assert len(threads) == 2 and threading.get_ident() not in threads
        assert len(by_digest.body) > 0 and len(after.body) > len(by_digest.body)
        assert node.status()["serving_reads"]["served"] == 2
    finally:
        await sim.stop()
        await store.close()


def test_consensus_reads_the_cores_dag(sim):
    """One DAG: consensus orders over the certificates the core holds, not over a copy."""
    node = sim.nodes[sim.names[0]].node
    assert node.consensus.state.dag is node.core.dag
