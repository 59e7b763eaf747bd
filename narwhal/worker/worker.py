"""The worker: wires its components to the network, the store and its primary.

Data flow (each arrow one component, each in its own module)::

    client --SubmitTransactions--> intake --> batch maker --> quorum waiter --OurBatch--> primary
                                   (backpressure)  (seal)      (store, replicate, 2f+1 acks)
    peer worker --Batch--> batch receiver (store, ack) --OthersBatch--> primary
    peer worker / primary --RequestBatches--> batch server (from the store)
    primary --Synchronize--> synchronizer --RequestBatches--> peer workers
    primary --Cleanup--> late sends + synchronizer (expire by cleanup epoch)

Two listeners: the worker port (a ``PeerManager``, Noise IK, only the same-id workers of
the other authorities and our own primary may connect) and the transactions port (a
``ClientServer``, Noise NK, anonymous clients). The router's ``allow`` enforces which
peer may send which message (table ``_LINKS``); a refusal is answered ``UNAUTHORIZED``
and counted. The worker owns no store: the caller opens and closes it.
"""

from __future__ import annotations

import asyncio
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
    OurBatch,
    RequestBatches,
    SubmitTransactions,
    Synchronize,
)
from narwhal.net.clients import ClientServer
from narwhal.net.network import PeerManager, ReliableNetwork
from narwhal.net.rate_limit import client_limiter, validator_limiter
from narwhal.net.rpc import Router, rate_limited, rpc_errors_of
from narwhal.store import store_size
from narwhal.wire.noise import HandshakePayload
from narwhal.worker.batch_maker import BatchMaker
from narwhal.worker.batch_receiver import BatchReceiver
from narwhal.worker.batch_server import BatchServer
from narwhal.worker.intake import DEFAULT_ADMISSION_TIMEOUT, PendingBytes, TransactionIntake
from narwhal.worker.late_sends import CleanupEpoch, LateSends
from narwhal.worker.metrics import WorkerMetrics
from narwhal.worker.quorum_waiter import QuorumWaiter
from narwhal.worker.reporter import PrimaryReporter
from narwhal.worker.retention import BatchRetention
from narwhal.worker.synchronizer import Synchronizer

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
#: Late batches kept is at least this, whatever the byte budget says.
MIN_LATE_BATCHES = 16
#: A peer's batch is charged at least batch_size // this against its storage quota: an
#: honest worker seals an under-full batch only on timeout (at most 1 / max_batch_delay a
#: second, 10/s by default: 1/2 batch_size a second of charge, against the quota's
#: >= 80 batch_size), so tiny batches cost honest peers almost nothing and a flood of them
#: is bounded in count (quota_rate / (batch_size // 20) a second: <= 1,600/s by default).
MIN_CHARGE_DIVISOR = 20


