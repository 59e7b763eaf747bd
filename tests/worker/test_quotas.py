"""Per-peer storage quota of the batch receiver (issue 12, item 4): one authority's worker
cannot make us store batches faster than its quota, honest peers are unaffected, and an
honest sender that hits the quota gets through by retrying."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from prometheus_client import generate_latest

from narwhal import messages
from narwhal.config import Parameters
from narwhal.errors import ErrorCode, RemoteError, RequestRejected
from narwhal.metrics import node_registry
from narwhal.net.rpc import Router
from narwhal.worker.batch_receiver import BatchReceiver, TokenBucket
from narwhal.worker.metrics import WorkerMetrics

from .harness import eventually, submit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class DictStore:
    def __init__(self) -> None:
        self.rows: dict[bytes, bytes] = {}

    def contains(self, table: str, key: bytes) -> bool:
        return key in self.rows

    async def write(self, rows, durable: bool = False) -> None:
        for _, key, value in rows:
            self.rows[key] = value


def peer(authority: bytes) -> SimpleNamespace:
    return SimpleNamespace(info=SimpleNamespace(authority=authority))


def test_token_bucket_starts_full_refills_at_its_rate_and_caps_at_the_burst():
    clock = Clock()
    bucket = TokenBucket(rate=100, burst=1_000, clock=clock)
    assert bucket.take(600) and not bucket.take(500)  # 400 left: refused, nothing taken
    assert bucket.take(400) and not bucket.take(1)
    clock.now += 2.5
    assert not bucket.take(251) and bucket.take(250)
    clock.now += 3_600  # an idle hour refills to the burst, no more
    assert bucket.take(1_000) and not bucket.take(1)


async def test_receiver_quota_is_per_authority_and_resends_are_free():
    clock, store, metrics, reported = Clock(), DictStore(), WorkerMetrics(), []
    receiver = BatchReceiver(store=store, report=reported.append, worker_id=0,
                             max_batch_bytes=1_000, metrics=metrics, quota_rate=100,
                             quota_burst=2_000, min_charge=200, clock=clock)
    byzantine, honest = peer(b"B" * 32), peer(b"H" * 32)
    big = [messages.Batch([bytes([i]) * 1_000]) for i in range(5)]
    await receiver.handle(byzantine, big[0])
    await receiver.handle(byzantine, big[1])  # the burst is spent
    with pytest.raises(RequestRejected) as info:
        await receiver.handle(byzantine, big[2])
    assert info.value.code is ErrorCode.OVERLOADED and info.value.code.transient
    assert big[2].digest() not in store.rows
    await receiver.handle(byzantine, big[0])  # a resend (lost ack) of a held batch: acked
    # Tiny batches are charged min_charge each: a flood of them is bounded in count too.
    for i in range(10):
        await receiver.handle(honest, messages.Batch([b"tiny %d" % i]))
    with pytest.raises(RequestRejected):
        await receiver.handle(honest, messages.Batch([b"one too many"]))
    assert metrics.errors["batch_quota_exceeded"] == 2
    assert metrics.batches_received_from_peers == 12 and len(reported) == 12

    clock.now += 10  # 1,000 bytes of refill: the refused batch now fits
    await receiver.handle(byzantine, big[2])
    with pytest.raises(RequestRejected):
        await receiver.handle(byzantine, big[3])
    assert metrics.errors["batch_quota_exceeded"] == 3 and len(store.rows) == 13


async def test_a_flooding_peer_is_refused_and_counted_while_others_are_stored(make_cluster):
    # A burst of two full batches and a trickle of refill: the third batch is refused.
    cluster = make_cluster(batch_quota_rate=100, batch_quota_burst=24_000)
    primaries, workers = await cluster.up(workers=(0,))
    primary0, worker0 = primaries[0], workers[0]
    byzantine = await cluster.start_fake_worker(1, Router())
    honest = await cluster.start_fake_worker(2, Router())
    full = [messages.Batch([bytes([i]) * 2_000] * 6) for i in range(4)]  # 12,000 B each

    for batch in full[:2]:
        assert await byzantine.request(0, batch) == messages.Ack()
    for batch in full[2:]:
        with pytest.raises(RemoteError) as info:
            await byzantine.request(0, batch)
        assert info.value.code is ErrorCode.OVERLOADED
    assert await byzantine.request(0, full[0]) == messages.Ack()  # held: a resend is free
    for batch in full[2:]:  # another authority's worker has its own quota
        assert await honest.request(0, batch) == messages.Ack()
    assert cluster.holders(full[3].digest()) == {0}
    status = worker0.status()
    assert status["errors"]["batch_quota_exceeded"] == 2
    assert status["batches_received_from_peers"] == 4
    await eventually(lambda: len(primary0.others) == 4)

    scraped = generate_latest(node_registry(lambda: {"workers": {0: worker0.status()}}))
    assert (b'narwhal_worker_errors_total{kind="batch_quota_exceeded",local="worker-0"} 2.0'
            in scraped)


async def test_an_honest_sender_over_the_quota_gets_through_by_retrying(make_cluster):
    # Peers take 2 full batches at once then 40 KB/s: 10 batches need ~2 s of retries.
    cluster = make_cluster(batch_quota_rate=40_000, batch_quota_burst=24_000,
                           max_batch_delay=10.0)
    primaries, workers = await cluster.up()
    client = await cluster.client(0)
    txs = [bytes([i]) * 1_000 for i in range(100)]  # ten full batches, sealed at once
    assert await submit(client, txs) == messages.TransactionsAccepted(100)
    await eventually(lambda: len(primaries[0].ours) == 10, timeout=20)
    for digest in (m.digest for m in primaries[0].ours):
        await eventually(lambda d=digest: cluster.holders(d) == {0, 1, 2, 3}, timeout=20)
    refused = sum(workers[i].status()["errors"]["batch_quota_exceeded"] for i in (1, 2, 3))
    assert refused > 0
    assert workers[0].status()["quorums_reached"] == 10


def test_default_quota_is_derived_from_the_batch_size_and_pending_budget():
    p = Parameters()
    assert p.batch_quota_rate == 4 * 20 * 500_000  # 40 MB/s: 4x 20 full batches a second
    assert p.batch_quota_burst == 2 * 64 * 1024 * 1024
    small = Parameters(batch_size=10_000)
    assert small.batch_quota_rate == 4 * 50_000 * 512 // 4  # 4x the benchmarked 6.4 MB/s


async def test_a_client_cannot_make_the_worker_seal_faster_than_it_replicates(make_cluster):
    """Intake is bounded by replication: bytes a client gets accepted are at most the
    pending budget plus what reached a quorum, and with the peers' storage quotas as the
    bottleneck, a quorum needs two peers to store each batch, so at most their burst plus
    their rate times the elapsed time. A flooding client is slowed, then refused OVERLOADED."""
    limit, rate, burst = 8_000, 2_000, 3_000
    cluster = make_cluster(batch_size=2_000, max_transaction_size=1_000,
                           max_pending_transactions_bytes=limit, batch_quota_rate=rate,
                           batch_quota_burst=burst)
    _, workers = await cluster.up()
    worker0 = workers[0]
    worker0.intake.admission_timeout = 0.2
    loop = asyncio.get_running_loop()
    started = loop.time()
    refused, peak, sent = 0, 0, 0

    async def flood(client) -> None:
        nonlocal refused, sent
        while True:
            sent += 1  # distinct transactions: identical batches would be stored once
            try:
                await submit(client, [b"%d %d " % (sent, i) + b"f" * 980 for i in (1, 2)])
            except RemoteError as exc:
                assert exc.code is ErrorCode.OVERLOADED
                refused += 1

    clients = [await cluster.client(0) for _ in range(4)]
    tasks = [asyncio.ensure_future(flood(c)) for c in clients for _ in range(3)]
    try:
        while loop.time() - started < 1.5:
            peak = max(peak, worker0.status()["pending_tx_bytes"])
            await asyncio.sleep(0.01)
    finally:
        for task in tasks:
            task.cancel()
        ended = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(e, asyncio.CancelledError) for e in ended), ended
    elapsed = loop.time() - started
    status = worker0.status()
    assert peak <= limit and status["pending_tx_bytes"] <= limit
    assert status["tx_bytes_received"] <= limit + burst + rate * elapsed
    assert status["submissions_slowed"] > 0 and refused > 0
    assert status["errors"]["overloaded"] >= refused  # (+ any the cancelled clients left)
    assert sum(workers[i].status()["errors"]["batch_quota_exceeded"] for i in (1, 2, 3)) > 0
