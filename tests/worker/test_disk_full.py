"""A worker whose disk fills up: it refuses transactions with a clear, permanent error
(instead of accepting what it cannot store), answers peers' batches STORAGE_FAILED (so they
do not retry at it for ever), keeps the batch it had already acknowledged until it can
store it, and takes transactions again by itself once writes succeed.
Real sockets; the full disk is :class:`tests.faulty_store.FaultyStore`."""

from __future__ import annotations

import pytest

from narwhal import messages
from narwhal import store as store_module
from narwhal.errors import ErrorCode, RemoteError
from narwhal.net.rpc import Router

from ..faulty_store import FaultyStore
from .harness import eventually, submit


async def test_a_full_disk_refuses_clients_and_peers_then_recovers(make_cluster, monkeypatch):
    monkeypatch.setattr(store_module, "PROBE_INTERVAL", 0.05)
    cluster = make_cluster(batch_size=2_000, max_transaction_size=1_000)
    store = FaultyStore.open(cluster.tmp_path / "worker0.db", synchronous="NORMAL")
    cluster.stores[0] = store
    await cluster.start_primary(0)
    worker0 = await cluster.start_worker(0)
    for i in (1, 2):
        await cluster.start_worker(i)
    client = await cluster.client(0)
    assert await submit(client, [b"a" * 1_000] * 2) == messages.TransactionsAccepted(2)
    await eventually(lambda: worker0.status()["txs_stored"] == 2)  # its batch is on the disk

    store.full = True
    await submit(client, [b"b" * 1_000] * 2)  # accepted: its batch is sealed, and not stored
    await eventually(lambda: worker0.status()["errors"].get("store_retried", 0) >= 2)
    await eventually(lambda: store.failing)
    with pytest.raises(RemoteError) as refused:
        await submit(client, [b"c" * 1_000])
    assert refused.value.code is ErrorCode.STORAGE_FAILED and not refused.value.transient
    assert "disk full" in str(refused.value)
    assert worker0.status()["errors"]["storage_failed"] == 1

    peer = await cluster.start_fake_worker(3, Router())  # authority 3's worker, as a peer
    batch = messages.Batch([b"from a peer"])
    with pytest.raises(RemoteError) as answered:
        await peer.request(0, batch)
    assert answered.value.code is ErrorCode.STORAGE_FAILED  # permanent: no retry at us

    store.full = False  # space is back: no operator action needed beyond that
    await eventually(lambda: not store.failing)
    # the batch sealed as the disk filled was kept: stored now, replicated and reported
    await eventually(lambda: worker0.status()["txs_stored"] == 4)
    assert store.get("batches", messages.Batch([b"b" * 1_000] * 2).digest()) is not None
    assert await submit(client, [b"d" * 1_000] * 2) == messages.TransactionsAccepted(2)
    assert await peer.request(0, batch) == messages.Ack()
