"""A primary: wires the core, proposer, fetcher and network together, and serves peers.

Inbound (Noise IK on the committee's primary address, committee keys only):

- from other primaries: ``Header`` -> core (vote), ``Vote`` -> core (aggregate),
  ``Certificate`` -> core (accept), ``CertificatesRequest`` / ``FetchCertificates`` ->
  answered from the store (catch-up for nodes that fell behind);
- from our own workers: ``OurBatch`` (our batch reached its quorum: payload for our next
  header) and ``OthersBatch`` (another authority's batch is stored here: headers that
  reference it become votable).

The router's link policy refuses each message type from any other kind of peer.
On start the primary rebuilds its state from the store: certificates, the votes it cast,
the batches known available, and the last round it proposed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from narwhal import messages
from narwhal.config import parse_address
from narwhal.consensus import Bullshark, ConsensusState, Tusk
from narwhal.errors import ErrorCode, RequestRejected
from narwhal.messages import (
    Certificate,
    CertificatesRequest,
    CertificatesResponse,
    FetchCertificates,
    Header,
    OthersBatch,
    OurBatch,
    Vote,
)
from narwhal.net.network import PeerManager
from narwhal.net.rpc import Router
from narwhal.primary.core import Core, round_key
from narwhal.primary.fetcher import CertificateFetcher
from narwhal.primary.network import PrimaryNetwork
from narwhal.primary.proposer import Proposer
from narwhal.wire.noise import HandshakePayload

__all__ = ["Primary"]

log = logging.getLogger(__name__)

#: Bytes of certificates in one catch-up response (well below the 8 MiB frame limit).
MAX_RESPONSE_BYTES = 4 * 1024 * 1024

_FROM_PRIMARIES = (Header, Vote, Certificate, CertificatesRequest, FetchCertificates)
_FROM_OUR_WORKERS = (OurBatch, OthersBatch)


class Primary:
    def __init__(self, keys: Any, committee: Any, parameters: Any, store: Any) -> None:
        self.keys = keys
        self.name: bytes = keys.name
        self.committee = committee
        self.parameters = parameters
        self.store = store
        router = Router(allow=self._allowed)
        self.manager = PeerManager(
            local_static=keys.primary.private, local_public=keys.primary.public,
            local_payload=HandshakePayload("primary", authority=self.name,
                                           max_frame_size=parameters.max_frame_size),
            network_id=committee.network_id(), peers=committee.primary_peers(self.name),
            router=router, config=parameters.network_config(), name=f"{self.name.hex()[:8]}/primary")
        others = committee.others(self.name)
        self.network = PrimaryNetwork(
            self.manager,
            primaries={a: committee.authorities[a].primary.network_key for a in others},
            workers={i: w.network_key for i, w in enumerate(committee.authorities[self.name].workers)})
        self.fetcher = CertificateFetcher(
            others=others, request=self.network.request, have=lambda d: d in self.core.dag,
            deliver=lambda c, source: self.core.handle_certificate(c, None))
        self.core = Core(
            name=self.name, committee=committee, signer=keys.signing, store=store,
            network=self.network, fetch_certificates=self.fetcher.fetch,
            on_parents=self._parents_ready, on_certificate=self._certificate_accepted,
            worker_ids=committee.worker_ids)
        genesis = tuple(sorted(c.digest() for c in Certificate.genesis(committee.authorities_sorted())))
        last = store.get("last_proposed", b"")
        self.proposer = Proposer(
            name=self.name, signer=keys.signing, store=store, propose=self.core.propose,
            header_size=parameters.header_size, max_header_delay=parameters.max_header_delay,
            genesis_parents=genesis, last_proposed=int.from_bytes(last, "big") if last else 0)
        protocol = Bullshark if parameters.consensus == "bullshark" else Tusk
        self.consensus = protocol(committee, ConsensusState(parameters.gc_depth))
        self.consensus_index = 0
        self._tasks: list[asyncio.Task[None]] = []
        for cls, handler in (
            (Header, self._on_header), (Vote, self._on_vote), (Certificate, self._on_certificate),
            (CertificatesRequest, self._on_certificates_request),
            (FetchCertificates, self._on_fetch_certificates),
            (OurBatch, self._on_our_batch), (OthersBatch, self._on_others_batch),
        ):
            router.route(cls, handler)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, *, primary_sock: socket.socket | None = None,
                    client_sock: socket.socket | None = None) -> None:
        self._restore()
        host, port = parse_address(self.committee.authorities[self.name].primary.address)
        await self.manager.start(host, port, sock=primary_sock)
        self._tasks.append(asyncio.ensure_future(self._run_proposer()))
        log.info("primary %s started at round %d", self.name.hex()[:8], self.proposer.round)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.fetcher.close()
        await self.core.close()
        await self.manager.stop()

    def _restore(self) -> None:
        certificates = [messages.decode(messages.tag_of(Certificate), value)
                        for _, value in self.store.items("certificates")]
        votes = [(key[:32], int.from_bytes(key[32:], "big"), value)
                 for key, value in self.store.items("votes")]
        available = [(key[:32], int.from_bytes(key[32:], "big")) for key in self.store.keys("payload")]
        highest = max((c.header.round for c in certificates), default=0)
        gc_round = max(0, highest - self.parameters.gc_depth)
        self.core.restore(certificates=certificates, votes=votes, available=available, gc_round=gc_round)
        if certificates:
            log.info("restored %d certificates up to round %d, %d votes, gc round %d",
                     len(certificates), highest, len(votes), gc_round)

    async def _run_proposer(self) -> None:
        while True:
            try:
                await self.proposer.run()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one failure stop our proposals for good
                log.exception("proposer failed; restarting it")
                await asyncio.sleep(0.1)

    # -- callbacks from the core -------------------------------------------------------------

    def _parents_ready(self, round_: int, parents: tuple[bytes, ...]) -> None:
        self.proposer.parents_ready(round_, parents)

    def _certificate_accepted(self, certificate: Certificate) -> None:
        """The core accepted a certificate (causal order): run consensus on it."""
        for committed in self.consensus.process_certificate(certificate):
            self.consensus_index += 1
            header = committed.header
            log.info("Committed certificate %s round=%d author=%s index=%d batches=%d",
                     committed.digest().hex()[:16], header.round, header.author.hex()[:8],
                     self.consensus_index, len(header.payload))
            for digest, _ in header.payload:
                log.info("Committed batch %s", digest.hex())
        gc_round = self.consensus.state.last_committed_round - self.parameters.gc_depth
        if gc_round > self.core.gc_round:
            self.core._spawn_send(self.core.garbage_collect(gc_round), None)

    # -- handlers ------------------------------------------------------------------------------

    def _allowed(self, peer: Any, cls: type) -> bool:
        info = peer.info
        if cls in _FROM_PRIMARIES:
            return info.role == "primary"
        if cls in _FROM_OUR_WORKERS:
            return info.role == "worker" and info.authority == self.name
        return False

    async def _on_header(self, peer: Any, header: Header) -> None:
        await self.core.handle_header(header, peer.info.authority)

    async def _on_vote(self, peer: Any, vote: Vote) -> None:
        await self.core.handle_vote(vote, peer.info.authority)

    async def _on_certificate(self, peer: Any, certificate: Certificate) -> None:
        await self.core.handle_certificate(certificate, peer.info.authority)

    async def _on_our_batch(self, peer: Any, report: OurBatch) -> None:
        self._check_worker(peer, report.worker_id)
        await self.core.batch_available(report.digest, report.worker_id)
        self.proposer.add_digest(report.digest, report.worker_id)

    async def _on_others_batch(self, peer: Any, report: OthersBatch) -> None:
        self._check_worker(peer, report.worker_id)
        await self.core.batch_available(report.digest, report.worker_id)

    def _check_worker(self, peer: Any, worker_id: int) -> None:
        if peer.info.worker_id != worker_id:
            raise RequestRejected(ErrorCode.INVALID, "a worker reports only its own batches")

    async def _on_certificates_request(self, peer: Any, request: CertificatesRequest) -> CertificatesResponse:
        return _bounded_response(self.store.get_many("certificates", list(request.digests)))

    async def _on_fetch_certificates(self, peer: Any, request: FetchCertificates) -> CertificatesResponse:
        rows = self.store.items("certificates_by_round", start=round_key(request.after_round + 1),
                               limit=request.max_items)
        return _bounded_response(self.store.get_many("certificates", [digest for _, digest in rows]))

    # -- observability -------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        core = self.core
        return {
            "role": "primary",
            "authority": self.name.hex(),
            "round": self.proposer.round,
            "last_proposed": self.proposer.last_proposed,
            "headers_proposed": self.proposer.headers_proposed,
            "dag_round": core.dag.highest_round,
            "gc_round": core.gc_round,
            "consensus": self.consensus.name,
            "committed_round": self.consensus.state.last_committed_round,
            "consensus_index": self.consensus_index,
            "certificates": core.counters["certificates_accepted"],
            "votes_cast": core.counters["votes_cast"],
            "certificates_formed": core.counters["certificates_formed"],
            "pending_digests": self.proposer.pending_digests,
            "fetching": self.fetcher.wanted,
            "counters": dict(core.counters),
            "peers": self.manager.snapshot(),
        }


def _bounded_response(encoded: list[bytes | None]) -> CertificatesResponse:
    certificates, size = [], 0
    for value in encoded:
        if value is None:
            continue
        size += len(value)
        if size > MAX_RESPONSE_BYTES:
            break
        certificates.append(messages.decode(messages.tag_of(Certificate), value))
    return CertificatesResponse(tuple(certificates))

