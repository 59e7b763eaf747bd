"""A primary on the real network: Noise IK on the committee's primary address.

Inbound, with the link policy enforced by the router (any other sender is refused):

- from other primaries: ``Header`` (vote), ``Vote`` (aggregate), ``Certificate``
  (accept), ``CertificatesRequest`` / ``FetchCertificates`` (answered from the store: the
  catch-up path for nodes that fell behind);
- from our own workers: ``OurBatch`` (our batch reached its quorum: payload for our next
  header) and ``OthersBatch`` (another authority's batch is stored here).

On the committee's ``client_address`` (Noise NK, anonymous clients) it serves the ordered
output (:class:`~narwhal.primary.output.OutputService`), resolving transactions by asking
our own workers (``RequestBatches``).

Everything else is :class:`~narwhal.primary.node.PrimaryNode`'s job.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Mapping
from typing import Any

import attrs

from narwhal.config import parse_address
from narwhal.errors import ErrorCode, RequestRejected
from narwhal.messages import (
    Certificate,
    CertificatesRequest,
    CheckpointRequest,
    Encoded,
    FetchCertificates,
    Header,
    OthersBatch,
    OurBatch,
    Vote,
)
from narwhal.net.network import PeerManager
from narwhal.net.rate_limit import validator_limiter
from narwhal.net.rpc import Router, rate_limited
from narwhal.primary.network import PrimaryNetwork
from narwhal.primary.node import PrimaryNode
from narwhal.primary.output import DEFAULT_SLOW_TIMEOUT, OutputLimits, OutputService
from narwhal.serving_reads import source_of
from narwhal.store import store_size
from narwhal.wire.noise import HandshakePayload

__all__ = ["Primary"]

log = logging.getLogger(__name__)

_FROM_PRIMARIES = (Header, Vote, Certificate, CertificatesRequest, FetchCertificates,
                   CheckpointRequest)
_FROM_OUR_WORKERS = (OurBatch, OthersBatch)


class Primary:
    def __init__(self, keys: Any, committee: Any, parameters: Any, store: Any, *,
                 slow_subscriber_timeout: float = DEFAULT_SLOW_TIMEOUT,
                 dial_overrides: Mapping[tuple[str, int], tuple[str, int]] | None = None) -> None:
        self.name: bytes = keys.name
        self.committee = committee
        self.store = store
        router = Router(allow=self._allowed,
                        limiter=validator_limiter(parameters, committee, self.name))
        payload = HandshakePayload("primary", authority=self.name,
                                   max_frame_size=parameters.max_frame_size)
        self.manager = PeerManager(
            local_static=keys.primary.private, local_public=keys.primary.public,
            local_payload=payload, network_id=committee.network_id(), peers=committee.primary_peers(self.name),
            router=router, config=attrs.evolve(parameters.network_config(), dial_overrides=dial_overrides or {}),
            name=f"{self.name.hex()[:8]}/primary")
        self.network = PrimaryNetwork(
            self.manager,
            primaries={a: committee.authorities[a].primary.network_key for a in committee.others(self.name)},
            workers={i: w.network_key for i, w in enumerate(committee.authorities[self.name].workers)})
        self.node = PrimaryNode(name=self.name, signer=keys.signing, committee=committee,
                                parameters=parameters, store=store, network=self.network)
        self.output = OutputService(
            node=self.node, request_worker=self.network.request_worker_bytes,
            local_static=keys.primary.private, network_id=committee.network_id(),
            local_payload=payload, config=parameters.network_config().connection,
            name=f"{self.name.hex()[:8]}/output",
            limits=OutputLimits.of(parameters, slow_subscriber_timeout))
        self._task: asyncio.Task[None] | None = None
        node = self.node
        for cls, handler in (
            (Header, lambda peer, m: node.on_header(peer.info.authority, m)),
            (Vote, lambda peer, m: node.on_vote(peer.info.authority, m)),
            (Certificate, lambda peer, m: node.on_certificate(peer.info.authority, m)),
            (CertificatesRequest, self._on_certificates_request),
            (FetchCertificates, self._on_fetch_certificates),
            (CheckpointRequest, lambda peer, m: node.checkpoint_at_or_after(m.min_round, source_of(peer))),
            (OurBatch, lambda peer, m: self._on_batch(peer, m, ours=True)),
            (OthersBatch, lambda peer, m: self._on_batch(peer, m, ours=False)),
        ):
            router.route(cls, handler, bulk=cls in (CertificatesRequest, FetchCertificates,
                                                    CheckpointRequest))

    async def start(self, *, primary_sock: socket.socket | None = None,
                    client_sock: socket.socket | None = None) -> None:
        self.node.restore()
        host, port = parse_address(self.committee.authorities[self.name].primary.address)
        await self.manager.start(host, port, sock=primary_sock)
        self._task = asyncio.ensure_future(self.node.run())
        await self.output.start(*parse_address(self.committee.authorities[self.name].primary.client_address),
                                sock=client_sock)
        log.info("primary %s started at round %d", self.name.hex()[:8], self.node.proposer.round)

    async def stop(self) -> None:
        await self.output.stop()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.node.close()
        await self.manager.stop()

    def _allowed(self, peer: Any, cls: type) -> bool:
        info = peer.info
        if cls in _FROM_PRIMARIES:
            return bool(info.role == "primary")
        if cls in _FROM_OUR_WORKERS:
            return bool(info.role == "worker" and info.authority == self.name)
        return False

    async def _on_batch(self, peer: Any, report: OurBatch | OthersBatch, *, ours: bool) -> None:
        if peer.info.worker_id != report.worker_id:
            raise RequestRejected(ErrorCode.INVALID, "a worker reports only its own batches")
        await self.node.on_batch(report.digest, report.worker_id, ours=ours,
                                 transactions=report.transactions)

    async def _on_certificates_request(self, peer: Any, request: CertificatesRequest) -> Encoded:
        return await self.node.certificates_by_digest(list(request.digests), source_of(peer))

    async def _on_fetch_certificates(self, peer: Any, request: FetchCertificates) -> Encoded:
        return await self.node.certificates_after(request.after_round, request.max_items,
                                                  source_of(peer))

    def status(self) -> dict[str, Any]:
        return {**self.node.status(), "output": self.output.status(), "peers": self.manager.snapshot(),
                "routes": self.manager.routes.snapshot(),
                "rate_limited": rate_limited(self.manager.router),
                "store_bytes": store_size(self.store),
                "admission": {"validators": self.manager.admission.snapshot(),
                              "output": self.output.server.admission.snapshot()}}
