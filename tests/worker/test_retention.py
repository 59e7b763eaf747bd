"""Batch retention on a real store: old segments go, recent ones and unreported batches of
ours stay, a failed pass is counted and retried, and the figures reach /metrics."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from narwhal import messages
from narwhal.metrics import StatusCollector
from narwhal.store import Store, u64
from narwhal.worker.retention import BatchRetention


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


async def test_retention_drops_old_segments_and_keeps_recent_and_unreported_ones(tmp_path: Path) -> None:
    path = tmp_path / "worker.db"
    async with Store.open(path, segment_bytes=100_000) as store:
        old = [messages.Batch([bytes([i]) * 60_000]) for i in range(4)]  # one segment each
        for batch in old:
            await store.put("batches", batch.digest(), messages.encode(batch))
        await store.put("our_batches", old[2].digest(), b"")  # ours, not yet reported
    for segment in sorted(tmp_path.glob("worker.db.vlog*")):
        age(segment, 7200)  # written two hours ago
    async with Store.open(path, segment_bytes=100_000) as store:
        fresh = messages.Batch([b"f" * 60_000])
        await store.put("batches", fresh.digest(), messages.encode(fresh))
        retention = BatchRetention(store, retain_seconds=3600, retain_bytes=1 << 30, min_age=60)
        await retention.prune()
        assert store.get("batches", old[0].digest()) is None
        assert store.get("batches", old[1].digest()) is None
        assert store.get("batches", old[2].digest()) is not None  # copied forward
        assert store.get("batches", fresh.digest()) is not None
        status = retention.status()
        assert status["pruned_batches"] == 3 and status["pruned_bytes"] > 180_000
        metrics = {m.name: m.samples for m in StatusCollector(
            lambda: {"workers": {"0": {"retention": status}}}).collect()}
        assert metrics["narwhal_retention_pruned_bytes"][0].value == status["pruned_bytes"]


async def test_a_byte_limit_never_takes_what_was_written_within_the_minimum_age(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "worker.db", segment_bytes=50_000) as store:
        for i in range(6):
            await store.put("batches", u64(i), bytes([i]) * 60_000)
        retention = BatchRetention(store, retain_seconds=3600, retain_bytes=100_000, min_age=60)
        await retention.prune()
        assert len(store.keys("batches")) == 6  # over the limit, but all too recent
        retention.min_age = 0.0
        await retention.prune()
        assert len(store.keys("batches")) == 1  # 360 KB over 100 KB: oldest first, down to 60 KB


async def test_a_failed_pass_is_counted_and_the_loop_goes_on(tmp_path: Path) -> None:
    class Failing:
        pruned_bytes = 0

        def __init__(self) -> None:
            self.calls = 0

        async def prune_values(self, **kwargs):  # type: ignore[no-untyped-def]
            self.calls += 1
            raise OSError("disk on fire")

    store = Failing()
    retention = BatchRetention(store, retain_seconds=1, retain_bytes=1, interval=0.01)
    retention.start()
    await asyncio.sleep(0.1)
    await retention.close()
    assert store.calls >= 2 and retention.failures == store.calls
