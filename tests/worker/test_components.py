"""The worker's components alone, without sockets: batch maker, pending bytes, late
sends and the quorum rule."""

from __future__ import annotations

import asyncio
import os
import weakref

import pytest

from narwhal import messages
from narwhal.worker.batch_maker import BatchMaker
from narwhal.worker.intake import PendingBytes
from narwhal.worker.late_sends import CleanupEpoch, LateSends
from narwhal.worker.metrics import WorkerMetrics
from narwhal.worker.quorum_waiter import QuorumWaiter


class FakeHandle:
    """Stands for a CancelHandle: a future the test completes, with the peer it went to."""

    def __init__(self, peer: bytes) -> None:
        self.peer = peer
        self.future = asyncio.get_running_loop().create_future()

    def done(self) -> bool:
        return self.future.done()

    def cancel(self) -> None:
        self.future.cancel()

    def add_done_callback(self, fn) -> None:
        self.future.add_done_callback(fn)

    def ack(self) -> None:
        self.future.set_result(messages.Ack())

    def fail(self) -> None:
        self.future.set_exception(RuntimeError("refused"))


def maker(batch_size=100, delay=0.05):
    sealed: list[tuple[messages.Batch, int]] = []
    bm = BatchMaker(batch_size=batch_size, max_batch_delay=delay,
                    on_sealed=lambda b, n: sealed.append((b, n)), metrics=WorkerMetrics())
    return bm, sealed


async def test_batch_maker_splits_a_submission_where_it_fills_a_batch():
    bm, sealed = maker(batch_size=100)
    txs = [bytes([i]) * 30 for i in range(10)]  # 300 bytes
    bm.add(txs, [30] * 10)
    # 4 txs (120 B) reach 100 B: two full batches, 2 txs left buffered
    assert [len(b.transactions) for b, _ in sealed] == [4, 4]
    assert [n for _, n in sealed] == [120, 120]
    assert sealed[0][0].transactions == tuple(txs[:4]) and sealed[1][0].transactions == tuple(txs[4:8])
    assert sealed[0][0].transactions[0] is txs[0]  # the very bytes objects: no copies
    assert bm.buffered_bytes == 60
    bm.add([b"x" * 40], [40])  # exactly fills the batch
    assert len(sealed) == 3 and sealed[2][1] == 100 and bm.buffered_bytes == 0
    bm.close()


async def test_batch_maker_seals_on_timeout_and_after_partial_fill():
    # delays of 0.2 s leave a loaded CI machine 0.18 s of slack at each step
    bm, sealed = maker(batch_size=1_000, delay=0.2)
    bm.add([b"a"], [1])
    await asyncio.sleep(0.02)
    bm.add([b"b"], [1])  # the delay runs from the first transaction
    assert not sealed
    await asyncio.sleep(0.3)
    assert [b.transactions for b, _ in sealed] == [(b"a", b"b")]
    await asyncio.sleep(0.3)
    assert len(sealed) == 1  # no empty batches
    bm.add([b"c" * 999, b"d"], [999, 1])  # fills it: no timer left behind
    assert bm._timer is None and len(sealed) == 2


async def test_batch_maker_respects_the_transaction_count_limit(monkeypatch):
    monkeypatch.setattr("narwhal.worker.batch_maker.MAX_BATCH_TRANSACTIONS", 3)
    bm, sealed = maker(batch_size=1_000)
    bm.add([b"t"] * 7, [1] * 7)
    assert [len(b.transactions) for b, _ in sealed] == [3, 3] and bm.buffered_bytes == 1
    bm.close()


async def test_pending_bytes_admits_fifo_and_times_out():
    pending = PendingBytes(limit=100)
    assert await pending.admit(80, timeout=1)
    assert not await pending.admit(30, timeout=0.02)  # would exceed: waits, then refused
    assert pending.value == 80 and pending.waiting == 0
    first = asyncio.ensure_future(pending.admit(50, timeout=1))
    second = asyncio.ensure_future(pending.admit(10, timeout=1))  # fits, but queued behind
    await asyncio.sleep(0.01)
    assert not first.done() and not second.done() and pending.waiting == 2
    pending.release(80)
    assert await first and await second and pending.value == 60
    # one submission larger than the limit still gets in when nothing is pending
    pending.release(60)
    assert await pending.admit(500, timeout=0.01) and pending.value == 500


