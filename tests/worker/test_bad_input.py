"""Hostile and malformed input: each is refused with a typed error and counted, and honest
traffic continues."""

from __future__ import annotations

import pytest

from narwhal import messages
from narwhal.crypto import NetworkKeyPair
from narwhal.errors import ErrorCode, PeerNotConnected, RemoteError
from narwhal.net.network import PeerManager
from narwhal.net.rpc import Router
from narwhal.wire.noise import HandshakePayload

from .harness import eventually, reports, submit


async def refused(code: ErrorCode, call) -> None:
    with pytest.raises(RemoteError) as info:
        await call
    assert info.value.code is code, info.value


async def worker_with_a_peer(make_cluster):
    """Worker 0 with its (fake) primary and a fake worker of authority 1."""
    cluster = make_cluster()
    primaries, workers = await cluster.up(workers=(0,))
    return cluster, primaries[0], workers[0], await cluster.start_fake_worker(1, Router())


async def test_bad_transactions_are_refused_and_honest_ones_still_flow(make_cluster):
    cluster = make_cluster()
    primaries, workers = await cluster.up(workers=(0, 1, 2))
    worker0 = workers[0]
    client = await cluster.client(0)

    await refused(ErrorCode.TOO_LARGE, submit(client, [b"ok", b"x" * 2_001]))
    await refused(ErrorCode.INVALID, submit(client, [b"ok", b""]))
    assert await submit(client, []) == messages.TransactionsAccepted(0)
    errors = worker0.status()["errors"]
    assert errors["tx_too_large"] == 1 and errors["tx_empty"] == 1
    assert worker0.status()["txs_received"] == 0  # refused submissions are refused whole

    assert await submit(client, [b"x" * 2_000]) == messages.TransactionsAccepted(1)
    await eventually(lambda: primaries[0].ours)


async def test_a_non_member_key_is_refused_at_the_handshake(make_cluster):
    cluster = make_cluster()
    worker0 = await cluster.start_worker(0)
    intruder = NetworkKeyPair.generate()
    # It claims to be authority 1's worker 0, but holds another key.
    [target] = [p for p in cluster.committee.worker_peers(cluster.name(1), 0)
                if p.authority == cluster.name(0)]
    manager = PeerManager(
        local_static=intruder.private, local_public=intruder.public,
        local_payload=HandshakePayload("worker", authority=cluster.name(1), worker_id=0),
        network_id=cluster.committee.network_id(), peers=[target], router=Router(),
        config=cluster.parameters.network_config(), name="intruder")
    await manager.start(sock=None)
    try:
        with pytest.raises(PeerNotConnected):
            await manager.connection(target.static_key, timeout=1.0)
    finally:
        await manager.stop()
    assert worker0.status()["errors"]["handshake_rejected"] >= 1
    assert worker0.status()["batches_received_from_peers"] == 0


async def test_messages_on_the_wrong_link_are_unauthorized(make_cluster):
    cluster, primary0, worker0, peer1 = await worker_with_a_peer(make_cluster)

    # Only our own primary may ask us to synchronize or clean up...
    await refused(ErrorCode.UNAUTHORIZED,
                  peer1.request(0, messages.Synchronize([bytes(32)], cluster.name(1))))
    await refused(ErrorCode.UNAUTHORIZED, peer1.request(0, messages.Cleanup(100)))
    # ...and only peer workers send us batches.
    await refused(ErrorCode.UNAUTHORIZED, primary0.request(0, messages.Batch([b"tx"])))
    status = worker0.status()
    assert status["errors"]["unauthorized"] == 3
    assert status["cleanup_round"] == 0 and status["sync_wanted_digests"] == 0
    # Both may fetch batches.
    assert (await peer1.request(0, messages.RequestBatches([bytes(32)]))).missing == (bytes(32),)
    assert (await primary0.request(0, messages.RequestBatches([bytes(32)]))).missing == (bytes(32),)


async def test_oversize_batches_are_refused_and_duplicates_acked_once(make_cluster):
    cluster, primary0, worker0, peer1 = await worker_with_a_peer(make_cluster)

    too_big = messages.Batch([b"z" * 2_000] * 6 + [b"z"])  # batch_size + max_tx + 1
    await refused(ErrorCode.TOO_LARGE, peer1.request(0, too_big))
    assert worker0.status()["errors"]["batch_too_large"] == 1
    assert not cluster.holders(too_big.digest())

    batch = messages.Batch([b"z" * 2_000] * 6)  # exactly the limit
    for _ in range(2):  # a resend (lost ack) is acked again, stored and reported once
        assert await peer1.request(0, batch) == messages.Ack()
    assert cluster.holders(batch.digest()) == {0}
    await eventually(lambda: primary0.others)
    assert reports(primary0.others) == [(batch.digest(), 0)]
    assert worker0.status()["batches_received_from_peers"] == 1
