"""A connection that never completes its handshake is freed when it closes.

Under a flood of silent or garbage connections (thousands a second) every one of them is
accepted, admitted, and closed again. If a closed connection is part of a reference cycle,
CPython frees it only in a garbage collection, and the flood's garbage then sits in the
oldest generation until a *full* collection walks the whole heap: on a validator under the
``silent`` attack that took ~15% of the event loop (gen-2 collections of ~180 ms each,
``bench/attacks.py --only silent``) and cost the honest nodes a third of their commit rate.

The cycles found (each is a regression case here): the handshake's message-1 hook belongs
to the admission ticket whose owner is the connection; a failed handshake's error kept its
traceback, whose frames hold the connection; and asking for the worker's or a peer's RPC
error counts made an RPC channel (which points back at its connection) for every half-open
connection.

Each test disables the collector, runs the case, and checks that a collection finds
nothing unreachable: with :data:`gc.DEBUG_SAVEALL` every object a collection would free is
kept in :data:`gc.garbage` instead, so an empty list means reference counting already
freed everything.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
from collections.abc import Iterator

import attrs
import pytest

from narwhal import messages
from narwhal.errors import ErrorCode, RemoteError, RequestRejected
from narwhal.net.clients import ClientServer, connect_client
from narwhal.net.rpc import Router, channel_of, rpc_errors_of
from narwhal.wire.noise import HandshakePayload, Pattern
from tests.net.cluster import FAST, NETWORK_ID, keypair, make_nodes, start_all, stop_all
from tests.net.floods import SilentFlood, garbage_message1, recorded_message1
from tests.net.test_admission import client_server

#: A short handshake timeout, so the timed-out case takes a fraction of a second.
QUICK = attrs.evolve(FAST.connection, handshake_timeout=0.2)


@contextlib.contextmanager
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def unreachable() -> collections.Counter[str]:
    """What a collection now would free, by type (and then frees it)."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        found = collections.Counter(type(o).__qualname__ for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.collect()
    return found


async def settle(seconds: float = 0.3) -> None:
    await asyncio.sleep(seconds)


@pytest.fixture
async def client_port():
    server, public = client_server(QUICK)
    port = await server.start()
    try:
        yield server, port, public
    finally:
        await server.stop()


async def test_silent_connections_evicted_or_timed_out_leave_no_cycles(client_port):
    server, port, _ = client_port
    with collector_off():
        flood = SilentFlood(port, hold=300, total=300).start()  # one source: most are evicted
        await flood.done.wait()
        await settle()  # the rest time out
        await flood.stop()
        await settle()
        stats = server.admission.stats
        assert stats.evicted_per_source > 0 and stats.timed_out + stats.abandoned > 0, stats
        assert server.admission.half_open == 0
        assert unreachable() == {}


async def test_a_failed_handshake_leaves_no_cycles(client_port):
    server, port, _ = client_port
    with collector_off():
        for _ in range(5):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"\x00" * 200)  # not a handshake: the responder fails it
            await writer.drain()
            await settle(0.05)
            writer.close()
            await writer.wait_closed()
            del writer
        await settle()
        stats = server.admission.stats
        assert (stats.abandoned, stats.timed_out, stats.completed) == (5, 0, 0), stats
        assert unreachable() == {}


async def test_reading_rpc_errors_makes_no_channel_for_half_open_connections(client_port):
    server, port, _ = client_port
    with collector_off():
        flood = SilentFlood(port, hold=20, total=20).start()
        await flood.done.wait()
        await settle(0.05)
        half_open = list(server.connections)
        assert half_open
        assert all(rpc_errors_of(conn) == {} for conn in half_open)
        assert all(conn.existing_sink is None for conn in half_open)
        del half_open
        await flood.stop()
        await settle()
        assert unreachable() == {}


async def test_a_validator_ports_flood_leaves_no_cycles():
    nodes = make_nodes(2)
    await start_all(nodes, attrs.evolve(FAST, connection=QUICK))
    try:
        await settle(0.5)  # the two peers' own connection is up before the collector stops
        with collector_off():
            flood = SilentFlood(nodes[0].info.address[1], hold=300, total=300).start()
            await flood.done.wait()
            await settle()
            await flood.stop()
            await settle()
            assert unreachable() == {}
    finally:
        await stop_all(nodes)


async def test_a_garbage_message1_failing_in_the_noise_library_leaves_no_cycles(client_port):
    """A message 1 with a valid preamble and random bytes fails inside noiseprotocol: the
    handshake error's cause (``InvalidTag``) kept a traceback through our frames."""
    server, port, public = client_port
    template = recorded_message1(Pattern.NK, public, NETWORK_ID)
    with collector_off():
        for _ in range(5):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(garbage_message1(template)())
            await writer.drain()
            await settle(0.05)
            writer.close()
            await writer.wait_closed()
            del writer
        await settle()
        assert server.admission.stats.handshakes == 5, server.admission.stats  # the DH ran
        assert unreachable() == {}


async def test_a_refused_request_leaves_no_cycles():
    """A request answered ERROR raises :class:`RemoteError` out of the response future; the
    error's traceback holds the requester's frame, which held the future (a cycle keeping
    the error, the frames and the request's body until a full collection: a worker whose
    batches its peers refused OVERLOADED grew by 200 MiB in 10 s, ``bench/attacks.py --only
    client_10x``)."""
    async def refuse(peer, message):
        raise RequestRejected(ErrorCode.OVERLOADED, "quota exceeded, retry later")

    router = Router()
    router.route(messages.SubmitTransactions, refuse)
    private, public = keypair()
    server = ClientServer(local_static=private, network_id=NETWORK_ID, router=router,
                          local_payload=HandshakePayload("worker", authority=b"\x01" * 32, worker_id=0),
                          config=QUICK)
    port = await server.start()
    conn = await connect_client("127.0.0.1", port, server_static=public, network_id=NETWORK_ID)
    try:
        with collector_off():
            for _ in range(5):
                with pytest.raises(RemoteError):
                    await channel_of(conn).request(messages.SubmitTransactions([b"x" * 1000]))
            assert unreachable() == {}
    finally:
        await conn.aclose()
        await server.stop()
