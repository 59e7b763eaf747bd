"""A real node (PeerManager over 127.0.0.1) against the independent from-spec peer.

``tests/wire_compat/spec_peer.py`` was written from ``wire_spec.md`` alone (its own Noise,
no noiseprotocol, nothing from ``narwhal``). Here it first proves interoperability with a
real listening node, then plays a hostile peer holding a valid committee key: malformed
CBOR, unknown types, oversize frames, bad ciphertext, unknown frame kinds, a handshake it
never confirms. Each time the node must answer or close as the spec says, count it, and
keep serving its other peers.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from narwhal import messages
from narwhal.errors import ErrorCode
from narwhal.net.sending import ReliableNetwork
from narwhal.wire.frames import decode_error_body
from tests.wire_compat import spec_peer

from .cluster import NETWORK_ID, eventually, make_nodes, stop_all
from .test_network import recording_router

CLEANUP = messages.tag_of(messages.Cleanup)


@pytest.fixture
async def cluster():
    """Nodes n0 and n2 run for real; n1's committee key is held by the spec peer."""
    received: list = []
    nodes = make_nodes(3, lambda i: recording_router(received))
    peers = [n.info for n in nodes]
    await nodes[0].start(peers)
    await nodes[2].start(peers)
    await eventually(lambda: nodes[0].manager.is_connected(nodes[2].key))
    try:
        yield nodes, received
    finally:
        await stop_all([nodes[0], nodes[2]])
        nodes[1].sock.close()


async def spec_dial(nodes) -> spec_peer.SpecConnection:
    """The spec peer dials n0 as n1 (a committee member)."""
    return await spec_peer.open_ik(
        *nodes[0].info.address, network_id=NETWORK_ID, local_static=nodes[1].private,
        remote_static=nodes[0].key,
        payload={"role": "primary", "authority": nodes[1].info.authority,
                 "max_frame_size": 8 * 1024 * 1024, "features": []})


async def others_still_served(nodes, received, round_: int) -> None:
    handle = await ReliableNetwork(nodes[2].manager).send(nodes[0].key, messages.Cleanup(round_))
    await asyncio.wait_for(handle.wait(), 5)
    assert ("n2", round_) in received


async def read_until_closed(conn: spec_peer.SpecConnection) -> list[spec_peer.Frame]:
    frames = []
    try:
        while True:
            frames.append(await asyncio.wait_for(conn.read_frame(), 5))
    except (EOFError, ConnectionError):
        return frames


async def test_spec_peer_exchanges_requests_with_a_real_node(cluster):
    nodes, received = cluster
    conn = await spec_dial(nodes)
    assert conn.remote_payload["role"] == "primary"
    assert conn.remote_payload["authority"] == nodes[0].info.authority
    await conn.send_frame(spec_peer.PING, 77, 0)
    for request_id in (1, 2, 3):
        await conn.send_frame(spec_peer.REQUEST, request_id, CLEANUP,
                              messages.encode(messages.Cleanup(10 + request_id)))
    answers = {}
    while len(answers) < 4:
        frame = await asyncio.wait_for(conn.read_frame(), 5)
        if frame.kind != spec_peer.PING:  # the node's own keepalive
            answers[frame.request_id] = frame
    assert answers[77].kind == spec_peer.PONG
    for request_id in (1, 2, 3):
        assert answers[request_id].kind == spec_peer.RESPONSE
        assert answers[request_id].tag == messages.tag_of(messages.Ack)
        assert messages.decode(answers[request_id].tag, answers[request_id].body) == messages.Ack()
    assert sorted(r for name, r in received if name == "n1") == [11, 12, 13]
    await eventually(lambda: nodes[0].manager.is_connected(nodes[1].key))
    await conn.close()


