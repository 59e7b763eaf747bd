"""Store reads served to peers run on reader threads, bounded per source and in all."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from narwhal.errors import ErrorCode, RequestRejected
from narwhal.serving_reads import ServingReads
from narwhal.store import Reader, Store

BATCH = 500_000


class LagProbe:
    """Ticks every 1 ms on the loop: how many ticks ran, and the worst overshoot."""

    def __init__(self) -> None:
        self.ticks, self.worst = 0, 0.0
        self._task = asyncio.ensure_future(self._tick())

    async def _tick(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(0.001)
            self.ticks += 1
            self.worst = max(self.worst, time.perf_counter() - started - 0.001)

    def stop(self) -> None:
        self._task.cancel()


@pytest.fixture
async def store(tmp_path):
    store = Store.open(tmp_path / "s.db", synchronous="NORMAL")
    keys = [os.urandom(32) for _ in range(16)]
    await store.write([("batches", k, os.urandom(BATCH)) for k in keys])
    store.test_keys = keys  # type: ignore[attr-defined]
    try:
        yield store
    finally:
        await store.close()


def read_all(reader: Reader, keys: list[bytes], passes: int) -> int:
    """A large read: ``passes`` times every batch (~8 MB a pass) through the value log."""
    return sum(len(reader.get("batches", k) or b"") for _ in range(passes) for k in keys)


async def test_the_loop_keeps_running_while_a_large_read_is_served(store):
    """The same large read stalls the loop for its whole length when made on the loop,
    and leaves it ticking when served through ServingReads (same run, same data)."""
    reads = ServingReads(store)
    keys = store.test_keys
    passes = 24  # ~190 MB of reads: tens of ms even from the page cache
    read_all(store, keys, 1)  # warm the cache for both
    try:
        probe = LagProbe()
        await asyncio.sleep(0.01)
        started = time.perf_counter()
        read_all(store, keys, passes)  # what the handlers did before: on the loop
        inline = time.perf_counter() - started
        await asyncio.sleep(0.01)
        inline_worst = probe.worst
        probe.stop()

        probe = LagProbe()
        await asyncio.sleep(0.01)
        ticks, started = probe.ticks, time.perf_counter()
        served = await reads.run("peer", lambda r: read_all(r, keys, passes))
        off_loop = time.perf_counter() - started
        ticks = probe.ticks - ticks
        probe.stop()
    finally:
        await reads.close()
    assert served == passes * len(keys) * BATCH
    assert inline_worst >= 0.8 * inline  # the loop did nothing else during the read
    # Off the loop, it kept ticking: at least a tick per 5 ms of read (a loaded 2-core box),
    # and its worst stall is a small part of the read (the GIL switch interval is 5 ms).
    assert ticks >= off_loop / 0.005, (ticks, off_loop)
    assert probe.worst < max(0.5 * off_loop, 0.02), (probe.worst, off_loop)


async def test_reads_run_on_reader_threads_each_with_its_own_connection(store):
    reads = ServingReads(store, threads=2)
    seen: list[tuple[int, int]] = []

    def where(reader: Reader) -> None:
        seen.append((threading.get_ident(), id(reader)))
        time.sleep(0.02)

    try:
        await asyncio.gather(*(reads.run(i, where) for i in range(6)))
    finally:
        await reads.close()
    threads = {t for t, _ in seen}
    assert threading.get_ident() not in threads and 1 <= len(threads) <= 2
    assert len({r for _, r in seen}) == len(threads)  # one reader (connection) per thread
    assert reads.status() == {"threads": 2, "admitted": 0, "served": 6, "refused": 0}


async def test_a_source_cannot_queue_unlimited_reads(store):
    """At most ``per_source`` reads of one source and ``max_admitted`` in all are admitted;
    beyond, OVERLOADED at once. A cancelled request keeps its place until its thread is
    done with it, so cancelling cannot pile up work behind the threads."""
    reads = ServingReads(store, threads=1, per_source=3, max_admitted=5)
    gate = threading.Event()
    try:
        first = [asyncio.ensure_future(reads.run("a", lambda r: gate.wait(10))) for _ in range(3)]
        await asyncio.sleep(0.05)
        with pytest.raises(RequestRejected) as refused:
            await reads.run("a", lambda r: None)
        assert refused.value.code is ErrorCode.OVERLOADED
        others = [asyncio.ensure_future(reads.run("b", lambda r: gate.wait(10))) for _ in range(2)]
        await asyncio.sleep(0.01)
        with pytest.raises(RequestRejected):  # 5 admitted in all
            await reads.run("c", lambda r: None)
        assert reads.admitted == 5 and reads.refused == 2
        first[0].cancel()  # running: its place is kept until the thread finishes it
        others[1].cancel()  # waiting for the thread: dropped, its place freed
        await asyncio.sleep(0.05)
        assert reads.admitted == 4
        gate.set()
        await asyncio.gather(*first, *others, return_exceptions=True)
        await asyncio.sleep(0.05)
        assert reads.admitted == 0
        assert await reads.run("a", lambda r: r.get("batches", store.test_keys[0])) is not None
    finally:
        gate.set()
        await reads.close()
    with pytest.raises(RequestRejected) as closed:
        await reads.run("a", lambda r: None)
    assert closed.value.code is ErrorCode.SHUTTING_DOWN


async def test_a_reader_sees_what_a_returned_write_committed(store):
    reads = ServingReads(store)
    try:
        assert await reads.run("a", lambda r: r.get("headers", b"k")) is None
        await store.put("headers", b"k", b"v")
        assert await reads.run("a", lambda r: r.get("headers", b"k")) == b"v"
    finally:
        await reads.close()


def test_serving_reads_are_in_the_metrics():
    from prometheus_client import generate_latest

    from narwhal.metrics import node_registry
    status = {"primary": {"serving_reads": {"served": 7, "refused": 2}},
              "workers": {"0": {"serving_reads": {"served": 3, "refused": 1}}}}
    text = generate_latest(node_registry(lambda: status)).decode()
    assert 'narwhal_serving_reads_total{local="primary"} 7.0' in text
    assert 'narwhal_serving_reads_refused_total{local="worker-0"} 1.0' in text


async def test_our_own_node_is_bound_by_the_total_only(store):
    """Source None (our primary asking our worker for subscribers' batches) is trusted:
    only ``max_admitted`` applies to it."""
    from types import SimpleNamespace

    from narwhal.serving_reads import source_of
    me, other = b"m" * 32, b"o" * 32
    info = SimpleNamespace(role="primary", authority=me, worker_id=None)
    assert source_of(SimpleNamespace(info=info), own=me) is None
    assert source_of(SimpleNamespace(info=SimpleNamespace(role="worker", authority=other,
                                                          worker_id=0)), own=me) is not None
    reads = ServingReads(store, threads=1, per_source=1, max_admitted=3)
    gate = threading.Event()
    try:
        held = [asyncio.ensure_future(reads.run(None, lambda r: gate.wait(10))) for _ in range(3)]
        await asyncio.sleep(0.05)
        assert reads.admitted == 3
        with pytest.raises(RequestRejected):
            await reads.run(None, lambda r: None)
        gate.set()
        await asyncio.gather(*held)
    finally:
        gate.set()
        await reads.close()
