"""Client links: Noise NK to a ClientServer over 127.0.0.1."""

from __future__ import annotations

import asyncio

import pytest

from narwhal import messages
from narwhal.errors import ErrorCode, HandshakeError, PeerRejected
from narwhal.net.clients import ClientPeer, ClientServer, connect_client
from narwhal.net.rpc import Router
from narwhal.wire.noise import HandshakePayload, NoiseHandshake, Pattern

from .cluster import FAST, NETWORK_ID, keypair


@pytest.fixture
async def server():
    seen: list = []
    router = Router()

    async def submit(peer, message):
        seen.append((peer, len(message.transactions)))
        return messages.TransactionsAccepted(len(message.transactions))

    router.route(messages.SubmitTransactions, submit)
    private, public = keypair()
    srv = ClientServer(local_static=private, network_id=NETWORK_ID, router=router,
                       local_payload=HandshakePayload("worker", authority=b"\x01" * 32, worker_id=0),
                       config=FAST.connection, max_clients=2)
    port = await srv.start()
    try:
        yield srv, port, public, seen
    finally:
        await srv.stop()


async def test_anonymous_client_submits_and_is_identified(server):
    _srv, port, public, seen = server
    conn = await connect_client("127.0.0.1", port, server_static=public, network_id=NETWORK_ID,
                                check_server=lambda p: p.role == "worker" and p.worker_id == 0)
    answer = await conn.sink.request(messages.SubmitTransactions((b"a", b"b", b"c")))
    assert answer == messages.TransactionsAccepted(3)
    peer, count = seen[0]
    assert isinstance(peer, ClientPeer) and peer.address.startswith("127.0.0.1:") and count == 3
    await conn.aclose()


async def test_client_checks_the_server_role(server):
    _srv, port, public, _seen = server
    with pytest.raises(HandshakeError):
        await connect_client("127.0.0.1", port, server_static=public, network_id=NETWORK_ID,
                             check_server=lambda p: p.role == "primary")


async def test_wrong_server_key_fails_the_handshake(server):
    _srv, port, _public, _seen = server
    _, other = keypair()
    with pytest.raises(HandshakeError):
        await connect_client("127.0.0.1", port, server_static=other, network_id=NETWORK_ID, timeout=3)


async def test_too_many_clients_are_refused_with_overloaded(server):
    srv, port, public, _seen = server
    conns = [await connect_client("127.0.0.1", port, server_static=public, network_id=NETWORK_ID)
             for _ in range(2)]
    with pytest.raises(PeerRejected) as info:
        await connect_client("127.0.0.1", port, server_static=public, network_id=NETWORK_ID)
    assert info.value.code is ErrorCode.OVERLOADED
    assert srv.refused == 1
    for conn in conns:
        await conn.aclose()


async def test_one_address_holds_at_most_max_clients_per_address(server):
    """A stranger cannot take every place of the port from one address (nor multiply its
    per-connection rate limits past the cap): its next connection is closed OVERLOADED
    (transient) and counted, while a client from another address is served."""
    srv, port, public, _seen = server
    srv.max_clients = 3
    srv.max_clients_per_address = 1
    first = await connect_client("127.0.0.1", port, server_static=public, network_id=NETWORK_ID)
    second = await connect_client("127.0.0.1", port, server_static=public, network_id=NETWORK_ID)
    await asyncio.wait_for(asyncio.shield(second.closed), 3)
    assert second.goaway is not None and second.goaway[0] == ErrorCode.OVERLOADED
    assert (srv.refused, srv.refused_per_address) == (1, 1)
    other = await connect_client("127.0.0.1", port, server_static=public, network_id=NETWORK_ID,
                                 local_address=("127.0.0.2", 0))
    answer = await other.sink.request(messages.SubmitTransactions((b"x",)), timeout=3)
    assert answer == messages.TransactionsAccepted(1)
    assert srv.status() == {"connected": 2, "half_open": 0, "accepted": 2, "refused": 1,
                            "refused_per_address": 1}
    # the address's place is free again once its client leaves
    await first.aclose()
    await asyncio.sleep(0.1)
    again = await connect_client("127.0.0.1", port, server_static=public, network_id=NETWORK_ID)
    answer = await again.sink.request(messages.SubmitTransactions((b"y",)), timeout=3)
    assert answer == messages.TransactionsAccepted(1)
    for conn in (other, again):
        await conn.aclose()


async def test_validator_pattern_is_refused_on_a_client_port(server):
    _srv, port, public, _seen = server
    private, _ = keypair()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    hs = NoiseHandshake.initiator(pattern=Pattern.IK, network_id=NETWORK_ID, remote_static=public,
                                  local_static=private)
    hs.initiate(HandshakePayload("primary", authority=b"\x02" * 32))
    writer.write(hs.data_to_send())
    with pytest.raises(PeerRejected):
        while data := await asyncio.wait_for(reader.read(4096), 5):
            hs.receive_data(data)
        raise AssertionError("closed without a refusal")
    writer.close()
