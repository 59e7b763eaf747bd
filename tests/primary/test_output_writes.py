"""A failed write of the ordered output never leaves a hole (disk full, I/O error).

Before: the consensus index advanced in memory, the failed write was dropped, and the next
successful write persisted a later consensus state, so indexes were missing from the output
for ever (also after a restart) and subscribers waited at the first of them. Now the write
is retried until the store accepts it and every later write waits behind it.

The fault is injected by a store wrapper (a real disk-full run needs a size-limited mount).
"""

from __future__ import annotations

import logging

from narwhal.metrics import StatusCollector
from narwhal.primary import node as primary_node
from narwhal.store import StorageFailed

from .sim import MemoryStore, Simulation


class FailingOutputStore(MemoryStore):
    """Refuses every write carrying ordered output while ``failing`` is set, as a store
    whose disk is full refuses the write (other writes go through: the worst case, where
    consensus keeps committing while its output cannot be written)."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = False
        self.refused = 0

    async def write(self, ops, durable=False):
        ops = list(ops)
        if self.failing and any(family == "output" for family, _, _ in ops):
            self.refused += 1
            raise StorageFailed("write failed: database or disk is full")  # as the real store
        await super().write(ops, durable)


def output_indexes(store: MemoryStore) -> list[int]:
    return sorted(int.from_bytes(key, "big") for key in store.families["output"])


def assert_contiguous(store: MemoryStore) -> int:
    indexes = output_indexes(store)
    assert indexes == list(range(1, len(indexes) + 1)), f"hole in the output: {indexes}"
    return len(indexes)


async def test_a_failed_output_write_is_retried_and_the_output_stays_contiguous(caplog):
    sim = Simulation(4)
    victim = sim.names[0]
    store = FailingOutputStore()
    sim.nodes[victim] = sim._make(sim.keys[0], store)
    node = lambda: sim.nodes[victim].node
    try:
        sim.start()
        await sim.run_until(lambda: node().consensus_index >= 5)
        store.failing = True
        failing_from = node().consensus_index
        with caplog.at_level(logging.ERROR, logger="narwhal.primary.node"):
            await sim.run_until(lambda: node().consensus_index >= failing_from + 10 and store.refused >= 3)
        assert node().output_write_failing and node().output_write_failures >= 3
        assert "cannot write the ordered output" in caplog.text
        metrics = {m.name: m.samples[0].value for m in StatusCollector(
            lambda: {"primary": node().status()}).collect() if m.name.startswith("narwhal_output_write")}
        assert metrics["narwhal_output_write_failing"] == 1
        assert metrics["narwhal_output_write_failures"] >= 3
        assert_contiguous(store)  # held back, not skipped
        assert max(output_indexes(store), default=0) < node().consensus_index
        store.failing = False  # space is back: the held writes land, in order
        await sim.run_until(lambda: max(output_indexes(store), default=0) >= failing_from + 10, timeout=15)
        assert not node().output_write_failing
        assert_contiguous(store)
        await sim.restart(victim)
        before = assert_contiguous(store)
        await sim.run_until(lambda: len(output_indexes(store)) >= before + 5)
        assert_contiguous(store)  # still contiguous after a restart
    finally:
        await sim.stop()


async def test_close_gives_up_on_an_output_write_the_store_keeps_refusing(caplog, monkeypatch):
    monkeypatch.setattr(primary_node, "OUTPUT_CLOSE_GRACE", 0.5)
    sim = Simulation(4)
    store = FailingOutputStore()
    sim.nodes[sim.names[0]] = sim._make(sim.keys[0], store)
    try:
        sim.start()
        await sim.run_until(lambda: sim.nodes[sim.names[0]].node.consensus_index >= 3)
        store.failing = True
        await sim.run_until(lambda: store.refused >= 2)
    finally:
        with caplog.at_level(logging.ERROR, logger="narwhal.primary.node"):
            await sim.stop()  # returns: the retries stop after the grace period
    assert "recomputed from the stored certificates at restart" in caplog.text
    assert_contiguous(store)
