"""A Byzantine validator for tests: one committee authority's REAL keys on our own network layer.

Why our own layer (``narwhal.net``: ``PeerManager``, ``RpcChannel``) and not a mock: the
honest nodes must see what a malicious validator can really do, i.e. complete Noise IK
handshakes as a committee member and then send anything. :class:`ByzantinePeer` runs one
``PeerManager`` for the authority's primary and one per worker, with the committee's peer
directories, so the honest nodes dial it and it dials them like any validator.

Left alone it is *passive*: it acknowledges whatever the honest nodes send it (headers,
votes, certificates, batches; "don't have it" to fetches) and originates nothing, like an
honest node that never proposes. That is the attack-free baseline: the three honest nodes
of a committee of four make progress on their own (2f+1 = 3). Attacks then use:

- what it learns: the certificates honest nodes broadcast (:meth:`parents_for` builds a
  valid header on them), the honest batches their workers replicate, the headers they
  propose (:attr:`headers`);
- builders signed with the real authority key: :meth:`header`, :meth:`vote`,
  :meth:`certificate` (and votes collected for its own headers: :meth:`certify`);
- senders: :meth:`request` (one request, its answer or the error), :meth:`send_frame`
  (any frame kind, request id, tag and body on the live link), :meth:`connection`.

Everything runs on the event loop of whoever calls :meth:`start` (the test harness runs it
in a thread of its own: :class:`tests.adversarial.cluster.LoopThread`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections import OrderedDict
from typing import Any

import attrs

from narwhal import messages
from narwhal.config import Committee, Parameters, parse_address
from narwhal.crypto import AuthorityKeys
from narwhal.messages import (
    Batch,
    BatchesResponse,
    Certificate,
    CertificatesRequest,
    CertificatesResponse,
    FetchCertificates,
    Header,
    RequestBatches,
    Vote,
)
from narwhal.net.connection import Connection
from narwhal.net.network import PeerManager
from narwhal.net.rpc import Router, channel_of
from narwhal.wire.frames import FrameKind
from narwhal.wire.noise import HandshakePayload

__all__ = ["PRIMARY", "ByzantinePeer", "encoded", "fake_digest", "send_plaintext"]

log = logging.getLogger(__name__)

#: The role name of the primary link in :meth:`ByzantinePeer.request` and friends (workers
#: are named by their worker id).
PRIMARY = "primary"
#: Rounds of honest certificates and headers remembered (enough to build on the newest).
REMEMBERED_ROUNDS = 20
#: Honest batch digests remembered (a payload that honest workers hold).
REMEMBERED_BATCHES = 1_000


def fake_digest() -> bytes:
    """32 random bytes: a digest nobody holds anything for."""
    return os.urandom(32)


class ByzantinePeer:
    """Authority ``keys.name`` of ``committee``, run by the test (see the module docstring).

    ``listen``: bind the committee's addresses of the authority (the honest nodes then dial
    us) or, for a second holder of the same keys (a cloned key), ephemeral ports: it only
    dials out."""

    def __init__(self, keys: AuthorityKeys, committee: Committee, parameters: Parameters, *,
                 listen: bool = True, name: str = "byzantine") -> None:
        self.keys, self.committee, self.parameters = keys, committee, parameters
        self.name = keys.name
        self.listen = listen
        self.label = name
        self.honest = [a for a in committee.authorities_sorted() if a != self.name]
        #: Certificates by round, then author (honest ones learnt, ours made).
        self.certificates: OrderedDict[int, dict[bytes, Certificate]] = OrderedDict()
        #: Headers the honest nodes proposed, by round then author.
        self.headers: OrderedDict[int, dict[bytes, Header]] = OrderedDict()
        #: Digests of honest batches our worker was sent (the honest workers hold them).
        self.batches: OrderedDict[bytes, None] = OrderedDict()
        #: Votes for our own headers, by header digest (see :meth:`certify`).
        self._votes: dict[bytes, dict[bytes, bytes]] = {}
        self._own_headers: dict[bytes, Header] = {}
        self._certified: dict[bytes, asyncio.Future[Certificate]] = {}
        self.managers: dict[str | int, PeerManager] = self._new_managers()

    def _new_managers(self) -> dict[str | int, PeerManager]:
        """One PeerManager per role, not started (a stopped one cannot start again: a
        stopped peer gets new ones, so an attack can run more than once)."""
        keys, committee, parameters, name = self.keys, self.committee, self.parameters, self.label
        managers: dict[str | int, PeerManager] = {}
        network = parameters.network_config()
        primary_router = Router()
        for cls, handler in ((Header, self._on_header), (Vote, self._on_vote),
                             (Certificate, self._on_certificate),
                             (CertificatesRequest, self._nothing_to_give),
                             (FetchCertificates, self._nothing_to_give)):
            primary_router.route(cls, handler)
        managers[PRIMARY] = PeerManager(
            local_static=keys.primary.private, local_public=keys.primary.public,
            local_payload=HandshakePayload("primary", authority=self.name,
                                           max_frame_size=parameters.max_frame_size),
            network_id=committee.network_id(), peers=committee.primary_peers(self.name),
            router=primary_router, config=network, name=f"{name}/primary")
        for worker_id in committee.worker_ids:
            worker_router = Router()
            worker_router.route(Batch, self._on_batch)
            worker_router.route(RequestBatches, self._no_batches)
            managers[worker_id] = PeerManager(
                local_static=keys.workers[worker_id].private,
                local_public=keys.workers[worker_id].public,
                local_payload=HandshakePayload("worker", authority=self.name, worker_id=worker_id,
                                               max_frame_size=parameters.max_frame_size),
                network_id=committee.network_id(),
                peers=committee.worker_peers(self.name, worker_id), router=worker_router,
                config=network, name=f"{name}/worker{worker_id}")
        return managers

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        me = self.committee.authorities[self.name]
        for role, manager in self.managers.items():
            if not self.listen:
                await manager.start("127.0.0.1", 0)
                continue
            address = (me.primary.address if role == PRIMARY
                       else me.workers[int(role)].worker_address)
            host, port = parse_address(address)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            await manager.start(sock=sock)

    async def stop(self) -> None:
        await asyncio.gather(*(m.stop() for m in self.managers.values()), return_exceptions=True)
        self.managers = self._new_managers()

    async def connected(self, timeout: float = 30.0) -> None:
        """Wait until every link to the honest nodes is up."""
        async with asyncio.timeout(timeout):
            for role in self.managers:
                for authority in self.honest:
                    await self.connection(role, authority, timeout)

    # -- what the honest nodes send us (we acknowledge everything) -----------------------------

    async def _on_header(self, peer: Any, header: Header) -> None:
        _remember(self.headers, header.round, header.author, header)

    async def _on_certificate(self, peer: Any, certificate: Certificate) -> None:
        _remember(self.certificates, certificate.header.round, certificate.header.author,
                  certificate)

    async def _on_vote(self, peer: Any, vote: Vote) -> None:
        votes = self._votes.get(vote.header_digest)
        if votes is None:
            return
        votes[vote.author] = vote.signature
        header = self._own_headers[vote.header_digest]
        weight = sum(self.committee.stake(a) for a in votes)
        waiter = self._certified.get(vote.header_digest)
        if weight >= self.committee.quorum_threshold() and waiter is not None and not waiter.done():
            waiter.set_result(self.certificate(header, votes))

    async def _nothing_to_give(self, peer: Any, request: Any) -> CertificatesResponse:
        return CertificatesResponse(())

    async def _on_batch(self, peer: Any, batch: Batch) -> None:
        self.batches[batch.digest()] = None
        while len(self.batches) > REMEMBERED_BATCHES:
            self.batches.popitem(last=False)

    async def _no_batches(self, peer: Any, request: RequestBatches) -> BatchesResponse:
        return BatchesResponse((), tuple(request.digests))

    # -- what we know ----------------------------------------------------------------------------

    @property
    def highest_round(self) -> int:
        """The highest round of which we hold a quorum of certificates (0: none yet)."""
        quorum = self.committee.quorum_threshold()
        full = [r for r, by_author in self.certificates.items()
                if sum(self.committee.stake(a) for a in by_author) >= quorum]
        return max(full, default=0)

    def parents_for(self, round_: int) -> tuple[bytes, ...]:
        """Digests of a quorum of round ``round_ - 1`` certificates (sorted), or () if we
        hold too few: the parents of a header the honest nodes will vote for."""
        held = self.certificates.get(round_ - 1, {})
        if sum(self.committee.stake(a) for a in held) < self.committee.quorum_threshold():
            return ()
        return tuple(sorted(c.digest() for c in held.values()))

    async def catch_up(self, authority: bytes) -> None:
        """Learn the newest certificates by asking ``authority`` (``FetchCertificates``), for
        a peer the honest nodes do not broadcast to (a second holder of the keys)."""
        after = max(0, self.highest_round - 2)
        while True:
            answer = await self.request(PRIMARY, authority, FetchCertificates(after, 1000))
            if not isinstance(answer, CertificatesResponse) or not answer.certificates:
                return
            for certificate in answer.certificates:
                _remember(self.certificates, certificate.header.round, certificate.header.author,
                          certificate)
            if len(answer.certificates) < 1000:
                return
            after = max(c.header.round for c in answer.certificates) - 1

    # -- signed messages -----------------------------------------------------------------------

    def header(self, round_: int, parents: tuple[bytes, ...] = (),
               payload: tuple[tuple[bytes, int], ...] = ()) -> Header:
        unsigned = Header(self.name, round_, tuple(sorted(payload)), tuple(sorted(parents)),
                          (), bytes(64))
        return attrs.evolve(unsigned, signature=self.keys.signing.sign(unsigned.digest()))

    def vote(self, header: Header) -> Vote:
        unsigned = Vote(header.digest(), header.round, header.author, self.name, bytes(64))
        return attrs.evolve(unsigned, signature=self.keys.signing.sign(unsigned.digest()))

    def certificate(self, header: Header, votes: dict[bytes, bytes]) -> Certificate:
        return Certificate(header, tuple(sorted(votes.items())))

    def collect_votes(self, header: Header) -> asyncio.Future[Certificate]:
        """Count the votes the honest nodes send for our ``header`` (ours included): the
        future is our certificate once they carry a quorum of stake."""
        digest = header.digest()
        self._own_headers[digest] = header
        self._votes[digest] = {self.name: self.vote(header).signature}
        future: asyncio.Future[Certificate] = asyncio.get_running_loop().create_future()
        self._certified[digest] = future
        while len(self._own_headers) > 4 * REMEMBERED_ROUNDS:
            old = next(iter(self._own_headers))
            for table in (self._own_headers, self._votes, self._certified):
                table.pop(old, None)  # type: ignore[attr-defined]
        return future

    # -- sending ---------------------------------------------------------------------------------

    async def connection(self, role: str | int, authority: bytes,
                         timeout: float = 5.0) -> Connection:
        """Our live link to ``authority``'s primary (``role`` ``"primary"``) or worker."""
        manager = self.managers[role]
        return await manager.connection(self._peer_key(role, authority), timeout=timeout)

    def _peer_key(self, role: str | int, authority: bytes) -> bytes:
        info = self.committee.authorities[authority]
        return info.primary.network_key if role == PRIMARY else info.workers[int(role)].network_key

    async def request(self, role: str | int, authority: bytes, message: Any,
                      timeout: float = 5.0) -> Any:
        """One request: the answer, or the exception it ended with (never raised)."""
        try:
            conn = await self.connection(role, authority, timeout)
            return await channel_of(conn).request(message, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 -- an attacker does not care why; the test reads the victim
            return exc

    async def broadcast(self, role: str | int, message: Any, timeout: float = 5.0,
                        to: list[bytes] | None = None) -> list[Any]:
        """:meth:`request` to every honest node (or those in ``to``) at once."""
        return await asyncio.gather(*(self.request(role, a, message, timeout)
                                      for a in (self.honest if to is None else to)))

    async def send_frame(self, role: str | int, authority: bytes, kind: FrameKind,
                         request_id: int, tag: int, body: bytes) -> Connection:
        """Queue any frame, as it is, on the live link (no answer awaited)."""
        conn = await self.connection(role, authority)
        await conn.wait_writable()
        conn.send_frame(kind, request_id, tag, body)
        return conn


def send_plaintext(conn: Connection, plaintext: bytes) -> bytes:
    """Encrypt ``plaintext`` (frames, or a frame header declaring any length) as the next
    Noise message(s) of ``conn`` and write it; return the ciphertext written. What is
    already queued goes first, so the nonces stay in order."""
    conn._flush()
    assert conn._cipher is not None and conn._transport is not None, f"{conn.name}: not open"
    sealed = b"".join(conn._cipher.encrypt_parts([plaintext]))
    conn._transport.write(sealed)
    return sealed


def _remember(table: OrderedDict[int, dict[bytes, Any]], round_: int, author: bytes,
              value: Any) -> None:
    table.setdefault(round_, {})[author] = value
    if len(table) > REMEMBERED_ROUNDS:
        for old in sorted(table)[:len(table) - REMEMBERED_ROUNDS]:
            del table[old]


def encoded(message: Any) -> tuple[int, bytes]:
    """``(tag, body)`` of ``message`` as it travels."""
    return messages.tag_of(message), messages.encode(message)
