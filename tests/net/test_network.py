"""PeerManager, ReliableNetwork and UnreliableNetwork over real 127.0.0.1 sockets."""

from __future__ import annotations

import asyncio
import gc
import os
import socket

import attrs
import pytest

from narwhal import messages
from narwhal.errors import (
    ErrorCode,
    PeerNotConnected,
    PeerRejected,
    PeerUnknown,
    PoolFull,
    RemoteError,
    RequestRejected,
    SendCancelled,
)
from narwhal.net.rpc import Router
from narwhal.net.sending import ReliableNetwork, UnreliableNetwork
from narwhal.wire.noise import HandshakePayload, NoiseHandshake, Pattern

from .cluster import (
    FAST,
    NETWORK_ID,
    eventually,
    keypair,
    make_nodes,
    settled_link,
    start_all,
    stop_all,
)


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def recording_router(received: list, *, delay: float = 0.0) -> Router:
    router = Router()

    async def on_cleanup(peer, message):
        if delay:
            await asyncio.sleep(delay)
        received.append((peer.info.name, message.round))

    router.route(messages.Cleanup, on_cleanup)
    return router


async def test_reliable_send_is_acknowledged_by_the_right_peer():
    received: list = []
    nodes = make_nodes(3, lambda i: recording_router(received))
    await start_all(nodes)
    try:
        net = ReliableNetwork(nodes[0].manager)
        handles = await net.broadcast([nodes[1].key, nodes[2].key], messages.Cleanup(7))
        responses = [await h for h in handles]
        assert all(isinstance(r, messages.Ack) for r in responses)
        assert sorted(received) == [("n0", 7), ("n0", 7)]
        # the handler saw the authenticated sender, and each receiver got it exactly once
        assert nodes[1].manager.metrics(nodes[0].key).sends_ok == 0
        assert nodes[0].manager.metrics(nodes[1].key).sends_ok == 1
    finally:
        await stop_all(nodes)


async def test_reliable_send_survives_peer_down_then_up():
    received: list = []
    nodes = make_nodes(2, lambda i: recording_router(received))
    await nodes[0].start([n.info for n in nodes])
    try:
        net = ReliableNetwork(nodes[0].manager)
        handle = await net.send(nodes[1].key, messages.Cleanup(1))
        await eventually(lambda: nodes[0].manager.metrics(nodes[1].key).retries >= 3)
        assert not handle.done()
        await nodes[1].start([n.info for n in nodes])
        assert isinstance(await asyncio.wait_for(handle.wait(), 10), messages.Ack)
        assert received == [("n0", 1)]
    finally:
        await stop_all(nodes)


async def test_cancel_stops_retries_and_frees_the_pool():
    nodes = make_nodes(2)
    await nodes[0].start([n.info for n in nodes])  # nodes[1] never starts: a dead peer
    try:
        manager = nodes[0].manager
        net = ReliableNetwork(manager)
        handle = await net.send(nodes[1].key, messages.Cleanup(1))
        metrics = manager.metrics(nodes[1].key)
        await eventually(lambda: metrics.retries >= 2)
        handle.cancel()
        with pytest.raises(SendCancelled):
            await handle
        retries = metrics.retries
        await asyncio.sleep(0.5)
        assert metrics.retries == retries
        assert manager.executor(nodes[1].key).pending == 0
        assert metrics.sends_cancelled == 1
    finally:
        await stop_all(nodes)


async def test_dropping_the_handle_cancels_the_send():
    nodes = make_nodes(2)
    await nodes[0].start([n.info for n in nodes])
    try:
        manager = nodes[0].manager
        handle = await ReliableNetwork(manager).send(nodes[1].key, messages.Cleanup(1))
        executor = manager.executor(nodes[1].key)
        assert executor.pending == 1
        del handle
        gc.collect()
        await eventually(lambda: executor.pending == 0)
    finally:
        await stop_all(nodes)


async def test_permanent_error_stops_retries():
    router = Router()

    async def reject(peer, message):
        raise RequestRejected(ErrorCode.INVALID, "round too old")

    router.route(messages.Cleanup, reject)
    nodes = make_nodes(2, lambda i: router)
    await start_all(nodes)
    try:
        handle = await ReliableNetwork(nodes[0].manager).send(nodes[1].key, messages.Cleanup(1))
        with pytest.raises(RemoteError) as info:
            await handle
        assert info.value.code is ErrorCode.INVALID
        assert nodes[0].manager.metrics(nodes[1].key).retries == 0
    finally:
        await stop_all(nodes)


