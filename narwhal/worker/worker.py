"""The worker on the network: a :class:`~narwhal.worker.node.WorkerNode` (its logic and
data flow, socket-free) with real listeners wired to its handlers.

Two listeners: the worker port (a ``PeerManager``, Noise IK, only the same-id workers of
the other authorities and our own primary may connect) and the transactions port (a
``ClientServer``, Noise NK, anonymous clients). The router's ``allow`` enforces which
peer may send which message (table ``_LINKS``); a refusal is answered ``UNAUTHORIZED``
and counted. What the node sends goes through a ``ReliableNetwork`` over the same
``PeerManager``. The worker owns no store: the caller opens and closes it.
"""

from __future__ import annotations

import logging
import socket
from collections import Counter
from collections.abc import Mapping
from typing import Any

import attrs

from narwhal.config import Committee, Parameters, parse_address, short_hex
from narwhal.crypto import AuthorityKeys
from narwhal.messages import (
    Batch,
    Cleanup,
    RequestBatches,
    SubmitTransactions,
    Synchronize,
)
from narwhal.net.clients import ClientServer
from narwhal.net.network import PeerManager
from narwhal.net.rate_limit import client_limiter, validator_limiter
from narwhal.net.rpc import Router, rate_limited, rpc_errors_of
from narwhal.net.sending import ReliableNetwork
from narwhal.store import store_size
from narwhal.wire.noise import HandshakePayload
from narwhal.worker.intake import DEFAULT_ADMISSION_TIMEOUT
from narwhal.worker.node import WorkerNode

__all__ = ["Worker"]

log = logging.getLogger(__name__)

#: Who may send what to a worker: "peer" = the same-id worker of another authority,
#: "primary" = our own primary. Anything not listed is refused.
_LINKS: dict[type, frozenset[str]] = {
    Batch: frozenset({"peer"}),
    RequestBatches: frozenset({"peer", "primary"}),
    Synchronize: frozenset({"primary"}),
    Cleanup: frozenset({"primary"}),
}


class Worker(WorkerNode):
    """Worker ``worker_id`` of the authority whose keys are ``keys``, listening on the
    committee's addresses."""

    def __init__(self, keys: AuthorityKeys, committee: Committee, parameters: Parameters,
                 worker_id: int, store: Any, *,
                 admission_timeout: float = DEFAULT_ADMISSION_TIMEOUT,
                 dial_overrides: Mapping[tuple[str, int], tuple[str, int]] | None = None) -> None:
        committee.check_keys(keys.public())
        me, p = keys.name, parameters
        self.committee, self.parameters = committee, p
        self._info = committee.authorities[me].workers[worker_id]
        network_key = keys.workers[worker_id]
        payload = HandshakePayload("worker", authority=me, worker_id=worker_id,
                                   max_frame_size=p.max_frame_size)
        router = Router(allow=self._allow, limiter=validator_limiter(p, committee, me))
        self.manager = PeerManager(
            local_static=network_key.private, local_public=network_key.public,
            local_payload=payload, network_id=committee.network_id(),
            peers=committee.worker_peers(me, worker_id), router=router,
            config=attrs.evolve(p.network_config(), dial_overrides=dial_overrides or {}),
            name=f"{short_hex(me)}/worker{worker_id}")
        super().__init__(name=me, worker_id=worker_id, committee=committee, parameters=p,
                         store=store, network=ReliableNetwork(self.manager),
                         admission_timeout=admission_timeout)
        router.route(Batch, self.on_batch)
        router.route(RequestBatches, self.on_request_batches, bulk=True)
        router.route(Synchronize, self.on_synchronize)
        router.route(Cleanup, self.on_cleanup)
        client_router = Router(limiter=client_limiter(p, committee))
        client_router.route(SubmitTransactions, self.on_submit)
        self.clients = ClientServer(
            local_static=network_key.private, network_id=committee.network_id(),
            local_payload=payload, router=client_router, config=p.network_config().connection,
            name=f"{short_hex(me)}/worker{worker_id}/txs",
            max_clients_per_address=p.max_clients_per_address,
            max_concurrent_handlers=p.max_concurrent_handlers)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, *, worker_sock: socket.socket | None = None,  # type: ignore[override]
                    transactions_sock: socket.socket | None = None) -> None:
        """Listen on the committee's addresses, or on the given pre-bound sockets, then
        start the node."""
        await self.manager.start(*parse_address(self._info.worker_address), sock=worker_sock)
        await self.clients.start(*parse_address(self._info.transactions_address),
                                 sock=transactions_sock)
        super().start()

    async def stop(self) -> None:
        """Refuse clients, drop what is buffered, cancel every send and task, disconnect."""
        await self.clients.stop()
        await self.stop_components()
        await self.manager.stop()
        await self.server.close()

    def _allow(self, peer: Any, message_class: type) -> bool:
        info = peer.info
        if info.role == "worker" and info.authority != self.name and info.worker_id == self.worker_id:
            kind = "peer"
        elif info.role == "primary" and info.authority == self.name:
            kind = "primary"
        else:
            kind = "nobody"
        if kind in _LINKS.get(message_class, ()):
            return True
        self.metrics.error("unauthorized")
        return False

    # -- metrics -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Counters and gauges, JSON-ready (see :class:`WorkerMetrics` for the counters)."""
        rpc_errors: Counter[str] = Counter()
        connections = [*self.clients.connections,
                       *map(self.manager.connection_nowait, self.manager.peer_ids)]
        for conn in connections:
            rpc_errors.update(rpc_errors_of(conn))
        counters = attrs.asdict(self.metrics)
        counters["errors"]["handshake_rejected"] = self.manager.rejected_handshakes
        counters["errors"]["handshake_failed"] = self.manager.failed_handshakes
        return {
            "authority": self.name.hex(),
            "worker_id": self.worker_id,
            **counters,
            "rpc_errors_live_connections": dict(rpc_errors),
            "pending_tx_bytes": self.pending.value,
            "submissions_waiting": self.pending.waiting,
            "batch_maker_bytes": self.batch_maker.buffered_bytes,
            "quorum_waits_outstanding": self.quorum_waiter.outstanding,
            "late_batches": self.late.batches,
            "late_sends": self.late.sends,
            "sync_wanted_digests": self.synchronizer.wanted,
            "sync_wanted_by_target": self.synchronizer.wanted_by_target(),
            "reports_outstanding": self.reporter.outstanding,
            "cleanup_round": self.epoch.round,
            "clients": self.clients.status(),
            "admission": {"validators": self.manager.admission.snapshot(),
                          "transactions": self.clients.admission.snapshot()},
            "peers": self.manager.snapshot(),
            "routes": self.manager.routes.snapshot(),
            "rate_limited": rate_limited(self.manager.router, self.clients.router),
            "store_bytes": store_size(self._store),
            "store_corrupt_values": getattr(self._store, "corrupt_values", 0),
            "retention": self.retention.status(),
            "serving_reads": self.server.reads.status(),
        }
