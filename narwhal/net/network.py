"""Peers and their connections: who we talk to, and one link to each.

:class:`PeerManager` owns one listening socket, one connection per peer and one
:class:`~narwhal.net.executor.BoundedExecutor` per peer:

- it **dials** every peer that has an address and keeps redialing with jittered backoff
  while the peer is unreachable (one keeper task per peer);
- it **accepts** inbound Noise-IK connections only from static keys in its peer directory
  whose handshake payload matches the directory entry (role, authority, worker id); until
  their handshake completes they are half-open, capped and budgeted by its
  :class:`~narwhal.net.admission.ListenerAdmission` (``admission``);
- when two connections to one peer exist (both dialed at once) it keeps the one dialed by
  the endpoint with the smaller static key, as the other side does (``wire_spec.md`` §1),
  and closes the other with GOAWAY ``DUPLICATE_CONNECTION``.

The two sending disciplines on top of it (``ReliableNetwork``, ``UnreliableNetwork``) are
in :mod:`narwhal.net.sending`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterable
from typing import Any

from narwhal.config.network import NetworkConfig, PeerInfo
from narwhal.errors import (
    ConnectionClosed,
    ErrorCode,
    HandshakeError,
    PeerNotConnected,
    PeerRejected,
    PeerUnknown,
)
from narwhal.net.admission import ListenerAdmission
from narwhal.net.connection import BudgetExceeded, Connection, close_connections
from narwhal.net.executor import BoundedExecutor
from narwhal.net.metrics import PeerMetrics
from narwhal.net.retry import Backoff
from narwhal.net.rpc import Router, RouteStats, RpcChannel, rpc_errors_of
from narwhal.wire.noise import HandshakePayload, NoiseHandshake, Pattern

__all__ = ["NetworkConfig", "PeerInfo", "PeerManager"]

log = logging.getLogger(__name__)


class _Peer:
    """Everything the manager keeps about one peer."""

    def __init__(self, info: PeerInfo, config: NetworkConfig) -> None:
        self.info = info
        self.connection: Connection | None = None
        self.connected = asyncio.Event()
        self.executor = BoundedExecutor(config.pool_capacity, config.max_pending, name=info.name)
        self.metrics = PeerMetrics()
        self.keeper: asyncio.Task[None] | None = None
        self.connected_since: float | None = None

    def usable(self) -> Connection | None:
        conn = self.connection
        return conn if conn is not None and conn.is_open else None


class PeerManager:
    """One listener, one connection and one bounded executor per peer."""

    def __init__(
        self,
        *,
        local_static: bytes,
        local_public: bytes,
        local_payload: HandshakePayload,
        network_id: bytes,
        peers: Iterable[PeerInfo],
        router: Router | None = None,
        config: NetworkConfig = NetworkConfig(),  # noqa: B008 -- frozen attrs: immutable
        name: str = "node",
    ) -> None:
        self._local_static = local_static
        self.local_public = local_public
        self._payload = local_payload
        self._network_id = network_id
        self.router = router or Router()
        self.config = config
        self.name = name
        self._peers = {p.static_key: _Peer(p, config) for p in peers}
        self._server: asyncio.Server | None = None
        self._handshaking: set[Connection] = set()
        #: Caps and handshake budget of the connections our listener accepts.
        self.admission = ListenerAdmission(config.connection.admission)
        self._running = False
        #: Requests served per message type, with handler latency (for metrics).
        self.routes = RouteStats()
        #: Handshakes refused or failed on our listener, by reason.
        self.rejected_handshakes = 0
        self.failed_handshakes = 0

    # -- directory ----------------------------------------------------------------------

    @property
    def peer_ids(self) -> list[bytes]:
        return list(self._peers)

    def info(self, peer_id: bytes) -> PeerInfo:
        return self._peer(peer_id).info

    def _peer(self, peer_id: bytes) -> _Peer:
        try:
            return self._peers[peer_id]
        except KeyError:
            raise PeerUnknown(f"{self.name}: unknown peer {peer_id.hex()[:16]}") from None

    def executor(self, peer_id: bytes) -> BoundedExecutor:
        return self._peer(peer_id).executor

    def metrics(self, peer_id: bytes) -> PeerMetrics:
        return self._peer(peer_id).metrics

    def connection_nowait(self, peer_id: bytes) -> Connection | None:
        return self._peer(peer_id).usable()

    def is_connected(self, peer_id: bytes) -> bool:
        return self.connection_nowait(peer_id) is not None

    @property
    def handshakes_in_flight(self) -> int:
        """Connections, dialed or accepted, still in their Noise handshake."""
        return len(self._handshaking)

    async def connection(self, peer_id: bytes, timeout: float | None = None) -> Connection:
        """The open connection to ``peer_id``, waiting up to ``timeout`` for one."""
        peer = self._peer(peer_id)
        deadline = time.monotonic() + (self.config.connect_timeout if timeout is None else timeout)
        while (conn := peer.usable()) is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._running:
                raise PeerNotConnected(f"{self.name}: not connected to {peer.info.name}")
            peer.connected.clear()
            try:
                async with asyncio.timeout(remaining):
                    await peer.connected.wait()
            except TimeoutError:
                continue
        return conn

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0, *, sock: socket.socket | None = None) -> int:
        """Listen on ``host:port`` (0 = any free port) or on an already bound ``sock``;
        start dialing every peer that has an address; return the listening port."""
        loop = asyncio.get_running_loop()
        self._running = True
        backlog = self.config.connection.admission.listen_backlog
        if sock is not None:
            self._server = await loop.create_server(self._inbound_connection, sock=sock, backlog=backlog)
        else:
            self._server = await loop.create_server(self._inbound_connection, host, port, backlog=backlog)
        bound = self._server.sockets[0].getsockname()[1]
        for peer in self._peers.values():
            if peer.info.address is not None:
                peer.keeper = loop.create_task(self._keep_connected(peer), name=f"keeper:{peer.info.name}")
        log.info("%s: listening on %s:%d, %d peers", self.name, host, bound, len(self._peers))
        return int(bound)

    async def stop(self) -> None:
        """Stop dialing and listening, cancel every send, close every connection."""
        self._running = False
        if self._server is not None:
            self._server.close()
        keepers = [p.keeper for p in self._peers.values() if p.keeper is not None]
        for task in keepers:
            task.cancel()
        await asyncio.gather(*keepers, return_exceptions=True)
        for peer in self._peers.values():
            await peer.executor.aclose()
        for conn in list(self._handshaking):  # nothing worth finishing: drop them now
            conn.abort()
        self._handshaking.clear()
        conns = [p.connection for p in self._peers.values() if p.connection is not None]
        await close_connections(conns, self.config.connection.close_grace + 1.0)
        if self._server is not None:
            await self._server.wait_closed()

    # -- connecting ---------------------------------------------------------------------

    def _new_connection(self, handshake: NoiseHandshake, name: str, expected: _Peer | None,
                        admission: ListenerAdmission | None = None) -> Connection:
        conn = Connection(
            handshake,
            local_payload=self._payload,
            identify=lambda key, payload: self._identify(key, payload, expected),
            sink_factory=lambda c: RpcChannel(
                c, self.router, max_concurrent_handlers=self.config.max_concurrent_handlers,
                routes=self.routes),
            config=self.config.connection,
            name=name,
            on_open=self._connection_opened,
            on_close=self._connection_closed,
            admission=admission,
        )
        self._handshaking.add(conn)
        return conn

    def _inbound_connection(self) -> Connection:
        handshake = NoiseHandshake.responder(
            network_id=self._network_id, local_static=self._local_static,
            accepted_patterns=(Pattern.IK,))
        return self._new_connection(handshake, f"{self.name}<-?", None, self.admission)

    def _identify(self, key: bytes | None, payload: HandshakePayload, expected: _Peer | None) -> _Peer:
        peer = self._peers.get(key) if key is not None else None
        if peer is None or (expected is not None and peer is not expected):
            self.rejected_handshakes += 1
            raise PeerRejected(f"static key {key.hex()[:16] if key else None} is not a peer of {self.name}")
        if not peer.info.matches(payload):
            self.rejected_handshakes += 1
            peer.metrics.record_error("handshake", "payload does not match the committee")
            raise PeerRejected(f"{peer.info.name}: handshake payload does not match the committee")
        return peer

    async def _dial(self, peer: _Peer) -> Connection:
        assert peer.info.address is not None
        host, port = self.config.dial_overrides.get(peer.info.address, peer.info.address)
        handshake = NoiseHandshake.initiator(
            pattern=Pattern.IK, network_id=self._network_id, remote_static=peer.info.static_key,
            local_static=self._local_static)
        loop = asyncio.get_running_loop()
        created: list[Connection] = []

        def factory() -> Connection:
            conn = self._new_connection(handshake, f"{self.name}->{peer.info.name}", peer)
            created.append(conn)
            return conn

        try:
            async with asyncio.timeout(self.config.connect_timeout):
                _, conn = await loop.create_connection(factory, host, port)
                return await conn.ready
        except BaseException:
            # uvloop builds the protocol before connecting: a refused or cancelled dial
            # leaves a Connection that will never see connection_made/lost. Forget it.
            for conn in created:
                self._handshaking.discard(conn)
                conn.abort()
            raise

    async def _keep_connected(self, peer: _Peer) -> None:
        """Dial ``peer`` whenever we have no connection to it, backing off while it fails."""
        backoff = Backoff(self.config.dial_retry)
        while self._running:
            conn = peer.usable()
            if conn is not None:
                await asyncio.shield(conn.closed)
                if not _lost_tie_break(conn) or peer.usable() is not None:
                    backoff.reset()
                    continue
                # the peer kept a connection we do not hold (it checks that one: see
                # _connection_opened); redialing at once would be refused again and again
                peer.metrics.duplicate_refusals += 1
                await backoff.pause()
                continue
            try:
                await self._dial(peer)
                continue
            except (OSError, TimeoutError, ConnectionClosed, HandshakeError) as exc:
                peer.metrics.dial_failures += 1
                peer.metrics.record_error("handshake" if isinstance(exc, HandshakeError) else "dial", exc)
                log.debug("%s: dial %s failed: %r", self.name, peer.info.name, exc)
            await backoff.pause()

    def _connection_opened(self, conn: Connection) -> None:
        self._handshaking.discard(conn)
        peer: _Peer = conn.peer
        if not conn.initiator:
            conn.name = f"{self.name}<-{peer.info.name}"
        current = peer.usable()
        if current is not None and current is not conn:
            keep, drop = self._tie_break(current, conn)
            drop.close(ErrorCode.DUPLICATE_CONNECTION, "duplicate connection")
            if keep is current:
                # the peer dialed although we hold a connection: a simultaneous dial, or
                # it lost this one without our noticing (then only a check ends it early)
                current.verify_alive(self.config.stale_check_timeout)
                return
        peer.connection = conn
        peer.metrics.connects += 1
        if peer.metrics.connects > 1:
            peer.metrics.reconnects += 1
        peer.connected_since = time.time()
        peer.connected.set()
        log.info("%s: connected to %s (%s)", self.name, peer.info.name,
                 "outbound" if conn.initiator else "inbound")

    def _tie_break(self, current: Connection, new: Connection) -> tuple[Connection, Connection]:
        """(keep, drop) of two connections to one peer (``wire_spec.md`` section 1).

        Dialed by different endpoints (both dialed at once): the one dialed by the smaller
        static key, as the other side decides too. Dialed by the same endpoint: the new
        one, since an endpoint dials only when it holds no usable connection, so the
        older one is dead at its end (a restart, a power cut) or closing."""
        if current.initiator == new.initiator:
            return new, current
        return (current, new) if self._preferred(current) else (new, current)

    def _preferred(self, conn: Connection) -> bool:
        """Is ``conn`` the one both sides keep? The one dialed by the smaller static key."""
        assert conn.remote_static is not None
        we_are_smaller = self.local_public < conn.remote_static
        return conn.initiator == we_are_smaller

    def _connection_closed(self, conn: Connection) -> None:
        self._handshaking.discard(conn)
        peer: _Peer | None = conn.peer
        if peer is None:
            if conn.close_reason is not None and isinstance(conn.close_reason, HandshakeError):
                self.failed_handshakes += 1
            return
        m = peer.metrics
        m.closed_bytes_in += conn.stats.bytes_in
        m.closed_bytes_out += conn.stats.bytes_out
        m.closed_frames_in += conn.stats.frames_in
        m.closed_frames_out += conn.stats.frames_out
        m.budget_throttles += conn.stats.budget_throttles
        m.stale_aborts += conn.stats.stale_aborts
        m.read_pauses += conn.stats.read_pauses
        if isinstance(conn.close_reason, BudgetExceeded):
            m.budget_disconnects += 1
            m.record_error("outbound_budget", conn.close_reason)
        m.errors.update({f"rpc_{kind}": n for kind, n in rpc_errors_of(conn).items()})
        if peer.connection is conn:
            peer.connection = None
            peer.connected_since = None
            peer.connected.clear()
            reason = conn.close_reason
            if reason is not None and not isinstance(reason, ConnectionClosed):
                m.record_error("connection", reason)

    # -- metrics ------------------------------------------------------------------------

    def snapshot(self) -> list[dict[str, Any]]:
        """Per-peer state and counters, JSON-ready (read by the admin endpoint / peer_top)."""
        rows = []
        for peer in self._peers.values():
            conn = peer.usable()
            ex = peer.executor
            m = peer.metrics
            live = conn.stats if conn is not None else None
            rows.append({
                "name": peer.info.name,
                "key": peer.info.static_key.hex(),
                "role": peer.info.role,
                "worker_id": peer.info.worker_id,
                "address": f"{peer.info.address[0]}:{peer.info.address[1]}" if peer.info.address else None,
                "state": "connected" if conn is not None else "disconnected",
                "direction": None if conn is None else ("outbound" if conn.initiator else "inbound"),
                "connected_since": peer.connected_since,
                "rtt_ms": None if live is None or live.rtt_ewma is None else live.rtt_ewma * 1000,
                "bytes_in": m.closed_bytes_in + (live.bytes_in if live else 0),
                "bytes_out": m.closed_bytes_out + (live.bytes_out if live else 0),
                "frames_in": m.closed_frames_in + (live.frames_in if live else 0),
                "frames_out": m.closed_frames_out + (live.frames_out if live else 0),
                "queued_outbound": conn.queued_outbound if conn is not None else 0,
                "outbound_budget": conn.outbound_budget if conn is not None else None,
                "throttled": conn is not None and conn.throttled,
                "in_flight": ex.in_flight,
                "queued": ex.waiting,
                "backing_off": ex.backing_off,
                "pending": ex.pending,
                "pool_capacity": ex.capacity,
                "max_pending": ex.max_pending,
                **{k: v for k, v in m.as_dict().items() if not k.startswith("closed_")},
                "errors": _with_live_rpc_errors(m.errors, conn),
                "budget_throttles": m.budget_throttles + (live.budget_throttles if live else 0),
                "read_pauses": m.read_pauses + (live.read_pauses if live else 0),
                "rate_limited": self.router.limited_count(peer.info.name),
            })
        return rows


def _with_live_rpc_errors(errors: dict[str, int], conn: Connection | None) -> dict[str, int]:
    """A peer's error counts with its live connection's RPC rejections (``rpc_<kind>``) added:
    those are folded into the peer's counters only when the connection closes, so without
    this a peer sending malformed or unauthorized requests on a link it keeps open would
    show nothing in ``/status`` and ``/metrics``."""
    out = dict(errors)
    for kind, count in rpc_errors_of(conn).items():
        out[f"rpc_{kind}"] = out.get(f"rpc_{kind}", 0) + count
    return out


def _lost_tie_break(conn: Connection) -> bool:
    """Did the peer close ``conn`` because it kept another connection to us?"""
    return conn.goaway is not None and conn.goaway[0] == ErrorCode.DUPLICATE_CONNECTION
