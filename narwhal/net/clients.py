"""Client links: Noise-NK listeners for anonymous clients, and the dialer clients use.

Validators talk to each other through :class:`~narwhal.net.network.PeerManager` (Noise IK,
committee keys only). Clients — load generators, wallets, output subscribers — hold no
committee key: they authenticate the *server* (its static key is in the committee) and
stay anonymous themselves (``Noise_NK``, ``wire_spec.md`` section 3.1). A
:class:`ClientServer` accepts them on a separate port, up to ``max_clients`` at once, and
routes their requests with an ordinary :class:`~narwhal.net.rpc.Router`; handlers receive
a :class:`ClientPeer` as the peer.

``max_clients`` counts *authenticated* clients only (handshake confirmed), and one source
address (an IPv6 /64, as admission counts sources) may hold at most
``max_clients_per_address`` of them: a stranger from one address cannot take every place,
nor multiply its per-connection rate limits beyond that many. Connections
still in their handshake are half-open and limited separately by the listener's
:class:`~narwhal.net.admission.ListenerAdmission` (``admission``), which evicts old
half-open connections rather than refusing new ones: idle connections cannot take the
places of real clients, which complete their handshake in a millisecond or two.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import socket
from collections.abc import Callable
from typing import Any

import attrs

from narwhal.config.network import (
    DEFAULT_MAX_CLIENTS_PER_ADDRESS,
    MAX_CONCURRENT_HANDLERS,
    ConnectionConfig,
)
from narwhal.errors import ErrorCode, HandshakeError, PeerRejected
from narwhal.net.admission import ListenerAdmission, source_of
from narwhal.net.connection import BudgetExceeded, Connection, close_connections
from narwhal.net.rpc import Router, RpcChannel
from narwhal.wire.noise import HandshakePayload, NoiseHandshake, Pattern

__all__ = ["ClientPeer", "ClientServer", "connect_client"]

log = logging.getLogger(__name__)

#: Authenticated clients connected at once; each costs buffers and handler slots, so more
#: are refused (OVERLOADED) instead of exhausting memory.
DEFAULT_MAX_CLIENTS = 256


@attrs.frozen
class ClientPeer:
    """The identity handlers see for a client: a connection number and its address."""

    id: int
    address: str


class ClientServer:
    """A Noise-NK listener for clients of one node role (a worker's transactions port, a
    primary's output port)."""

    def __init__(
        self,
        *,
        local_static: bytes,
        network_id: bytes,
        local_payload: HandshakePayload,
        router: Router,
        config: ConnectionConfig = ConnectionConfig(),  # noqa: B008 -- frozen attrs: immutable
        name: str = "clients",
        max_clients: int = DEFAULT_MAX_CLIENTS,
        max_clients_per_address: int = DEFAULT_MAX_CLIENTS_PER_ADDRESS,
        max_concurrent_handlers: int = MAX_CONCURRENT_HANDLERS,
    ) -> None:
        self._local_static = local_static
        self._network_id = network_id
        self._payload = local_payload
        self.router = router
        self.config = config
        self.name = name
        self.max_clients = max_clients
        self.max_clients_per_address = max_clients_per_address
        self._max_handlers = max_concurrent_handlers
        self._server: asyncio.Server | None = None
        self._ids = itertools.count(1)
        #: Every live connection (handshaking or open) ...
        self.connections: set[Connection] = set()
        #: ... of which those authenticated (handshake confirmed): what max_clients counts.
        self.authenticated: set[Connection] = set()
        #: The source of each authenticated connection, and how many each source holds.
        self._source: dict[Connection, str] = {}
        self._per_source: collections.Counter[str] = collections.Counter()
        #: Caps and handshake budget of the connections still in their handshake.
        self.admission = ListenerAdmission(config.admission)
        self.accepted = 0
        #: Clients refused, all reasons, and of them for their source's cap.
        self.refused = 0
        self.refused_per_address = 0
        #: Outbound budget (connection.py) of closed client connections: times one went
        #: over it, times we stopped reading one, clients aborted for not reading answers.
        self.budget_throttles = 0
        self.read_pauses = 0
        self.budget_disconnects = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0, *, sock: socket.socket | None = None) -> int:
        loop = asyncio.get_running_loop()
        backlog = self.config.admission.listen_backlog
        if sock is not None:
            self._server = await loop.create_server(self._new_connection, sock=sock, backlog=backlog)
        else:
            self._server = await loop.create_server(self._new_connection, host, port, backlog=backlog)
        bound = int(self._server.sockets[0].getsockname()[1])
        log.info("%s: accepting clients on %s:%d", self.name, host, bound)
        return bound

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await close_connections(list(self.connections), self.config.close_grace + 1)
        if self._server is not None:
            await self._server.wait_closed()

    def _new_connection(self) -> Connection:
        handshake = NoiseHandshake.responder(network_id=self._network_id, local_static=self._local_static,
                                             accepted_patterns=(Pattern.NK,))
        conn = Connection(
            handshake,
            local_payload=self._payload,
            identify=self._identify,
            sink_factory=lambda c: RpcChannel(c, self.router, max_concurrent_handlers=self._max_handlers),
            config=self.config,
            name=f"{self.name}<-client",
            on_open=self._opened,
            on_close=self._closed,
            admission=self.admission,
        )
        self.connections.add(conn)
        return conn

    def _identify(self, key: bytes | None, payload: HandshakePayload) -> ClientPeer:
        if payload.role != "client":
            self.refused += 1
            raise PeerRejected(f"{self.name}: this port serves clients only")
        if len(self.authenticated) >= self.max_clients:
            self.refused += 1
            error = PeerRejected(f"{self.name}: too many clients")
            error.code = ErrorCode.OVERLOADED
            raise error
        return ClientPeer(next(self._ids), "")

    def _closed(self, conn: Connection) -> None:
        self.connections.discard(conn)
        self.authenticated.discard(conn)
        source = self._source.pop(conn, None)
        if source is not None:
            self._per_source[source] -= 1
            if not self._per_source[source]:
                del self._per_source[source]
        self.budget_throttles += conn.stats.budget_throttles
        self.read_pauses += conn.stats.read_pauses
        if isinstance(conn.close_reason, BudgetExceeded):
            self.budget_disconnects += 1

    def status(self) -> dict[str, int]:
        """Connections now and counters (for status and metrics)."""
        return {"connected": len(self.authenticated), "half_open": self.admission.half_open,
                "accepted": self.accepted, "refused": self.refused,
                "refused_per_address": self.refused_per_address}

    def budget_stats(self) -> dict[str, int]:
        """Outbound-budget counters, live connections included (for status/metrics)."""
        live = list(self.connections)
        return {
            "budget_throttles": self.budget_throttles + sum(c.stats.budget_throttles for c in live),
            "read_pauses": self.read_pauses + sum(c.stats.read_pauses for c in live),
            "budget_disconnects": self.budget_disconnects,
            "queued_outbound": sum(c.queued_outbound for c in live),
        }

    def _opened(self, conn: Connection) -> None:
        if len(self.authenticated) >= self.max_clients:
            # several passed _identify while their confirmations were in flight
            self.refused += 1
            conn.close(ErrorCode.OVERLOADED, "too many clients")
            return
        transport = conn._transport
        peername = transport.get_extra_info("peername") if transport is not None else None
        source = source_of(peername)
        if self._per_source[source] >= self.max_clients_per_address:
            # known only here: the handshake's identify callback does not see the socket
            self.refused += 1
            self.refused_per_address += 1
            conn.close(ErrorCode.OVERLOADED, "too many clients from this address")
            return
        self.authenticated.add(conn)
        self._source[conn] = source
        self._per_source[source] += 1
        self.accepted += 1
        if peername:
            conn.peer = attrs.evolve(conn.peer, address=f"{peername[0]}:{peername[1]}")
        conn.name = f"{self.name}<-client{conn.peer.id}"


