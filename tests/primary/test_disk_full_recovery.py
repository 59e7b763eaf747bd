"""A primary whose disk fills up while the others go on, then gets space back: it catches
up, votes and commits again by itself, and its output stays contiguous.

Found with a real 64 MiB tmpfs under one of four validator processes (every write failing
with ENOSPC for 15 s, then the space freed): the node never voted again. A bulk page whose
store write failed killed the certificate fetcher's task, and the page's round was marked
as asked, so it was never asked again; certificates released from parking whose write
failed were dropped with nothing left to ask for them. Here the full disk is a store
whose every write raises :class:`~narwhal.store.StorageFailed`, as the real one does.
"""

from __future__ import annotations

from narwhal.store import StorageFailed

from .sim import MemoryStore, Simulation


class FullDiskStore(MemoryStore):
    """Every write fails while ``full`` is set, as on a full disk."""

    def __init__(self) -> None:
        super().__init__()
        self.full = False
        self.refused = 0

    async def write(self, ops, durable=False):
        if self.full:
            self.refused += 1
            raise StorageFailed("write failed: database or disk is full")
        await super().write(ops, durable)


def output_indexes(store: MemoryStore) -> list[int]:
    return sorted(int.from_bytes(key, "big") for key in store.families["output"])


async def test_a_node_whose_disk_filled_votes_and_commits_again_once_space_returns():
    sim = Simulation(4, gc_depth=50)
    victim = sim.names[3]
    store = FullDiskStore()
    sim.nodes[victim] = sim._make(sim.keys[3], store)
    node = lambda: sim.nodes[victim].node
    others = [sim.nodes[name].node for name in sim.names[:3]]
    try:
        sim.start()
        await sim.run_until(lambda: node().consensus_index >= 5)
        store.full = True
        full_at = max(o.core.dag.highest_round for o in others)
        await sim.run_until(lambda: min(o.core.dag.highest_round for o in others) >= full_at + 30
                            and store.refused >= 10)
        votes_when_full = node().core.counters["votes_cast"]
        store.full = False  # space is back
        target = min(o.consensus.state.last_committed_round for o in others)
        await sim.run_until(lambda: node().consensus.state.last_committed_round >= target, timeout=20)
        await sim.run_until(lambda: node().core.counters["votes_cast"] > votes_when_full + 3)
        indexes = output_indexes(store)
        assert indexes == list(range(1, len(indexes) + 1)), "a hole in the output"
    finally:
        await sim.stop()
