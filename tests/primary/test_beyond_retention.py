"""A node away for longer than its peers keep history (``retain_seconds``) cannot catch up
by fetching: every peer deleted the rounds right after the last one it holds. It says so,
once (and in ``/status``), finds a checkpoint peers of f+1 stake agree on
(:mod:`narwhal.primary.state_sync`), resumes consensus from it, and then commits exactly
what the others commit, index for index; the indexes it skipped are never served as if
it had them. Before this, such a node fetched in silence for ever."""

from __future__ import annotations

import logging

from narwhal.consensus.protocols import leader_of
from narwhal.consensus.records import decode_output_record
from narwhal.primary.core import round_key

from .sim import MemoryStore, Simulation


def prune_through(store: MemoryStore, round_: int) -> None:
    """What HistoryRetention does to a peer's certificates: rounds <= ``round_`` go."""
    by_round = store.families["certificates_by_round"]
    for key in [k for k in by_round if k < round_key(round_ + 1)]:
        store.families["certificates"].pop(by_round.pop(key), None)


async def down_while_the_others_reach(sim: Simulation, rounds: int) -> tuple[bytes, list]:
    """Node 3 is down while the others reach ``rounds``; (its name, the others)."""
    lagging_name = sim.names[3]
    others = [sim.nodes[name] for name in sim.names[:3]]
    sim.start()
    sim.down.add(lagging_name)
    await sim.run_until(lambda: min(o.node.core.dag.highest_round for o in others) >= rounds)
    return lagging_name, others


async def test_a_node_away_longer_than_the_peers_retention_resumes_by_state_transfer(caplog):
    sim = Simulation(4, gc_depth=10)
    try:
        lagging_name, others = await down_while_the_others_reach(sim, 60)
        for other in others:
            prune_through(other.store, 40)
        lagging = sim.nodes[lagging_name].node
        assert lagging.core.dag.highest_round < 5
        caplog.set_level(logging.WARNING, logger="narwhal.primary")
        sim.down.discard(lagging_name)
        await sim.run_until(lambda: lagging.state_transfers == 1, timeout=30)
        said = [r.getMessage() for r in caplog.records if r.name == "narwhal.primary.fetcher"]
        assert len(said) == 1 and "every peer has deleted the rounds after it" in said[0], said
        assert "retain_seconds" in said[0]
        # each peer was asked: the first to show a gap does not speak for the others
        assert lagging.fetcher.bulk_requests >= 3

        # it resumed: it votes, proposes and commits again where the others are
        floor = lagging.output_floor
        assert floor > 1 and lagging.status()["state_transfers"] == 1
        target = max(o.node.consensus_index for o in others) + 20
        await sim.run_until(lambda: lagging.consensus_index >= target, timeout=30)
        await sim.run_until(lambda: lagging.proposer.last_proposed >= min(
            o.node.core.dag.highest_round for o in others), timeout=30)
        # ... committing exactly what the others commit, index for index, from the floor on
        ours = outputs(sim.nodes[lagging_name].store)
        theirs = outputs(others[0].store)
        assert set(range(floor, lagging.consensus_index + 1)) <= set(ours)  # contiguous
        assert all(ours[i] == theirs[i] for i in ours), "the node that resumed disagrees"
        before = [i for i in ours if i < floor]  # what it computed before it went away
        assert before == list(range(1, len(before) + 1))
        assert len(before) + 1 < floor  # it skipped indexes: it never claims to have them
        assert all(n.node.core.counters["equivocation"] == 0 for n in sim.nodes.values())
    finally:
        await sim.stop()


def outputs(store: MemoryStore) -> dict[int, bytes]:
    return {int.from_bytes(k, "big"): v for k, v in store.families["output"].items()}


async def test_every_node_holds_the_same_checkpoint_for_each_committed_leader():
    sim = Simulation(4, gc_depth=10)
    try:
        sim.start()
        await sim.run_until(lambda: min(n.node.consensus_index for n in sim.nodes.values()) >= 100)
        await sim.stop()
        nodes = [n.node for n in sim.nodes.values()]
        answers = [await node.checkpoint_at_or_after(20) for node in nodes]
        assert len(set(answers)) == 1, answers
        checkpoint = answers[0]
        assert checkpoint.leader_round >= 20 and checkpoint.index > 0
        # the output record at its index is the leader of its round, and the state is the
        # highest round of each author output up to there
        records = [decode_output_record(v) for k, v in sorted(
            sim.nodes[sim.names[0]].store.families["output"].items())
            if int.from_bytes(k, "big") <= checkpoint.index]
        _, round_, author, _, _ = records[-1]
        assert (round_, author) == (checkpoint.leader_round, leader_of(sim.committee, round_))
        highest: dict[bytes, int] = {}
        for _, r, a, _, _ in records:
            highest[a] = max(highest.get(a, 0), r)
        assert dict(checkpoint.last_committed) == highest
    finally:
        await sim.stop()


async def test_one_peer_that_pruned_is_not_all_peers():
    sim = Simulation(4, gc_depth=10)
    try:
        lagging_name, others = await down_while_the_others_reach(sim, 60)
        prune_through(others[0].store, 40)  # one peer pruned; the other two still hold it all
        lagging = sim.nodes[lagging_name].node
        sim.down.discard(lagging_name)
        await sim.run_until(lambda: lagging.core.dag.highest_round >= 60, timeout=30)
        assert not lagging.fetcher.beyond_retention
    finally:
        await sim.stop()