async def connect_client(
    host: str,
    port: int,
    *,
    server_static: bytes,
    network_id: bytes,
    router: Router | None = None,
    config: ConnectionConfig = ConnectionConfig(),  # noqa: B008 -- frozen attrs: immutable
    check_server: Callable[[HandshakePayload], bool] | None = None,
    timeout: float = 5.0,
    name: str = "client",
    local_address: tuple[str, int] | None = None,
) -> Connection:
    """Dial a node's client port (Noise NK); return the open connection.

    ``conn.sink`` is its :class:`RpcChannel` (``request``/``notify``). ``check_server``
    may refuse a server whose handshake payload is not the role we meant to reach.
    ``local_address`` binds our end (a host with several addresses picks its source).
    """

    def identify(key: bytes | None, payload: HandshakePayload) -> Any:
        if check_server is not None and not check_server(payload):
            raise HandshakeError(f"{name}: server at {host}:{port} is not the expected endpoint")
        return payload

    handshake = NoiseHandshake.initiator(pattern=Pattern.NK, network_id=network_id, remote_static=server_static)
    loop = asyncio.get_running_loop()
    client_router = router or Router()
    created: list[Connection] = []

    def factory() -> Connection:
        # advertise the frame limit our decoder enforces (wire_spec.md §3.4)
        payload = HandshakePayload("client", max_frame_size=config.max_frame_size)
        conn = Connection(handshake, local_payload=payload, identify=identify,
                          sink_factory=lambda c: RpcChannel(c, client_router), config=config,
                          name=f"{name}->{host}:{port}")
        created.append(conn)
        return conn

    try:
        async with asyncio.timeout(timeout):
            _, conn = await loop.create_connection(factory, host, port, local_addr=local_address)
            return await conn.ready
    except BaseException:
        for conn in created:
            conn.abort()
        raise