async def test_pending_bytes_cancelled_waiter_gives_its_place_back():
    pending = PendingBytes(limit=100)
    await pending.admit(100, timeout=1)
    waiter = asyncio.ensure_future(pending.admit(50, timeout=5))
    behind = asyncio.ensure_future(pending.admit(50, timeout=5))
    await asyncio.sleep(0.01)
    waiter.cancel()  # the client went away
    await asyncio.sleep(0)
    pending.release(100)
    assert await behind and pending.value == 50 and waiter.cancelled()


async def test_late_sends_expire_a_gc_window_after_sealing_and_are_bounded():
    epoch, metrics = CleanupEpoch(window=5), WorkerMetrics()
    late = LateSends(epoch, max_batches=2, metrics=metrics)
    a, b = FakeHandle(b"p1"), FakeHandle(b"p2")
    late.keep(b"A", epoch.value, [a, b])  # sealed with cleanup round 0
    assert late.batches == 1 and late.sends == 2
    b.ack()
    await asyncio.sleep(0)
    assert late.sends == 1
    assert epoch.advance(5) and not epoch.advance(5)  # a resend is ignored
    late.expire()
    assert late.batches == 1  # the horizon has not moved a whole window past it yet
    assert epoch.advance(6)
    c = FakeHandle(b"p1")
    late.keep(b"C", epoch.value, [c])  # sealed with cleanup round 6
    late.expire()
    assert late.batches == 2  # A (before any cleanup) counts from the first one, round 5
    assert epoch.advance(11)
    late.expire()
    assert a.future.cancelled() and not c.done() and late.batches == 1
    assert metrics.late_sends_cancelled == 1
    d, e = FakeHandle(b"p1"), FakeHandle(b"p2")
    late.keep(b"D", epoch.value, [d])
    late.keep(b"E", epoch.value, [e])  # a third batch: over the bound, the oldest goes
    assert c.future.cancelled() and late.batches == 2
    # the bound: the oldest batch is cancelled first
    late.keep(b"D", epoch.value, [FakeHandle(b"p1")])
    late.keep(b"E", epoch.value, [FakeHandle(b"p1")])
    assert c.future.cancelled() and late.batches == 2
    late.close()
    assert late.batches == 0


def test_state_stamped_before_the_first_cleanup_counts_from_it():
    """After a restart the worker knows no round until its primary's next Cleanup, which
    may be far above the window: what it started meanwhile must not expire at once."""
    epoch = CleanupEpoch(window=50)
    stamp = epoch.value  # a sync started right after the restart
    assert epoch.advance(300)
    assert not epoch.expired(stamp)
    assert epoch.advance(350) and not epoch.expired(stamp)
    assert epoch.advance(351) and epoch.expired(stamp)
    assert not epoch.expired(301) and epoch.expired(300)  # stamped rounds as before


class FakeNetwork:
    def __init__(self, peers):
        self.handles = {p: None for p in peers}

    async def broadcast_encoded(self, peers, tag, body):
        assert tag == messages.Batch.TAG
        messages.decode_as(messages.Batch, body)  # what the peers receive is a batch
        for p in peers:
            self.handles[p] = FakeHandle(p)
        return list(self.handles.values())


class FakeStore:
    def __init__(self):
        self.written = []
        self.data = {}

    async def write(self, ops, durable=False):
        self.written.extend(ops)
        for family, key, value in ops:
            self.data[(family, key)] = value

    def keys(self, family):
        return sorted(k for f, k in self.data if f == family)

    def get(self, family, key):
        return self.data.get((family, key))


def waiter(stakes, own=1, threshold=3):
    network, store, reports, released = FakeNetwork(stakes), FakeStore(), [], []
    epoch, metrics = CleanupEpoch(), WorkerMetrics()
    qw = QuorumWaiter(own_stake=own, threshold=threshold, peers=stakes, worker_id=0,
                      network=network, store=store, report=reports.append, release=released.append,
                      late=LateSends(epoch, 10, metrics), epoch=epoch, metrics=metrics)
    return qw, network, store, reports, released


async def test_quorum_is_own_stake_plus_acked_stake():
    qw, network, store, reports, released = waiter({b"p1": 1, b"p2": 1, b"p3": 1})
    batch = messages.Batch([b"tx"])
    qw.submit(batch, 2)
    await asyncio.sleep(0.01)
    assert store.written == [("batches", batch.digest(), messages.encode(batch)),
                             ("our_batches", batch.digest(), b"")]  # ours until reported
    network.handles[b"p1"].ack()
    network.handles[b"p2"].fail()  # a refusal does not count
    await asyncio.sleep(0.01)
    assert not reports and qw.outstanding == 1
    network.handles[b"p3"].ack()  # 1 + 1 + 1 = 3 >= threshold
    await asyncio.sleep(0.01)
    assert reports == [messages.OurBatch(batch.digest(), 0, 1)] and released == [2]
    assert qw.outstanding == 0 and qw.metrics.acks_received == 2


