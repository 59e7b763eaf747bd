"""RequestBatches serving (missing digests, response budget) and Synchronize fallbacks."""

from __future__ import annotations

import asyncio
import hashlib

import cbor2
import pytest

from narwhal import messages
from narwhal.errors import ErrorCode, RemoteError
from narwhal.net.rpc import Router

from .harness import eventually, reports, submit


def unknown(i: int) -> bytes:
    return hashlib.sha256(b"unknown %d" % i).digest()


async def put_batch(cluster, holders, txs) -> bytes:
    """Store a batch directly in the stores of ``holders`` (before their workers start)."""
    batch = messages.Batch(txs)
    for i in holders:
        await cluster.store(i).put("batches", batch.digest(), messages.encode(batch))
    return batch.digest()


async def test_request_batches_lists_unknown_and_splits_at_the_response_budget(make_cluster):
    # A 64 KiB frame limit makes the response budget 32 KiB: three 10 KB batches.
    cluster = make_cluster(max_frame_size=65_536, max_batch_delay=10.0)
    primaries, workers = await cluster.up()
    primary0, worker0 = primaries[0], workers[0]
    client = await cluster.client(0)
    await submit(client, [bytes([i]) * 1_000 for i in range(50)])  # five full batches
    await eventually(lambda: len(primary0.ours) == 5)
    ours = [m.digest for m in primary0.ours]

    answer = await primary0.request(0, messages.RequestBatches([unknown(1), *ours, unknown(2)]))
    assert [b.digest() for b in answer.batches] == ours[:3]
    assert answer.missing == (unknown(1), *ours[3:], unknown(2))
    answer = await primary0.request(0, messages.RequestBatches(answer.missing))
    assert [b.digest() for b in answer.batches] == ours[3:]
    assert answer.missing == (unknown(1), unknown(2))
    assert worker0.status()["batches_served"] == 5

    # More digests than MAX_DIGESTS_PER_REQUEST do not even decode.
    body = cbor2.dumps([[unknown(0)] * (messages.MAX_DIGESTS_PER_REQUEST + 1)], canonical=True)
    with pytest.raises(RemoteError) as info:
        await primary0.request(0, None, raw=(messages.RequestBatches.TAG, body))
    assert info.value.code is ErrorCode.TOO_LARGE
    assert worker0.status()["rpc_errors_live_connections"]["malformed"] == 1


@pytest.mark.parametrize("target_up", [True, False])
async def test_synchronize_falls_back_to_other_workers(make_cluster, target_up):
    cluster = make_cluster()
    digest = await put_batch(cluster, [1, 2], [b"held by 1 and 2"])
    primaries, workers = await cluster.up(workers=(0, 1, 2, 3) if target_up else (0, 1, 2))
    primary0, worker0 = primaries[0], workers[0]
    await eventually(lambda: worker0.manager.is_connected(cluster.keys[2].workers[0].public))
    loop = asyncio.get_running_loop()
    started = loop.time()

    # The target (authority 3) lacks it, or is down: the others are asked, at once when it
    # answered, after sync_retry_delay (0.3 s +-30%) when it did not.
    await primary0.request(0, messages.Synchronize([digest], cluster.name(3)))
    await eventually(lambda: 0 in cluster.holders(digest))
    if not target_up:
        assert loop.time() - started >= 0.2
    await eventually(lambda: reports(primary0.others) == [(digest, 0)])
    assert worker0.status()["batches_synced"] == 1


async def test_a_batch_we_did_not_ask_for_is_ignored_and_counted(make_cluster):
    cluster = make_cluster()
    wanted = await put_batch(cluster, [2], [b"the real one"])
    bogus = messages.Batch([b"something else"])
    router = Router()

    async def lie(peer, request):
        return messages.BatchesResponse([bogus], [])

    router.route(messages.RequestBatches, lie)
    liar = await cluster.start_fake_worker(1, router)
    primaries, workers = await cluster.up(workers=(0, 2, 3))
    primary0, worker0 = primaries[0], workers[0]
    await eventually(lambda: worker0.manager.is_connected(cluster.keys[1].workers[0].public))
    assert liar.manager.is_connected(cluster.keys[0].workers[0].public)

    await primary0.request(0, messages.Synchronize([wanted], cluster.name(1)))
    await eventually(lambda: worker0.status()["errors"].get("sync_unexpected_batch", 0) >= 1)
    await eventually(lambda: 0 in cluster.holders(wanted))  # from worker 2, in a later round
    assert 0 not in cluster.holders(bogus.digest())
    await eventually(lambda: primary0.reported == {wanted})


