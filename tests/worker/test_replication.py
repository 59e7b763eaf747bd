"""Replication over real sockets: seal, store everywhere, quorum, reports to primaries."""

from __future__ import annotations

import json
import logging

from narwhal import messages

from .harness import eventually, reports, submit


async def test_batch_sealed_by_size_is_stored_everywhere_and_reported(make_cluster, caplog):
    caplog.set_level(logging.INFO, logger="narwhal.worker")
    cluster = make_cluster(max_batch_delay=10.0)  # only size can seal here
    primaries, workers = await cluster.up(primaries=range(4))
    client = await cluster.client(0)
    txs = [bytes([i]) * 1_000 for i in range(10)]  # exactly batch_size bytes

    assert await submit(client, txs) == messages.TransactionsAccepted(10)
    assert workers[0].metrics.batches_sealed == 1  # sealed inside the submission

    await eventually(lambda: primaries[0].ours)
    digest = primaries[0].ours[0].digest
    assert reports(primaries[0].ours) == [(digest, 0)]
    assert 0 in cluster.holders(digest)  # ours is stored before it is sent
    await eventually(lambda: cluster.holders(digest) == {0, 1, 2, 3})
    for i in (1, 2, 3):
        await eventually(lambda i=i: reports(primaries[i].others) == [(digest, 0)])
    stored = messages.decode(messages.Batch.TAG, cluster.stores[2].get("batches", digest))
    assert stored.transactions == tuple(txs) and stored.digest() == digest

    status = workers[0].status()
    assert status["batches_sealed"] == 1 and status["txs_received"] == 10
    assert status["txs_sealed"] == 10 and status["txs_stored"] == 10
    assert status["tx_bytes_received"] == 10_000 and status["quorums_reached"] == 1
    await eventually(lambda: workers[0].status()["acks_received"] == 3)
    await eventually(lambda: workers[0].status()["reports_acked"] == 1)
    assert workers[0].status()["pending_tx_bytes"] == 0
    assert workers[1].status()["batches_received_from_peers"] == 1
    assert workers[1].status()["txs_stored"] == 10
    assert len(status["peers"]) == 4  # three peer workers and our primary
    json.dumps(workers[0].status())
    assert f"Created batch {digest.hex()} txs=10 bytes=10000" in caplog.text
    assert f"Batch {digest.hex()} reached quorum in " in caplog.text


async def test_batch_sealed_by_timeout(make_cluster):
    cluster = make_cluster(max_batch_delay=0.1)
    primaries, workers = await cluster.up()
    client = await cluster.client(0)

    assert await submit(client, [b"a" * 10, b"b" * 20, b"c" * 30]) == messages.TransactionsAccepted(3)
    assert workers[0].metrics.batches_sealed == 0
    await eventually(lambda: primaries[0].ours)
    stored = cluster.stores[3].get("batches", primaries[0].ours[0].digest)
    assert messages.decode(messages.Batch.TAG, stored).transactions == (b"a" * 10, b"b" * 20, b"c" * 30)
    assert workers[0].metrics.batches_sealed == 1


async def test_quorum_without_one_worker_then_background_delivery(make_cluster):
    cluster = make_cluster()
    primaries, workers = await cluster.up(workers=(0, 1, 2))  # 3 of 4 is still a quorum
    client = await cluster.client(0)

    await submit(client, [b"x" * 1_000] * 10)
    await eventually(lambda: primaries[0].ours)
    digest = primaries[0].ours[0].digest
    assert cluster.holders(digest) == {0, 1, 2}
    assert workers[0].status()["late_batches"] == 1 and workers[0].status()["late_sends"] == 1

    primary3 = await cluster.start_primary(3)
    await cluster.start_worker(3)  # the retries of the late send reach it
    await eventually(lambda: cluster.holders(digest) == {0, 1, 2, 3})
    await eventually(lambda: reports(primary3.others) == [(digest, 0)])
    await eventually(lambda: workers[0].status()["late_batches"] == 0)
    assert workers[0].status()["acks_received"] == 3


async def test_cleanup_cancels_late_sends_and_synchronize_fetches_the_batch(make_cluster):
    cluster = make_cluster()
    primaries, workers = await cluster.up(workers=(0, 1, 2))
    primary0, worker0 = primaries[0], workers[0]
    client = await cluster.client(0)
    await submit(client, [b"y" * 1_000] * 10)
    await eventually(lambda: primary0.ours)
    digest = primary0.ours[0].digest
    # our primary acknowledged the report: the batch is no longer marked for resuming
    await eventually(lambda: cluster.store(0).keys("our_batches") == [])

    # Sealed before any cleanup, so it counts from the first, Cleanup(1); gc_depth 50:
    # Cleanup(51) keeps it, Cleanup(52) expires it.
    await primary0.request(0, messages.Cleanup(1))
    await primary0.request(0, messages.Cleanup(51))
    assert worker0.status()["late_batches"] == 1
    await primary0.request(0, messages.Cleanup(51))  # a resend changes nothing
    assert worker0.status()["late_batches"] == 1
    await primary0.request(0, messages.Cleanup(52))
    assert worker0.status()["late_batches"] == 0
    assert worker0.status()["late_sends_cancelled"] == 1 and worker0.status()["cleanup_round"] == 52

    primary3 = await cluster.start_primary(3)
    worker3 = await cluster.start_worker(3)
    await eventually(lambda: worker0.manager.is_connected(cluster.keys[3].workers[0].public))
    assert 3 not in cluster.holders(digest)  # nobody sends it any more
    # Its primary saw a header naming the batch: the worker fetches it from the author.
    await primary3.request(3, messages.Synchronize([digest], cluster.name(0)))
    await eventually(lambda: 3 in cluster.holders(digest))
    await eventually(lambda: reports(primary3.others) == [(digest, 0)])
    assert worker3.status()["batches_synced"] == 1
    assert worker3.status()["sync_wanted_digests"] == 0
    # Asking again for a batch it holds only repeats the report.
    await primary3.request(3, messages.Synchronize([digest], cluster.name(0)))
    await eventually(lambda: len(primary3.others) == 2)
    assert worker3.status()["batches_synced"] == 1