async def test_slow_peer_does_not_delay_the_others():
    received: list = []
    slow_release = asyncio.Event()
    routers = {1: recording_router(received), 2: Router()}

    async def stuck(peer, message):
        await slow_release.wait()

    routers[2].route(messages.Cleanup, stuck)
    config = attrs.evolve(FAST, pool_capacity=4, max_pending=10_000, connect_timeout=0.5,
                           request_timeout=60.0)
    nodes = make_nodes(3, lambda i: routers.get(i, Router()))
    await start_all(nodes, config)
    try:
        net = ReliableNetwork(nodes[0].manager)
        await eventually(lambda: nodes[0].manager.is_connected(nodes[2].key))
        stuck_handles = [await net.send(nodes[2].key, messages.Cleanup(r)) for r in range(50)]
        fast_handles = [await net.send(nodes[1].key, messages.Cleanup(r)) for r in range(200)]
        await asyncio.wait_for(asyncio.gather(*(h.wait() for h in fast_handles)), 10)
        assert len(received) == 200
        assert not any(h.done() for h in stuck_handles)
        assert nodes[0].manager.executor(nodes[2].key).in_flight == 4  # its own pool is full
        slow_release.set()
        await asyncio.wait_for(asyncio.gather(*(h.wait() for h in stuck_handles)), 10)
    finally:
        slow_release.set()
        await stop_all(nodes)


async def test_blackholed_peer_does_not_delay_the_others():
    """A peer that accepts TCP and never answers the handshake (a black hole)."""
    received: list = []
    nodes = make_nodes(3, lambda i: recording_router(received))
    blackhole = nodes[2].sock
    blackhole.listen()  # accepts connections at the kernel level; nobody ever reads
    await nodes[0].start([n.info for n in nodes])
    await nodes[1].start([n.info for n in nodes])
    try:
        net = ReliableNetwork(nodes[0].manager)
        hole = [await net.send(nodes[2].key, messages.Cleanup(r)) for r in range(20)]
        ok = [await net.send(nodes[1].key, messages.Cleanup(r)) for r in range(100)]
        await asyncio.wait_for(asyncio.gather(*(h.wait() for h in ok)), 10)
        assert len(received) == 100
        assert not any(h.done() for h in hole)
        for h in hole:
            h.cancel()
    finally:
        await stop_all(nodes[:2])
        blackhole.close()


async def test_unreliable_send_refuses_at_once():
    nodes = make_nodes(2)
    await nodes[0].start([n.info for n in nodes])
    try:
        net = UnreliableNetwork(nodes[0].manager)
        with pytest.raises(PeerNotConnected):
            net.unreliable_send(nodes[1].key, messages.Cleanup(1))
        with pytest.raises(PeerUnknown):
            net.unreliable_send(b"\x01" * 32, messages.Cleanup(1))
        results = net.unreliable_broadcast([nodes[1].key, b"\x02" * 32], messages.Cleanup(1))
        assert isinstance(results[0], PeerNotConnected) and isinstance(results[1], PeerUnknown)
    finally:
        await stop_all(nodes)


async def test_unreliable_send_refuses_when_pool_full():
    release = asyncio.Event()
    router = Router()

    async def stuck(peer, message):
        await release.wait()

    router.route(messages.Cleanup, stuck)
    config = attrs.evolve(FAST, pool_capacity=2, max_pending=2, connect_timeout=0.5, request_timeout=10)
    nodes = make_nodes(2, lambda i: router)
    await start_all(nodes, config)
    try:
        await settled_link(nodes[0], nodes[1])  # one try each: no duplicate-dial drop mid-test
        net = UnreliableNetwork(nodes[0].manager)
        tasks = [net.unreliable_send(nodes[1].key, messages.Cleanup(i)) for i in range(2)]
        with pytest.raises(PoolFull):
            net.unreliable_send(nodes[1].key, messages.Cleanup(3))
        release.set()
        assert all(isinstance(r, messages.Ack) for r in await asyncio.gather(*tasks))
        net.unreliable_send(nodes[1].key, messages.Cleanup(4))  # a slot is free again
    finally:
        release.set()
        await stop_all(nodes)


async def test_duplicate_connections_resolve_to_one():
    nodes = make_nodes(2)
    await start_all(nodes)
    try:
        a, b = nodes[0].manager, nodes[1].manager
        smaller_is_a = nodes[0].key < nodes[1].key

        def both_keep_the_smaller_keys_dial() -> bool:
            conn_a = a.connection_nowait(nodes[1].key)
            conn_b = b.connection_nowait(nodes[0].key)
            return (conn_a is not None and conn_b is not None and conn_a.initiator == smaller_is_a
                    and conn_b.initiator == (not smaller_is_a))

        # both dial at start; both keep the connection dialed by the smaller key
        await eventually(both_keep_the_smaller_keys_dial)
        await eventually(lambda: a.handshakes_in_flight == b.handshakes_in_flight == 0)
        assert both_keep_the_smaller_keys_dial()  # the tie-break closed the other one
    finally:
        await stop_all(nodes)


