"""Outbound byte budget (issue 12, item 1): a peer that asks for answers and never reads
them costs at most its budget (+ one frame), is throttled (its requests held, then the
socket no longer read), disconnected after the budget timeout and counted; meanwhile the
victim keeps serving honest peers. Over real 127.0.0.1 sockets."""

from __future__ import annotations

import asyncio
import socket

import attrs

from narwhal import messages
from narwhal.errors import MessageError, NarwhalError
from narwhal.net.clients import ClientServer, connect_client
from narwhal.net.connection import BudgetExceeded, Connection, ConnectionConfig
from narwhal.net.rpc import Router
from narwhal.wire.frames import FrameKind
from narwhal.wire.noise import HandshakePayload

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

CLEANUP = messages.tag_of(messages.Cleanup)
ACK = messages.tag_of(messages.Ack)
#: A large answer (what RequestBatches may return), shared: the test measures queues.
BIG = messages.Encoded(ACK, bytes(1_000_000))
BUDGET = 2 * 1024 * 1024
#: A frame plus Noise overhead (16-byte tag and 2-byte length per 64 KiB message).
ONE_FRAME = len(BIG.body) + 11 + 18 * (len(BIG.body) // 65_000 + 2)

BUDGETED = ConnectionConfig(handshake_timeout=2.0, keepalive_interval=0.1, idle_timeout=5.0,
                            close_grace=0.5, outbound_budget=BUDGET, budget_timeout=1.0)


def router() -> Router:
    r = Router()

    async def handler(peer, message):
        return BIG if message.round else None  # round 0: a small Ack for honest peers

    r.route(messages.Cleanup, handler)
    return r


def shrink_buffers(conn: Connection, send: bool = False, receive: bool = False) -> None:
    """Small kernel buffers, so the test reaches the budget with little traffic."""
    sock = conn._transport.get_extra_info("socket")
    if send:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    if receive:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)


async def flood(conn: Connection, tag: int, body: bytes, count: int) -> int:
    """Send ``count`` requests without ever reading an answer; the number sent."""
    conn._transport.pause_reading()  # the attacker never reads its socket
    sent = 0
    try:
        for request_id in range(1, count + 1):
            await conn.wait_writable()
            conn.send_frame(FrameKind.REQUEST, request_id, tag, body)
            sent += 1
    except (NarwhalError, OSError):  # the victim hung up on us: that is the point
        return sent
    return sent


async def sample_peak(conn: Connection, stop: asyncio.Event) -> int:
    peak = 0
    while not stop.is_set() and conn._transport is not None:
        peak = max(peak, conn.queued_outbound)
        await asyncio.sleep(0.002)
    return peak


async def test_a_peer_that_never_reads_its_answers_costs_at_most_its_budget():
    nodes = make_nodes(3, lambda i: router())
    await start_all(nodes, attrs.evolve(FAST, connection=BUDGETED, request_timeout=5.0))
    attacker, victim, honest = nodes
    try:
        attack = await settled_link(attacker, victim)
        honest_conn = await settled_link(honest, victim)
        target = victim.manager.connection_nowait(attacker.key)
        assert target is not None and target.outbound_budget == BUDGET
        shrink_buffers(target, send=True, receive=True)
        shrink_buffers(attack, send=True, receive=True)
        stop = asyncio.Event()
        sampler = asyncio.ensure_future(sample_peak(target, stop))
        flooder = asyncio.ensure_future(flood(attack, CLEANUP, messages.encode(messages.Cleanup(1)), 300_000))

        # the victim keeps serving an honest peer during the attack
        served = 0
        while not target.closed.done():
            answer = await asyncio.wait_for(honest_conn.sink.request(messages.Cleanup(0)), 2.0)
            assert answer == messages.Ack()
            served += 1
            await asyncio.sleep(0.02)
        await asyncio.wait_for(asyncio.shield(target.closed), 5.0)
        stop.set()
        peak = await sampler
        sent = await asyncio.wait_for(flooder, 5.0)

        assert isinstance(target.close_reason, BudgetExceeded), target.close_reason
        assert target.stats.read_pauses >= 1 and target.stats.budget_throttles >= 1
        assert max(peak, target.stats.peak_queued_outbound) <= BUDGET + ONE_FRAME, (peak, sent)
        # TCP backpressure reached the attacker: the victim stopped reading what it sent
        assert target.stats.frames_in < sent < 300_000, (target.stats.frames_in, sent)
        assert served >= 5
        metrics = victim.manager.metrics(attacker.key)
        await eventually(lambda: metrics.budget_disconnects == 1)
        assert metrics.errors["outbound_budget"] == 1
        row = next(r for r in victim.manager.snapshot() if r["name"] == attacker.info.name)
        assert row["budget_disconnects"] == 1 and row["read_pauses"] >= 1
        assert honest_conn.is_open
        assert await honest_conn.sink.request(messages.Cleanup(0)) == messages.Ack()
    finally:
        await stop_all(nodes)


