"""RpcChannel: dispatch rules without a socket, then deadlines, concurrency, GOAWAY,
backpressure and idle timeout over real 127.0.0.1 connections."""

from __future__ import annotations

import asyncio
import random

import attrs
import pytest

from narwhal import messages
from narwhal.errors import (
    ConnectionClosed,
    ErrorCode,
    MessageError,
    RequestRejected,
    RequestTimeout,
)
from narwhal.net.connection import ConnectionConfig
from narwhal.net.network import NetworkConfig
from narwhal.net.rpc import Router, RpcChannel
from narwhal.wire.frames import Frame, FrameKind, decode_error_body

from .cluster import FAST, eventually, make_nodes, settled_link, start_all, stop_all

CLEANUP = messages.tag_of(messages.Cleanup)


class FakeConnection:
    """Just enough of a Connection to drive an RpcChannel by hand."""

    name = "fake"
    is_open = True
    can_send = True
    peer = "the-peer"

    def __init__(self) -> None:
        self.sent: list[Frame] = []

    throttled = False

    async def wait_writable(self) -> None:
        return None

    async def wait_budget(self) -> None:
        return None

    def send_frame(self, kind, request_id, tag, body) -> None:
        self.sent.append(Frame(kind, request_id, tag, body))

    closed_with = None

    def close(self, code, reason="") -> None:
        self.closed_with = code


def channel_with(router: Router, **kwargs) -> tuple[RpcChannel, FakeConnection]:
    conn = FakeConnection()
    return RpcChannel(conn, router, **kwargs), conn


def request(request_id: int, message) -> Frame:
    return Frame(FrameKind.REQUEST, request_id, messages.tag_of(message), messages.encode(message))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def error_code(frame: Frame) -> int:
    assert frame.kind is FrameKind.ERROR
    return decode_error_body(frame.body)[0]


async def test_overloaded_requests_are_refused_and_oneways_dropped():
    release = asyncio.Event()
    router = Router()

    async def stuck(peer, message):
        await release.wait()

    router.route(messages.Cleanup, stuck)
    channel, conn = channel_with(router, max_concurrent_handlers=2)
    for i in (1, 2, 3):
        channel.frame_received(request(i, messages.Cleanup(i)))
    channel.frame_received(Frame(FrameKind.ONEWAY, 0, CLEANUP, messages.encode(messages.Cleanup(9))))
    await settle()
    assert [(f.request_id, error_code(f)) for f in conn.sent] == [(3, ErrorCode.OVERLOADED)]
    assert channel.errors["overloaded"] == 2
    release.set()
    await settle()
    assert sorted(f.request_id for f in conn.sent if f.kind is FrameKind.RESPONSE) == [1, 2]


async def test_link_policy_refuses_messages_that_do_not_belong():
    router = Router(allow=lambda peer, cls: cls is not messages.Cleanup)
    router.route(messages.Cleanup, lambda peer, m: asyncio.sleep(0))
    channel, conn = channel_with(router)
    channel.frame_received(request(1, messages.Cleanup(1)))
    await settle()
    assert error_code(conn.sent[0]) == ErrorCode.UNAUTHORIZED


async def test_handler_errors_become_typed_error_frames():
    router = Router()

    async def handler(peer, message):
        if message.round == 1:
            raise RequestRejected(ErrorCode.INVALID, "bad round")
        if message.round == 2:
            raise RuntimeError("bug")
        if message.round == 3:
            return messages.Cleanup(round=-1)  # an invalid response: our bug
        return messages.Ack()

    router.route(messages.Cleanup, handler)
    channel, conn = channel_with(router)
    for i in (1, 2, 3, 4):
        channel.frame_received(request(i, messages.Cleanup(i)))
    await settle()
    by_id = {f.request_id: f for f in conn.sent}
    assert error_code(by_id[1]) == ErrorCode.INVALID
    assert error_code(by_id[2]) == ErrorCode.INTERNAL
    assert error_code(by_id[3]) == ErrorCode.INTERNAL
    assert by_id[4].kind is FrameKind.RESPONSE


async def test_request_id_zero_is_not_served_and_closes_the_link_with_protocol_error():
    served = []
    router = Router()
    router.route(messages.Cleanup, lambda peer, m: asyncio.sleep(0, served.append(m)))
    channel, conn = channel_with(router)
    channel.frame_received(request(0, messages.Cleanup(1)))
    await settle()
    assert conn.sent == [] and served == [] and channel.errors["bad_request_id"] == 1
    assert conn.closed_with is ErrorCode.PROTOCOL_ERROR


async def test_a_registered_type_without_a_handler_here_is_unauthorized_not_unknown():
    router = Router()  # routes nothing: every registered type is "not on this link"
    channel, conn = channel_with(router)
    channel.frame_received(request(1, messages.Cleanup(1)))
    channel.frame_received(Frame(FrameKind.REQUEST, 2, 0x7777, b"\x80"))
    # the link check comes before decoding: a bad body of a refused type is UNAUTHORIZED
    channel.frame_received(Frame(FrameKind.REQUEST, 3, CLEANUP, b"\xff"))
    await settle()
    assert [(f.request_id, error_code(f)) for f in conn.sent] == [
        (1, ErrorCode.UNAUTHORIZED), (2, ErrorCode.UNKNOWN_TYPE), (3, ErrorCode.UNAUTHORIZED)]


async def test_wrong_response_type_fails_the_request():
    channel, conn = channel_with(Router())
    task = asyncio.ensure_future(channel.request(messages.CertificatesRequest(())))
    await settle()
    sent = conn.sent[0]
    channel.frame_received(Frame(FrameKind.RESPONSE, sent.request_id, messages.tag_of(messages.Ack),
                                 messages.encode(messages.Ack())))
    with pytest.raises(MessageError):
        await task