async def test_concurrent_synchronize_of_one_digest_is_fetched_once(make_cluster):
    cluster = make_cluster()
    digest = await put_batch(cluster, [1], [b"once"])
    primaries, workers = await cluster.up(workers=(0, 1))
    primary0, worker0 = primaries[0], workers[0]
    await eventually(lambda: worker0.manager.is_connected(cluster.keys[1].workers[0].public))
    for _ in range(3):
        await primary0.request(0, messages.Synchronize([digest], cluster.name(1)))
    await eventually(lambda: 0 in cluster.holders(digest))
    await eventually(lambda: worker0.status()["sync_wanted_digests"] == 0)
    assert worker0.status()["batches_synced"] == 1
    await eventually(lambda: (digest, 0) in reports(primary0.others))


async def test_sync_state_is_bounded_and_expires_on_cleanup(make_cluster):
    cluster = make_cluster()
    primaries, workers = await cluster.up(workers=(0, 1))
    primary0, worker0 = primaries[0], workers[0]
    worker0.synchronizer.max_wanted = 3
    worker0.synchronizer.max_per_target = 10  # the global bound alone

    await primary0.request(0, messages.Synchronize([unknown(1), unknown(2)], cluster.name(1)))
    with pytest.raises(RemoteError) as info:  # 2 + 2 > 3: refused, nothing half-registered
        await primary0.request(0, messages.Synchronize([unknown(3), unknown(4)], cluster.name(1)))
    assert info.value.code is ErrorCode.OVERLOADED
    assert worker0.status()["errors"]["sync_overloaded"] == 1
    assert worker0.status()["sync_wanted_digests"] == 2

    # Nobody has them: the sync keeps trying until the GC horizon (gc_depth 50) passes it,
    # counted from the first cleanup this worker saw (the sync started before any).
    await primary0.request(0, messages.Cleanup(1))
    await primary0.request(0, messages.Cleanup(51))
    assert worker0.status()["sync_wanted_digests"] == 2
    await primary0.request(0, messages.Cleanup(52))
    assert worker0.status()["sync_wanted_digests"] == 0
    await primary0.request(0, messages.Synchronize([unknown(3), unknown(4)], cluster.name(1)))
    assert worker0.status()["sync_wanted_digests"] == 2


