"""A restart reads only the rounds that can still matter, so its time does not grow with the
history kept on disk, and the restarted node goes on exactly as the others."""

from __future__ import annotations

import logging
import re

from .sim import Simulation


async def test_a_restart_reads_the_gc_window_not_the_whole_history(caplog):
    sim = Simulation(4, gc_depth=10)
    name = sim.names[0]
    try:
        sim.start()
        await sim.run_until(lambda: min(sim.rounds()) >= 80)
        stored = len(sim.nodes[name].store.families["certificates"])
        with caplog.at_level(logging.INFO, logger="narwhal.primary.node"):
            await sim.restart(name)
        found = re.search(r"restored (\d+) certificates of rounds (\d+)\.\.(\d+)", caplog.text)
        assert found, caplog.text
        restored, first, highest = map(int, found.groups())
        assert stored >= 80 * 3 and highest >= 80
        assert highest - first <= 2 * 10 + 4  # the GC window (and consensus's), not 80 rounds
        assert restored <= 4 * (highest - first + 1) < stored / 2
        before = len(sim.nodes[name].node.committed)
        await sim.run_until(lambda: min(sim.rounds()) >= highest + 20)
        # it goes on committing, in the same order as everyone else
        outputs = [[c.digest() for c in n.node.committed] for n in sim.nodes.values()]
        assert len(outputs[0]) > before
        ours = sim.nodes[name].node.consensus_index
        indexes = [n.node.consensus_index for n in sim.nodes.values()]
        assert ours >= min(indexes) - 20
        records = [sorted(n.store.families["output"].items()) for n in sim.nodes.values()]
        shortest = min(len(r) for r in records)
        assert shortest > 0 and all(r[:shortest] == records[0][:shortest] for r in records)
    finally:
        await sim.stop()