async def test_connection_loss_fails_outstanding_requests():
    channel, _conn = channel_with(Router())
    task = asyncio.ensure_future(channel.request(messages.Cleanup(1)))
    await settle()
    channel.connection_lost(None)
    with pytest.raises(ConnectionClosed):
        await task
    with pytest.raises(ConnectionClosed):
        await channel.request(messages.Cleanup(2))


# --- over real sockets -------------------------------------------------------------------


def router_with(handler) -> Router:
    router = Router()
    router.route(messages.Cleanup, handler)
    return router


async def connected_pair(handler, config: NetworkConfig = FAST):
    nodes = make_nodes(2, lambda i: router_with(handler))
    await start_all(nodes, config)
    return nodes, await settled_link(nodes[0], nodes[1])


async def test_deadline_and_late_answer():
    async def slow(peer, message):
        await asyncio.sleep(0.5)

    nodes, conn = await connected_pair(slow)
    try:
        with pytest.raises(RequestTimeout):
            await conn.sink.request(messages.Cleanup(1), timeout=0.1)
        await eventually(lambda: conn.sink.errors["late_answer"] == 1)
        assert conn.is_open  # a late answer is harmless
    finally:
        await stop_all(nodes)


async def test_a_handler_may_answer_with_wire_bytes_it_holds():
    async def stored(peer, message):
        return messages.Encoded(messages.tag_of(messages.Ack), b"\x80")  # Ack's body: []

    nodes, conn = await connected_pair(stored)
    try:
        assert await conn.sink.request(messages.Cleanup(1)) == messages.Ack()
    finally:
        await stop_all(nodes)


async def test_concurrent_requests_each_get_their_own_answer():
    seen: list[int] = []

    async def jittery(peer, message):
        await asyncio.sleep(random.random() * 0.05)
        seen.append(message.round)

    nodes, conn = await connected_pair(jittery)
    try:
        results = await asyncio.gather(*(conn.sink.request(messages.Cleanup(i)) for i in range(500)))
        assert all(isinstance(r, messages.Ack) for r in results)
        assert sorted(seen) == list(range(500)) and seen != list(range(500))
    finally:
        await stop_all(nodes)


async def test_goaway_lets_outstanding_requests_finish_and_refuses_new_ones():
    started = asyncio.Event()

    async def slow(peer, message):
        started.set()
        await asyncio.sleep(0.3)

    nodes, conn = await connected_pair(slow)
    try:
        outstanding = asyncio.ensure_future(conn.sink.request(messages.Cleanup(1)))
        await started.wait()
        remote = nodes[1].manager.connection_nowait(nodes[0].key)
        remote.close(ErrorCode.SHUTTING_DOWN, "test")
        await eventually(lambda: not conn.sink.accepting_requests)
        with pytest.raises(ConnectionClosed):
            await conn.sink.request(messages.Cleanup(2))
        assert isinstance(await outstanding, messages.Ack)
    finally:
        await stop_all(nodes)


async def test_backpressure_bounds_what_a_non_reading_peer_costs():
    nodes, conn = await connected_pair(lambda peer, m: asyncio.sleep(0))
    try:
        remote = nodes[1].manager.connection_nowait(nodes[0].key)
        remote._transport.pause_reading()  # the peer stops reading its socket
        body = bytes(1_000_000)
        sent = 0

        async def writer():
            nonlocal sent
            while True:
                await conn.wait_writable()
                conn.send_frame(FrameKind.ONEWAY, 0, CLEANUP, body)
                sent += 1

        task = asyncio.ensure_future(writer())
        await asyncio.sleep(1.0)
        buffered = conn._transport.get_write_buffer_size()
        task.cancel()
        # the writer was paused: at most the high-water mark (+ one frame) is buffered here;
        # the kernel's socket buffers hold a few MB more
        assert buffered <= conn.config.write_high_water + 2 * len(body), (buffered, sent)
        assert sent < 100, (buffered, sent)
    finally:
        remote._transport.resume_reading()
        await stop_all(nodes)


async def test_idle_connection_is_closed():
    quiet = ConnectionConfig(handshake_timeout=2.0, keepalive_interval=0.1, idle_timeout=0.5,
                             close_grace=0.2)
    config = attrs.evolve(FAST, connection=quiet)
    nodes, conn = await connected_pair(lambda peer, m: asyncio.sleep(0), config)
    try:
        remote = nodes[1].manager.connection_nowait(nodes[0].key)
        remote._transport.pause_reading()  # the remote hears nothing from us from now on
        await asyncio.wait_for(asyncio.shield(remote.closed), 5)
        assert "IDLE_TIMEOUT" in str(remote.close_reason)
        await asyncio.wait_for(asyncio.shield(conn.closed), 5)
    finally:
        await stop_all(nodes)


async def test_route_stats_count_requests_errors_and_latency():
    from narwhal.net.rpc import RouteStats

    routes = RouteStats()
    router = Router()

    async def handler(peer, message):
        if message.round == 2:
            raise RequestRejected(ErrorCode.INVALID, "no")

    router.route(messages.Cleanup, handler)
    channel, _conn = channel_with(router, routes=routes)
    for i in (1, 2, 3):
        channel.frame_received(request(i, messages.Cleanup(i)))
    await settle()
    stats = routes.snapshot()["Cleanup"]
    assert stats["requests"] == 2 and stats["errors"] == 1
    assert stats["latency_buckets"][-1] == ["+Inf", 3]