async def test_a_honest_peer_that_reads_slowly_is_throttled_not_dropped():
    """Over budget only briefly: the held requests are served once the peer reads."""
    nodes = make_nodes(2, lambda i: router())
    await start_all(nodes, attrs.evolve(FAST, connection=BUDGETED, request_timeout=5.0))
    client, server = nodes
    try:
        conn = await settled_link(client, server)
        target = server.manager.connection_nowait(client.key)
        conn._transport.pause_reading()
        tasks = [asyncio.ensure_future(conn.sink.request(messages.Cleanup(1))) for _ in range(40)]
        await eventually(lambda: target.throttled, timeout=3.0)
        conn._transport.resume_reading()
        answers = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5.0)
        # every request was answered (BIG is not a valid Ack body: MessageError at the
        # requester proves its answer arrived; a held request never served would time out)
        assert all(isinstance(a, MessageError) for a in answers), answers
        assert target.stats.budget_throttles >= 1 and target.stats.budget_disconnects == 0
        assert target.is_open and not target.throttled
    finally:
        await stop_all(nodes)


async def test_an_anonymous_client_flooding_unknown_types_is_bounded_and_dropped():
    private, public = keypair()
    seen = []
    client_router = Router()

    async def submit(peer, message):
        seen.append(len(message.transactions))
        return messages.TransactionsAccepted(len(message.transactions))

    client_router.route(messages.SubmitTransactions, submit)
    budget = 64 * 1024
    config = attrs.evolve(BUDGETED, outbound_budget=budget)
    server = ClientServer(local_static=private, network_id=NETWORK_ID, router=client_router,
                          local_payload=HandshakePayload("worker", authority=b"\x01" * 32, worker_id=0),
                          config=config, max_clients=4)
    port = await server.start()
    try:
        # the attacker's own side must not time out first (its queued requests)
        attacker = await connect_client("127.0.0.1", port, server_static=public, network_id=NETWORK_ID,
                                        config=attrs.evolve(config, outbound_budget=None, budget_timeout=30.0),
                                        name="attacker")
        honest = await connect_client("127.0.0.1", port, server_static=public, network_id=NETWORK_ID,
                                      config=config, name="honest")
        await eventually(lambda: len(server.connections) == 2 and all(c.is_open for c in server.connections))
        # which server-side connection is the attacker's: the one its flood arrives on
        shrink_buffers(attacker, send=True, receive=True)
        flooder = asyncio.ensure_future(flood(attacker, 0x7FFF, b"", 200_000))
        await eventually(lambda: any(c.stats.frames_in > 1000 for c in server.connections), timeout=3.0)
        target = max(server.connections, key=lambda c: c.stats.frames_in)
        shrink_buffers(target, send=True, receive=True)
        stop = asyncio.Event()
        sampler = asyncio.ensure_future(sample_peak(target, stop))
        accepted = 0
        while not target.closed.done():
            answer = await asyncio.wait_for(honest.sink.request(messages.SubmitTransactions((b"tx",))), 2.0)
            accepted += answer.count
            await asyncio.sleep(0.02)
        stop.set()
        peak = await sampler
        sent = await asyncio.wait_for(flooder, 5.0)
        assert isinstance(target.close_reason, BudgetExceeded), target.close_reason
        # one ERROR frame of overshoot at most
        assert max(peak, target.stats.peak_queued_outbound) <= budget + 2048, (peak, sent)
        assert target.stats.read_pauses >= 1
        await eventually(lambda: server.budget_disconnects == 1)
        assert server.budget_stats()["budget_disconnects"] == 1
        assert target.stats.frames_in < sent, (target.stats.frames_in, sent)  # it stopped reading
        assert accepted >= 5 and honest.is_open
        await honest.aclose()
    finally:
        await server.stop()