async def test_a_batch_waiting_for_its_quorum_keeps_only_its_encoded_body():
    """The decoded transactions would double the memory of every batch waiting for its
    quorum (the pending budget's worth under a client at 10x capacity)."""
    qw, network, store, reports, _released = waiter({b"p1": 1, b"p2": 1, b"p3": 1})
    batch = messages.Batch(tuple(os.urandom(100) for _ in range(10)))
    digest, body, decoded = batch.digest(), messages.encode(batch), weakref.ref(batch)
    qw.submit(batch, 1000)
    del batch
    await asyncio.sleep(0.01)
    assert qw.outstanding == 1 and decoded() is None  # waiting, without the Batch object
    for peer in (b"p1", b"p2"):
        network.handles[peer].ack()
    await asyncio.sleep(0.01)
    assert store.data[("batches", digest)] == body
    assert reports == [messages.OurBatch(digest, 0, 10)]


async def test_a_batch_every_peer_refuses_is_dropped_and_counted():
    qw, network, _store, reports, released = waiter({b"p1": 1, b"p2": 1, b"p3": 1})
    qw.submit(messages.Batch([b"tx"]), 2)
    await asyncio.sleep(0.01)
    network.handles[b"p1"].ack()
    for p in (b"p2", b"p3"):
        network.handles[p].fail()
    await asyncio.sleep(0.01)
    assert not reports and released == [2] and qw.metrics.errors["quorum_failed"] == 1


@pytest.mark.parametrize("stakes, acks, reached", [
    ({b"big": 5, b"s1": 1, b"s2": 1}, [b"big"], True),  # own 1 + 5 >= 2*8//3+1 = 6
    ({b"big": 5, b"s1": 1, b"s2": 1}, [b"s1", b"s2"], False),
])
async def test_quorum_is_by_stake_not_by_count(stakes, acks, reached):
    qw, network, _, reports, _ = waiter(stakes, own=1, threshold=6)
    qw.submit(messages.Batch([b"tx"]), 1)
    await asyncio.sleep(0.01)
    for p in acks:
        network.handles[p].ack()
    await asyncio.sleep(0.01)
    assert bool(reports) is reached
    await qw.close()


async def test_a_restarted_worker_replicates_and_reports_unreported_batches_again():
    qw, network, store, reports, _released = waiter({b"p1": 1, b"p2": 1, b"p3": 1})
    batch = messages.Batch([b"tx"])
    qw.submit(batch, 2)
    await asyncio.sleep(0.01)
    assert store.keys("our_batches") == [batch.digest()]  # marked ours until reported
    await qw.close()  # crash before the quorum: nothing reported
    again, network, _, reports, _ = waiter({b"p1": 1, b"p2": 1, b"p3": 1})
    again._store = store  # the restarted worker finds the same store
    assert again.resume() == 1
    await asyncio.sleep(0.01)
    network.handles[b"p1"].ack()
    network.handles[b"p2"].ack()
    await asyncio.sleep(0.01)
    assert reports == [messages.OurBatch(batch.digest(), 0, 1)]


async def test_a_worker_resumes_whatever_its_value_log_holds_after_a_power_cut(tmp_path):
    """Before: a batch of ours whose value did not survive (CRC) made ``resume`` raise, and
    the worker could not start. Now the damaged batch reads as missing: the intact one is
    replicated again, the lost one skipped (its transactions were never acknowledged)."""
    from pathlib import Path

    from narwhal.store import Store

    kept, lost = messages.Batch([b"kept"]), messages.Batch([b"lost" * 100])
    path = tmp_path / "worker.db"
    async with Store.open(path) as store:
        for batch in (kept, lost):  # written in this order: the lost one ends the log
            await store.write([("batches", batch.digest(), messages.encode(batch)),
                               ("our_batches", batch.digest(), b"")])
    vlog = Path(f"{path}.vlog")
    vlog.write_bytes(vlog.read_bytes()[:-10])  # the power cut took the log's last bytes
    async with Store.open(path) as store:
        qw, network, _, reports, _ = waiter({b"p1": 1, b"p2": 1, b"p3": 1})
        qw._store = store
        assert qw.resume() == 2 and store.corrupt_values == 1
        await asyncio.sleep(0.01)
        network.handles[b"p1"].ack()
        network.handles[b"p2"].ack()
        await asyncio.sleep(0.01)
        assert reports == [messages.OurBatch(kept.digest(), 0, 1)]
        await qw.close()