async def test_malformed_and_unknown_requests_get_typed_errors_and_the_link_survives(cluster):
    nodes, received = cluster
    conn = await spec_dial(nodes)
    await conn.send_frame(spec_peer.REQUEST, 1, CLEANUP, b"\xff\xff")          # not CBOR
    await conn.send_frame(spec_peer.REQUEST, 2, CLEANUP, b"\x82\x01\x02")      # wrong arity
    await conn.send_frame(spec_peer.REQUEST, 3, 0x7777, b"\x80")               # unknown tag
    await conn.send_frame(spec_peer.REQUEST, 4, CLEANUP, b"\x81\x1b" + b"\xff" * 7)  # truncated
    await conn.send_frame(spec_peer.REQUEST, 5, CLEANUP, messages.encode(messages.Cleanup(5)))
    answers = {}
    while len(answers) < 5:
        frame = await asyncio.wait_for(conn.read_frame(), 5)
        if frame.kind in (spec_peer.ERROR, spec_peer.RESPONSE):
            answers[frame.request_id] = frame
    codes = {i: decode_error_body(answers[i].body)[0] for i in (1, 2, 3, 4)}
    assert all(answers[i].kind == spec_peer.ERROR for i in (1, 2, 3, 4))
    assert codes == {1: ErrorCode.MALFORMED, 2: ErrorCode.MALFORMED, 3: ErrorCode.UNKNOWN_TYPE,
                     4: ErrorCode.MALFORMED}
    assert answers[5].kind == spec_peer.RESPONSE  # the connection is still fine
    await others_still_served(nodes, received, 100)
    await conn.close()


async def test_oversize_frame_closes_only_that_connection(cluster):
    nodes, received = cluster
    conn = await spec_dial(nodes)
    too_big = 8 * 1024 * 1024 + 1
    # only the frame header: the node must refuse on the declared length, not wait for 8 MiB
    conn.writer.write(conn.transport.seal(too_big.to_bytes(4, "big") + b"\x00" + bytes(6)))
    frames = await read_until_closed(conn)
    errors = [decode_error_body(f.body)[0] for f in frames if f.kind == spec_peer.ERROR]
    assert errors == [ErrorCode.TOO_LARGE]
    await others_still_served(nodes, received, 101)


async def test_bad_ciphertext_closes_only_that_connection(cluster):
    nodes, received = cluster
    conn = await spec_dial(nodes)
    await conn.send_frame(spec_peer.PING, 1, 0)
    conn.writer.write(b"\x00\x40" + os.urandom(64))  # a well-framed Noise message, wrong key
    await read_until_closed(conn)
    await others_still_served(nodes, received, 102)


async def test_replayed_ciphertext_closes_the_connection(cluster):
    nodes, received = cluster
    conn = await spec_dial(nodes)
    sealed = conn.transport.seal(spec_peer.encode_frame(spec_peer.PING, 1, 0))
    conn.writer.write(sealed + sealed)  # the same Noise message twice: the nonce is stale
    await read_until_closed(conn)
    await others_still_served(nodes, received, 103)


async def test_unknown_frame_kind_closes_the_connection(cluster):
    nodes, received = cluster
    conn = await spec_dial(nodes)
    await conn.send_frame(9, 0, 0, b"")
    frames = await read_until_closed(conn)
    assert [decode_error_body(f.body)[0] for f in frames if f.kind == spec_peer.ERROR] == [
        ErrorCode.PROTOCOL_ERROR]
    await others_still_served(nodes, received, 104)


async def test_unconfirmed_handshake_never_counts_as_a_connection(cluster):
    """A replayed IK message 1 completes the handshake but can never encrypt: the node must
    not announce such a connection (it could displace the real one) and must drop it."""
    nodes, received = cluster
    initiator = spec_peer.SpecInitiator(
        spec_peer.IK, network_id=NETWORK_ID, remote_static=nodes[0].key,
        local_static=nodes[1].private,
        payload={"role": "primary", "authority": nodes[1].info.authority,
                 "max_frame_size": 8 * 1024 * 1024, "features": []})
    reader, writer = await asyncio.open_connection(*nodes[0].info.address)
    writer.write(initiator.start())
    while initiator.receive_data(await reader.read(4096)) is None:
        pass
    # handshake complete on both sides; we send nothing encrypted
    await asyncio.sleep(0.3)
    assert not nodes[0].manager.is_connected(nodes[1].key)
    # the node closes it at the handshake timeout (2 s in these tests), having never
    # announced it; reader.read() returns everything sent until EOF
    await asyncio.wait_for(reader.read(), 5)
    assert reader.at_eof()
    assert not nodes[0].manager.is_connected(nodes[1].key)
    writer.close()
    await others_still_served(nodes, received, 105)