async def test_non_committee_key_is_rejected_in_the_handshake():
    received: list = []
    nodes = make_nodes(2, lambda i: recording_router(received))
    await start_all(nodes)
    try:
        stranger_private, _ = keypair()
        reader, writer = await asyncio.open_connection(*nodes[0].info.address)
        hs = NoiseHandshake.initiator(pattern=Pattern.IK, network_id=NETWORK_ID,
                                      remote_static=nodes[0].key, local_static=stranger_private)
        hs.initiate(HandshakePayload("primary", authority=b"\x09" * 32))
        writer.write(hs.data_to_send())
        with pytest.raises(PeerRejected) as info:
            while True:
                data = await asyncio.wait_for(reader.read(4096), 5)
                assert data, "closed without an answer"
                hs.receive_data(data)
        assert info.value.code is ErrorCode.UNAUTHORIZED
        writer.close()
        assert nodes[0].manager.rejected_handshakes == 1
        # the node keeps serving its real peers
        handle = await ReliableNetwork(nodes[1].manager).send(nodes[0].key, messages.Cleanup(5))
        await asyncio.wait_for(handle.wait(), 5)
        assert received == [("n1", 5)]
    finally:
        await stop_all(nodes)


async def test_committee_key_with_wrong_role_is_rejected():
    nodes = make_nodes(2)
    await nodes[0].start([n.info for n in nodes])
    try:
        reader, writer = await asyncio.open_connection(*nodes[0].info.address)
        hs = NoiseHandshake.initiator(pattern=Pattern.IK, network_id=NETWORK_ID,
                                      remote_static=nodes[0].key, local_static=nodes[1].private)
        hs.initiate(HandshakePayload("worker", authority=nodes[1].info.authority, worker_id=0))
        writer.write(hs.data_to_send())
        with pytest.raises(PeerRejected):
            while data := await asyncio.wait_for(reader.read(4096), 5):
                hs.receive_data(data)
            raise AssertionError("closed without an answer")
        writer.close()
    finally:
        await stop_all(nodes)


async def test_silent_connection_is_closed_at_the_handshake_timeout():
    nodes = make_nodes(1)
    await nodes[0].start([n.info for n in nodes])
    try:
        reader, writer = await asyncio.open_connection(*nodes[0].info.address)
        writer.write(b"NWPY")  # a slow loris: part of a preamble, then nothing
        data = await asyncio.wait_for(reader.read(), FAST.connection.handshake_timeout + 3)
        assert data == b""  # closed by the node
        writer.close()
    finally:
        await stop_all(nodes)


async def test_keepalive_measures_rtt():
    nodes = make_nodes(2)
    await start_all(nodes)
    try:
        manager = nodes[0].manager
        await eventually(lambda: manager.is_connected(nodes[1].key))
        await eventually(lambda: manager.snapshot()[0]["rtt_ms"] is not None, timeout=3)
        row = manager.snapshot()[0]
        assert row["state"] == "connected" and 0 < row["rtt_ms"] < 1000
    finally:
        await stop_all(nodes)


async def test_memory_flat_after_100k_cancelled_sends_to_a_dead_peer():
    nodes = make_nodes(2)
    config = attrs.evolve(FAST, pool_capacity=64, max_pending=200_000, connect_timeout=0.05)
    await nodes[0].start([n.info for n in nodes], config)
    try:
        manager = nodes[0].manager
        net = ReliableNetwork(manager)
        executor = manager.executor(nodes[1].key)
        message = messages.Cleanup(1)

        async def wave(count: int) -> None:
            handles = [await net.send(nodes[1].key, message) for _ in range(count)]
            await asyncio.sleep(0)
            for h in handles:
                h.cancel()
            await eventually(lambda: executor.pending == 0, timeout=30)

        await wave(10_000)  # warm up caches and free lists
        gc.collect()
        before = resident_bytes()
        tasks_before = len(asyncio.all_tasks())
        for _ in range(10):
            await wave(10_000)
        gc.collect()
        grown = resident_bytes() - before
        assert executor.pending == 0
        assert manager.metrics(nodes[1].key).sends_cancelled == 110_000
        assert len(asyncio.all_tasks()) <= tasks_before  # no task outlived its cancel
        # each pending send holds a task, closures, a handle and its retry state (> 1 KB):
        # 100k leaked sends would be > 100 MB. Allow allocator noise (measured ~15 MB).
        assert grown < 50_000_000, f"resident memory grew by {grown} bytes"
    finally:
        await stop_all(nodes)


async def test_restarted_peer_is_redialed_and_counted():
    received: list = []
    nodes = make_nodes(2, lambda i: recording_router(received))
    await start_all(nodes)
    try:
        a = nodes[0].manager
        await eventually(lambda: a.is_connected(nodes[1].key))
        port = nodes[1].info.address[1]
        await nodes[1].stop()
        await eventually(lambda: not a.is_connected(nodes[1].key))
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        nodes[1].sock = sock
        await nodes[1].start([n.info for n in nodes])
        await eventually(lambda: a.is_connected(nodes[1].key))
        assert a.metrics(nodes[1].key).reconnects >= 1
        handle = await ReliableNetwork(a).send(nodes[1].key, messages.Cleanup(3))
        await asyncio.wait_for(handle.wait(), 5)
    finally:
        await stop_all(nodes)
