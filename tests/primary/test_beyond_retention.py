"""A node away for longer than its peers keep history (``retain_seconds``) cannot catch up
by fetching: every peer deleted the rounds right after the last one it holds. It must say
so, once, in words an operator can act on (and in ``/status``), instead of fetching in
silence for ever. (Catching up past the peers' retention needs a state transfer, which is
not built: this test pins what the node does meanwhile.)"""

from __future__ import annotations

import logging

from narwhal.primary.core import round_key

from .sim import MemoryStore, Simulation


def prune_through(store: MemoryStore, round_: int) -> None:
    """What HistoryRetention does to a peer's certificates: rounds <= ``round_`` go."""
    by_round = store.families["certificates_by_round"]
    for key in [k for k in by_round if k < round_key(round_ + 1)]:
        store.families["certificates"].pop(by_round.pop(key), None)


async def test_a_node_away_longer_than_the_peers_retention_says_it_cannot_catch_up(caplog):
    sim = Simulation(4, gc_depth=10)
    lagging_name = sim.names[3]
    others = [sim.nodes[name] for name in sim.names[:3]]
    try:
        sim.start()
        sim.down.add(lagging_name)
        await sim.run_until(lambda: min(o.node.core.dag.highest_round for o in others) >= 60)
        for other in others:
            prune_through(other.store, 40)
        lagging = sim.nodes[lagging_name].node
        assert lagging.core.dag.highest_round < 5
        caplog.set_level(logging.ERROR, logger="narwhal.primary.fetcher")
        sim.down.discard(lagging_name)
        await sim.run_until(lambda: lagging.fetcher.beyond_retention, timeout=30)
        assert lagging.status()["beyond_retention"] == 1
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "retain_seconds" in errors[0], errors
        assert "every peer has deleted the rounds after it" in errors[0]
        # each peer was asked: the first to show a gap does not speak for the others
        assert set(lagging.fetcher.pruned_at) == set(sim.names[:3])
        assert lagging.fetcher.bulk_requests >= 3
    finally:
        await sim.stop()


async def test_one_peer_that_pruned_is_not_all_peers():
    sim = Simulation(4, gc_depth=10)
    lagging_name = sim.names[3]
    others = [sim.nodes[name] for name in sim.names[:3]]
    try:
        sim.start()
        sim.down.add(lagging_name)
        await sim.run_until(lambda: min(o.node.core.dag.highest_round for o in others) >= 60)
        prune_through(others[0].store, 40)  # one peer pruned; the other two still hold it all
        lagging = sim.nodes[lagging_name].node
        sim.down.discard(lagging_name)
        await sim.run_until(lambda: lagging.core.dag.highest_round >= 60, timeout=30)
        assert not lagging.fetcher.beyond_retention
    finally:
        await sim.stop()