class Worker:
    """Worker ``worker_id`` of the authority whose keys are ``keys``."""

    def __init__(self, keys: AuthorityKeys, committee: Committee, parameters: Parameters,
                 worker_id: int, store: Any, *,
                 admission_timeout: float = DEFAULT_ADMISSION_TIMEOUT,
                 dial_overrides: Mapping[tuple[str, int], tuple[str, int]] | None = None) -> None:
        committee.check_keys(keys.public())
        me, p = keys.name, parameters
        self.name, self.worker_id, self.committee, self.parameters = me, worker_id, committee, p
        self._store = store
        self._cleanup_tasks: set[asyncio.Task[None]] = set()
        authority = committee.authorities[me]
        self._info = authority.workers[worker_id]
        network_key = keys.workers[worker_id]
        self.metrics = metrics = WorkerMetrics()
        self.epoch = epoch = CleanupEpoch(window=parameters.gc_depth)
        payload = HandshakePayload("worker", authority=me, worker_id=worker_id,
                                   max_frame_size=p.max_frame_size)

        router = Router(allow=self._allow, limiter=validator_limiter(p, committee, me))
        self.manager = PeerManager(
            local_static=network_key.private, local_public=network_key.public,
            local_payload=payload, network_id=committee.network_id(),
            peers=committee.worker_peers(me, worker_id), router=router,
            config=attrs.evolve(p.network_config(), dial_overrides=dial_overrides or {}),
            name=f"{short_hex(me)}/worker{worker_id}")
        reliable = ReliableNetwork(self.manager)
        peers = {a: committee.authorities[a].workers[worker_id].network_key
                 for a in committee.others(me)}

        self.reporter = PrimaryReporter(reliable, authority.primary.network_key, metrics,
                                        on_acked=self._report_acked)
        self.pending = PendingBytes(p.max_pending_transactions_bytes)
        self.late = LateSends(epoch, max(MIN_LATE_BATCHES, p.max_pending_transactions_bytes
                                         // p.batch_size), metrics)
        self.quorum_waiter = QuorumWaiter(
            own_stake=committee.stake(me), threshold=committee.quorum_threshold(),
            peers={key: committee.stake(a) for a, key in peers.items()}, worker_id=worker_id,
            network=reliable, store=store, report=self.reporter.report,
            release=self.pending.release, late=self.late, epoch=epoch, metrics=metrics)
        self.batch_maker = BatchMaker(batch_size=p.batch_size, max_batch_delay=p.max_batch_delay,
                                      on_sealed=self.quorum_waiter.submit, metrics=metrics)
        self.intake = TransactionIntake(
            max_transaction_size=p.max_transaction_size, pending=self.pending,
            deliver=self.batch_maker.add, metrics=metrics, admission_timeout=admission_timeout,
            storage_failing=lambda: bool(getattr(store, "failing", False)))
        self.receiver = BatchReceiver(store=store, report=self.reporter.report,
                                      worker_id=worker_id,
                                      max_batch_bytes=p.batch_size + p.max_transaction_size,
                                      metrics=metrics, quota_rate=p.batch_quota_rate,
                                      quota_burst=p.batch_quota_burst,
                                      min_charge=p.batch_size // MIN_CHARGE_DIVISOR)
        self.server = BatchServer(store=store, max_frame_size=p.max_frame_size, metrics=metrics,
                                  authority=me)
        self.retention = BatchRetention(store, retain_seconds=p.retain_seconds, retain_bytes=p.retain_bytes)
        self.synchronizer = Synchronizer(
            peers=peers, worker_id=worker_id, network=reliable,
            store=store, receiver=self.receiver, report=self.reporter.report, epoch=epoch,
            metrics=metrics, retry_delay=p.sync_retry_delay, retry_nodes=p.sync_retry_nodes,
            reads=self.server.reads)

        router.route(Batch, self.receiver.handle)
        router.route(RequestBatches, self.server.handle, bulk=True)
        router.route(Synchronize, self.synchronizer.handle)
        router.route(Cleanup, self._cleanup)
        client_router = Router(limiter=client_limiter(p, committee))
        client_router.route(SubmitTransactions, self.intake.handle)
        self.clients = ClientServer(
            local_static=network_key.private, network_id=committee.network_id(),
            local_payload=payload, router=client_router, config=p.network_config().connection,
            name=f"{short_hex(me)}/worker{worker_id}/txs",
            max_clients_per_address=p.max_clients_per_address,
            max_concurrent_handlers=p.max_concurrent_handlers)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, *, worker_sock: socket.socket | None = None,
                    transactions_sock: socket.socket | None = None) -> None:
        """Listen on the committee's addresses, or on the given pre-bound sockets."""
        await self.manager.start(*parse_address(self._info.worker_address), sock=worker_sock)
        await self.clients.start(*parse_address(self._info.transactions_address),
                                 sock=transactions_sock)
        self.reporter.start()
        self.retention.start()
        resumed = self.quorum_waiter.resume()
        if resumed:
            log.info("worker %d: replicating %d unreported batches again", self.worker_id, resumed)

    def _report_acked(self, message: Any) -> None:
        """Our primary holds an OurBatch durably: the batch no longer needs resuming."""
        if isinstance(message, OurBatch):
            task = asyncio.ensure_future(self._store.delete("our_batches", message.digest))
            self._cleanup_tasks.add(task)
            task.add_done_callback(self._cleanup_tasks.discard)

    async def stop(self) -> None:
        """Refuse clients, drop what is buffered, cancel every send and task, disconnect."""
        await self.clients.stop()
        self.batch_maker.close()
        await self.quorum_waiter.close()
        self.late.close()
        await self.synchronizer.close()
        await self.reporter.close()
        await self.retention.close()
        await self.manager.stop()
        await self.server.close()

    # -- handlers ----------------------------------------------------------------------------

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

    async def _cleanup(self, peer: Any, message: Cleanup) -> None:
        if self.epoch.advance(message.round):
            self.late.expire()
            self.synchronizer.expire()

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
