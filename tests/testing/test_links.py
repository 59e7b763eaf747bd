"""The link emulator over real 127.0.0.1 sockets: the latency it adds is measured, the
bandwidth it allows is measured, cuts hold bytes and heals deliver them intact, a one-way
cut stops one direction only, a blackhole throws bytes away and its heal resets the
connection, loss stalls but never corrupts, and counters count. Then two real
PeerManagers (Noise) talk through it, routed by a dial override."""

from __future__ import annotations

import asyncio
import os
import time

import attrs
import pytest

from narwhal import messages
from narwhal.net.rpc import Router
from narwhal.net.sending import ReliableNetwork
from narwhal.testing.links import CHUNK, MAX_QUEUE_DELAY, RTO, LinkEmulator
from tests.net.cluster import FAST, eventually, make_nodes, stop_all


class Sink:
    """A TCP server (node 1) that records what it receives and echoes it back."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.server: asyncio.Server | None = None

    async def start(self) -> tuple[str, int]:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(65536):
                self.received += data
                writer.write(data)
                await writer.drain()
            writer.close()
        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        return "127.0.0.1", self.server.sockets[0].getsockname()[1]


@pytest.fixture
async def relayed():
    """(emulator, sink, (reader, writer) of node 0 connected through the relay 0->1)."""
    emulator, sink = LinkEmulator(seed=1), Sink()
    relay = await emulator.add_route(0, 1, await sink.start())
    reader, writer = await asyncio.open_connection(*relay)
    yield emulator, sink, reader, writer
    writer.close()
    await emulator.close()
    sink.server.close()


async def round_trip(reader, writer, payload: bytes = b"ping") -> float:
    started = time.monotonic()
    writer.write(payload)
    await writer.drain()
    got = await asyncio.wait_for(reader.readexactly(len(payload)), 10)
    assert got == payload
    return time.monotonic() - started


async def test_latency_is_added_each_way(relayed):
    emulator, _, reader, writer = relayed
    base = min([await round_trip(reader, writer) for _ in range(5)])
    emulator.shape(latency=0.1)
    shaped = min([await round_trip(reader, writer) for _ in range(5)])
    assert 0.19 <= shaped - base <= 0.4, (base, shaped)  # 100 ms one way, both ways


async def test_jitter_keeps_the_stream_in_order(relayed):
    emulator, _sink, reader, writer = relayed
    emulator.shape(latency=0.02, jitter=0.02)
    payload = b"".join(b"%06d" % i for i in range(2000))
    for i in range(0, len(payload), 600):  # many small chunks, each with its own delay
        writer.write(payload[i:i + 600])
        await writer.drain()
        await asyncio.sleep(0.001)
    assert await asyncio.wait_for(reader.readexactly(len(payload)), 10) == payload


async def test_bandwidth_is_throttled(relayed):
    emulator, sink, _reader, writer = relayed
    emulator.shape([(0, 1)], bandwidth=200_000)
    started = time.monotonic()
    writer.write(os.urandom(100_000))
    await writer.drain()
    await eventually(lambda: len(sink.received) >= 100_000, timeout=10)
    elapsed = time.monotonic() - started
    assert 0.4 <= elapsed <= 2.0, elapsed  # 100 kB at 200 kB/s: 0.5 s


async def test_a_slow_link_queues_at_most_its_buffer_and_the_rest_waits_at_the_sender(relayed):
    """Like a router's buffer: a 20 kB/s link holds about MAX_QUEUE_DELAY of backlog (plus
    the chunk being read); the rest waits on the sender's side (its socket buffers, then
    its writes back up)."""
    emulator, sink, _reader, writer = relayed
    emulator.shape([(0, 1)], bandwidth=20_000)
    writer.write(os.urandom(2_000_000))
    await asyncio.sleep(1.5)
    counters = emulator.counters()["0->1"]
    queued = counters["bytes_in"] - counters.get("bytes_delivered", 0)
    assert queued <= 20_000 * MAX_QUEUE_DELAY + CHUNK, queued
    assert counters["bytes_in"] < 200_000  # the relay stopped reading: not 2 MB ahead
    assert 10_000 <= len(sink.received) <= 200_000, len(sink.received)


async def test_a_slow_link_made_fast_again_drains_what_it_holds_at_once(relayed):
    """Reshaping reschedules what waits: chunks read at 10 kB/s are not still delivered at
    that pace after the link is back to full speed (the chaos slow-link scenario's node
    stayed behind for 20 s after the heal because of it)."""
    emulator, sink, _reader, writer = relayed
    emulator.shape([(0, 1)], bandwidth=10_000)
    payload = os.urandom(300_000)
    writer.write(payload)
    await asyncio.sleep(1.0)
    assert len(sink.received) < 100_000
    emulator.shape([(0, 1)], bandwidth=None)
    started = time.monotonic()
    await eventually(lambda: len(sink.received) >= len(payload), timeout=10)
    assert time.monotonic() - started < 1.0  # at 10 kB/s the rest would take ~25 s
    assert bytes(sink.received) == payload


async def test_cut_holds_bytes_and_heal_delivers_them_intact(relayed):
    emulator, sink, reader, writer = relayed
    await round_trip(reader, writer)
    sink.received.clear()
    emulator.partition([0], [1])
    payload = os.urandom(50_000)
    writer.write(payload)
    await asyncio.sleep(0.5)
    assert len(sink.received) == 0
    assert emulator.counters()["0->1"]["state"] == "cut"
    emulator.heal()
    assert await asyncio.wait_for(reader.readexactly(len(payload)), 10) == payload
    assert bytes(sink.received) == payload
    counters = emulator.counters()
    assert counters["0->1"]["bytes_delivered"] == counters["0->1"]["bytes_in"] == 4 + 50_000
    assert counters["0->1"]["connections"] == 1 and counters["1->0"]["open_connections"] == 1


async def test_one_way_cut_stops_only_that_direction(relayed):
    emulator, sink, reader, writer = relayed
    await round_trip(reader, writer)
    emulator.cut(emulator.inbound(0))  # node 0 can send but not receive
    writer.write(b"one-way")
    await eventually(lambda: sink.received.endswith(b"one-way"), timeout=5)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.readexactly(7), 0.5)
    emulator.heal()
    assert await asyncio.wait_for(reader.readexactly(7), 5) == b"one-way"


async def test_blackhole_discards_and_heal_resets_the_connection(relayed):
    emulator, sink, reader, writer = relayed
    await round_trip(reader, writer)
    emulator.blackhole([(0, 1)])
    writer.write(b"x" * 10_000)
    await writer.drain()
    await eventually(lambda: emulator.counters()["0->1"].get("bytes_discarded") == 10_000, timeout=5)
    assert sink.received == b"ping"
    emulator.heal()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # reset: the stream had a hole
    assert emulator.counters()["0->1"]["connections_reset"] == 1


async def test_loss_stalls_but_delivers_everything_in_order(relayed):
    emulator, _sink, reader, writer = relayed
    emulator.shape([(0, 1)], loss=0.5)
    started = time.monotonic()
    for _ in range(5):
        await round_trip(reader, writer, b"y" * 3000)  # 3 segments: lost w.p. 7/8 each
    stalls = emulator.counters()["0->1"]["loss_stalls"]
    assert stalls >= 1
    assert time.monotonic() - started >= stalls * RTO * 0.9


async def test_refused_target_closes_the_dialers_connection():
    emulator = LinkEmulator()
    relay = await emulator.add_route(0, 1, ("127.0.0.1", 1))  # nothing listens on port 1
    reader, writer = await asyncio.open_connection(*relay)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    await emulator.close()


async def test_peer_managers_talk_through_a_dial_override_and_a_partition_stops_them():
    """Node 0's directory has node 1 at its real address, but node 0 dials the relay (its
    dial override): every byte between them crosses the emulator, which can cut them."""
    received: list[int] = []

    def router(i: int) -> Router:
        r = Router()

        async def on_cleanup(peer, message):
            received.append(message.round)
        r.route(messages.Cleanup, on_cleanup)
        return r

    nodes = make_nodes(2, router)
    emulator = LinkEmulator()
    relay_to_1 = await emulator.add_route(0, 1, nodes[1].info.address)
    relay_to_0 = await emulator.add_route(1, 0, nodes[0].info.address)
    peers = [n.info for n in nodes]
    await nodes[0].start(peers, attrs.evolve(FAST, dial_overrides={nodes[1].info.address: relay_to_1}))
    await nodes[1].start(peers, attrs.evolve(FAST, dial_overrides={nodes[0].info.address: relay_to_0}))
    try:
        net = ReliableNetwork(nodes[0].manager)
        assert isinstance(await asyncio.wait_for(await net.send(nodes[1].key, messages.Cleanup(1)), 10),
                          messages.Ack)
        assert emulator.counters()["0->1"]["bytes_delivered"] > 0
        emulator.partition([0], [1])
        handle = await net.send(nodes[1].key, messages.Cleanup(2))
        await asyncio.sleep(1.0)
        assert received == [1]
        emulator.heal()
        assert isinstance(await asyncio.wait_for(handle, 15), messages.Ack)
        assert received == [1, 2]
    finally:
        await stop_all(nodes)
        await emulator.close()


def test_emulator_thread_relays_for_a_synchronous_caller():
    """bench/local.py's use: the emulator on its own thread, driven from plain code."""
    import socket

    from narwhal.testing.links import EmulatorThread

    server = socket.create_server(("127.0.0.1", 0))
    with EmulatorThread() as links:
        relay = links.run(lambda e: e.add_route(0, 1, server.getsockname()[:2]))

        async def slow(emulator):
            emulator.shape(latency=0.1)
        links.run(slow)
        client = socket.create_connection(relay)
        peer, _ = server.accept()
        started = time.monotonic()
        client.sendall(b"hello")
        peer.settimeout(5)
        assert peer.recv(5) == b"hello"
        assert time.monotonic() - started >= 0.09
        client.close()
        peer.close()
    server.close()


async def test_a_relay_never_takes_a_port_it_is_told_to_avoid():
    """Regression: a relay bound on a free port the committee had assigned to a node not yet
    started, which then failed with 'port already in use' (a chaos run in CI)."""
    emulator = LinkEmulator()
    probe = await emulator.add_route(0, 1, ("127.0.0.1", 1))
    # the kernel hands out ephemeral ports in sequence: the next ones are the likely picks
    avoid = frozenset(range(probe[1] - 50, probe[1] + 200))
    ports = [(await emulator.add_route(0, 1, ("127.0.0.1", 1), avoid=avoid))[1] for _ in range(20)]
    assert not avoid & set(ports)
    await emulator.close()