async def test_a_flood_of_fake_digests_fills_only_its_author_s_share(make_cluster):
    """A Byzantine author (3) whose headers name made-up batches makes our primary ask for
    them: they fill authority 3's share of the sync state, not the whole of it, so a
    Synchronize for an honest author's batch is still accepted and fetched."""
    cluster = make_cluster()
    honest = await put_batch(cluster, [1], [b"an honest batch"])
    primaries, workers = await cluster.up(workers=(0, 1))
    primary0, worker0 = primaries[0], workers[0]
    sync = worker0.synchronizer
    assert (sync.authorities, sync.max_wanted, sync.target_share) == (4, 10_000, 2_500)
    sync.max_wanted, sync.max_per_target = 40, 10  # the same rule, smaller: 4 shares of 10

    fakes = [unknown(i) for i in range(100)]
    await primary0.request(0, messages.Synchronize(fakes[:6], cluster.name(3)))
    await primary0.request(0, messages.Synchronize(fakes[6:10], cluster.name(3)))  # 10: full
    for start in (10, 20, 30):  # refused whole: nothing half-registered
        await refused_overloaded(primary0.request(
            0, messages.Synchronize(fakes[start:start + 10], cluster.name(3))))
    await refused_overloaded(primary0.request(0, messages.Synchronize(fakes[10:11], cluster.name(3))))
    status = worker0.status()
    assert status["errors"]["sync_target_overloaded"] == 4
    assert "sync_overloaded" not in status["errors"]
    assert status["sync_wanted_digests"] == 10
    assert status["sync_wanted_by_target"] == {cluster.name(3).hex()[:8]: 10}

    # Honest authors' batches are still accepted (their own shares are untouched) and fetched.
    await eventually(lambda: worker0.manager.is_connected(cluster.keys[1].workers[0].public))
    await primary0.request(0, messages.Synchronize([honest], cluster.name(1)))
    await primary0.request(0, messages.Synchronize(fakes[50:60], cluster.name(2)))  # a full share
    await eventually(lambda: 0 in cluster.holders(honest))
    await eventually(lambda: (honest, 0) in reports(primary0.others))
    await eventually(lambda: worker0.status()["sync_wanted_by_target"] == {
        cluster.name(3).hex()[:8]: 10, cluster.name(2).hex()[:8]: 10})
    assert worker0.status()["errors"]["sync_target_overloaded"] == 4

    # The fake digests are given up at the GC horizon, which frees the Byzantine share.
    await primary0.request(0, messages.Cleanup(1))
    await primary0.request(0, messages.Cleanup(52))
    assert worker0.status()["sync_wanted_digests"] == 0
    assert worker0.status()["sync_wanted_by_target"] == {}
    await primary0.request(0, messages.Synchronize(fakes[10:20], cluster.name(3)))
    assert worker0.status()["sync_wanted_by_target"] == {cluster.name(3).hex()[:8]: 10}


async def refused_overloaded(call) -> None:
    with pytest.raises(RemoteError) as info:
        await call
    assert info.value.code is ErrorCode.OVERLOADED, info.value


async def test_request_batches_is_read_on_a_reader_thread_not_the_event_loop(make_cluster,
                                                                             monkeypatch):
    """Issue 12: a peer's RequestBatches (up to 4 MiB of reads) is read off the loop."""
    import threading

    from narwhal.store import Reader

    cluster = make_cluster()
    digests = [await put_batch(cluster, [0], [bytes([i]) * 100_000] * 5) for i in range(4)]
    _, workers = await cluster.up(workers=(0,))
    peer = await cluster.start_fake_worker(1, Router())
    threads: list[int] = []
    real_get = Reader.get

    def spy(self, family, key):
        if family == "batches":
            threads.append(threading.get_ident())
        return real_get(self, family, key)

    monkeypatch.setattr(Reader, "get", spy)
    answer = await peer.request(0, messages.RequestBatches(digests))
    assert [b.digest() for b in answer.batches] == digests
    assert len(threads) == 4 and threading.get_ident() not in threads
    assert workers[0].status()["serving_reads"]["served"] == 1


async def test_synchronize_of_a_held_batch_reads_it_on_a_reader_thread(make_cluster, monkeypatch):
    """Issue 12: our primary's Synchronize for a batch we already hold reports it at once,
    with its transaction count, read off the loop (the batch is up to 4 MiB); a digest we
    lack is fetched as before."""
    import threading

    from narwhal.store import Reader

    cluster = make_cluster()
    held = await put_batch(cluster, [0, 1], [b"a" * 100_000, b"b" * 100_000, b"c"])
    lacking = await put_batch(cluster, [1], [b"only at worker 1"])
    primaries, workers = await cluster.up(workers=(0, 1))
    primary0, worker0 = primaries[0], workers[0]
    await eventually(lambda: worker0.manager.is_connected(cluster.keys[1].workers[0].public))
    threads: list[int] = []
    real_get = Reader.get

    def spy(self, family, key):
        if family == "batches" and key == held:
            threads.append(threading.get_ident())
        return real_get(self, family, key)

    monkeypatch.setattr(Reader, "get", spy)
    await primary0.request(0, messages.Synchronize([held, lacking], cluster.name(1)))
    await eventually(lambda: sorted(reports(primary0.others)) == sorted([(held, 0), (lacking, 0)]))
    assert len(threads) == 1 and threading.get_ident() not in threads
    assert next(r for r in primary0.others if r.digest == held).transactions == 3
    assert workers[0].status()["serving_reads"]["served"] == 1
