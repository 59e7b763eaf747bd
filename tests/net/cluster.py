"""Test harness: N peer managers with real keys on real 127.0.0.1 sockets.

Listening sockets are bound (port 0) *before* the directory is built, so every address
is known up front and no test depends on a fixed port.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import attrs
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from narwhal.net.connection import Connection, ConnectionConfig
from narwhal.net.network import NetworkConfig, PeerInfo, PeerManager
from narwhal.net.retry import RetryConfig
from narwhal.net.rpc import Router
from narwhal.wire.noise import HandshakePayload

NETWORK_ID = bytes(range(32))

#: Fast retries so tests exercise backoff without waiting seconds.
FAST_RETRY = RetryConfig(
    initial_interval=0.02, max_interval=0.2, multiplier=1.5, randomization_factor=0.3
)
FAST = NetworkConfig(
    connection=ConnectionConfig(
        handshake_timeout=2.0, keepalive_interval=0.2, idle_timeout=5.0, close_grace=0.5
    ),
    retry=FAST_RETRY,
    dial_retry=FAST_RETRY,
    connect_timeout=0.5,
    request_timeout=2.0,
)


def keypair() -> tuple[bytes, bytes]:
    key = X25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return private, public


def bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@attrs.define
class Node:
    """One member of a test cluster: keys, directory entry, listening socket, manager."""

    index: int
    private: bytes
    info: PeerInfo
    sock: socket.socket
    router: Router
    manager: PeerManager | None = None

    @property
    def key(self) -> bytes:
        return self.info.static_key

    async def start(self, peers: list[PeerInfo], config: NetworkConfig = FAST) -> PeerManager:
        payload = HandshakePayload("primary", authority=self.info.authority)
        self.manager = PeerManager(
            local_static=self.private,
            local_public=self.key,
            local_payload=payload,
            network_id=NETWORK_ID,
            peers=[p for p in peers if p.static_key != self.key],
            router=self.router,
            config=config,
            name=self.info.name,
        )
        if self.sock.fileno() == -1:  # restarted: rebind the same port
            port = self.info.address[1] if self.info.address else 0
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind(("127.0.0.1", port))
        await self.manager.start(sock=self.sock)
        return self.manager

    async def stop(self) -> None:
        if self.manager is not None:
            await self.manager.stop()
            self.manager = None
        self.sock.close()


def make_nodes(n: int, make_router: Callable[[int], Router] | None = None) -> list[Node]:
    nodes = []
    for i in range(n):
        private, public = keypair()
        sock = bound_socket()
        info = PeerInfo(
            name=f"n{i}",
            static_key=public,
            role="primary",
            authority=bytes([i]) * 32,
            address=sock.getsockname()[:2],
        )
        nodes.append(Node(i, private, info, sock, make_router(i) if make_router else Router()))
    return nodes


async def start_all(nodes: list[Node], config: NetworkConfig = FAST) -> None:
    peers = [n.info for n in nodes]
    for node in nodes:
        await node.start(peers, config)


async def stop_all(nodes: list[Node]) -> None:
    for node in nodes:
        await node.stop()


async def eventually(
    predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01
) -> None:
    """Wait until ``predicate()`` is truthy; fail the test after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not reached within {timeout}s")
        await asyncio.sleep(interval)


async def settled_link(a: Node, b: Node, timeout: float = 5.0) -> Connection:
    """``a``'s connection to ``b`` once the duplicate-dial tie-break can no longer close it.

    Both nodes dial each other; when both dials succeed, each side keeps the connection
    dialed by the smaller key and closes the other. A test that grabs the first connection
    it sees may hold the one about to be dropped. Settled: both sides hold the two ends of
    one connection, and it is either the preferred one (the tie-break keeps it) or no other
    handshake is in flight on either side (nothing left to tie-break against).
    """
    a_dials = a.key < b.key

    def settled() -> bool:
        ours = a.manager.connection_nowait(b.key)
        theirs = b.manager.connection_nowait(a.key)
        if ours is None or theirs is None or ours.initiator == theirs.initiator:
            return False
        return ours.initiator == a_dials or not (
            a.manager.handshakes_in_flight or b.manager.handshakes_in_flight)

    await eventually(settled, timeout)
    conn = a.manager.connection_nowait(b.key)
    assert conn is not None
    return conn
