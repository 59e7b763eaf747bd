"""Retention of a primary's history: rounds and output older than retain_seconds leave the
store (certificates and their index, payload records, votes and the headers voted for,
output records), the node keeps committing the same order as the others, and a restart
after pruning works from what is left (its marks survive it)."""

from __future__ import annotations

import os

from narwhal.primary import history
from narwhal.primary import node as primary_node

from .sim import Simulation


def rounds_of(store, family: str) -> list[int]:
    return sorted({int.from_bytes(k[:8], "big") for k in store.families[family]})


async def test_old_history_is_deleted_and_the_node_goes_on(monkeypatch):
    monkeypatch.setattr(history, "MARK_INTERVAL", 0.05)
    monkeypatch.setattr(primary_node, "HISTORY_PRUNE_INTERVAL", 0.1)
    sim = Simulation(4, gc_depth=10, retain_seconds=0.5)
    name = sim.names[0]
    try:
        sim.start()
        for i in range(40):
            await sim.make_batch(i % 4, os.urandom(32))
        await sim.run_until(lambda: sim.nodes[name].node.history.pruned_index > 20, timeout=30)
        node, store = sim.nodes[name].node, sim.nodes[name].store
        pruned_round, pruned_index = node.history.pruned_round, node.history.pruned_index
        assert rounds_of(store, "certificates_by_round")[0] > pruned_round
        assert min(int.from_bytes(k, "big") for k in store.families["output"]) >= pruned_index
        votes = {int.from_bytes(k[32:], "big") for k in store.families["votes"]}
        assert min(votes) > pruned_round
        assert len(store.families["certificates"]) == len(store.families["certificates_by_round"])
        status = node.status()["history"]
        assert status["deleted"]["certificates"] > 0 and status["deleted"]["output"] > 0
        assert status["deleted"]["headers"] > 0 and status["deleted"]["payload"] > 0

        # the restarted node reads what is left, its marks included, and goes on
        await sim.restart(name)
        assert sim.nodes[name].node.history.marks
        top = max(sim.rounds())
        await sim.run_until(lambda: sim.nodes[name].node.core.dag.highest_round >= top + 10)
        records = [n.store.families["output"] for n in sim.nodes.values()]
        common = set.intersection(*(set(r) for r in records))
        assert len(common) > 5
        assert all(len({bytes(r[k]) for r in records}) == 1 for k in common)  # same order everywhere
    finally:
        await sim.stop()
