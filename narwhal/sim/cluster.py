"""N simulated validators in one process: real primaries, real workers and consensus over
:mod:`narwhal.sim.network` (issue 14).

Each :class:`SimValidator` runs a real :class:`~narwhal.primary.node.PrimaryNode` (core,
proposer, certificate fetcher, state sync, Bullshark or Tusk, the ordered output) and a
real :class:`~narwhal.worker.node.WorkerNode` (intake, batch maker, quorum waiter,
receiver, batch server, synchronizer, reporter), each on its own
:class:`~narwhal.sim.store.MemoryStore`, with the loop's (virtual) clock and random
sources seeded from the run's seed. Keys are derived from the seed too. A load client per
validator submits a transaction every ``tx_interval`` seconds to its worker.

Primary to primary and worker to worker cross the simulated links (``narwhal.sim.ports``);
a primary and its own worker talk directly (one machine). A batch is *acknowledged* when
its author's primary has stored the worker's ``OurBatch`` report (until then the worker
keeps it and replicates it again after a crash): the checker wants every acknowledged
batch in every output. A crash stops a validator's primary and worker at once; both
restart from their stores.

Every delivery, request and fault is folded into a SHA-256 ``trace``: the same seed gives
the same trace, bit for bit (``tests/sim/test_determinism.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
from collections.abc import Awaitable
from typing import Any

import attrs

from narwhal import messages
from narwhal.config import Committee, Parameters
from narwhal.config.network import PeerInfo
from narwhal.consensus.records import decode_output_record
from narwhal.crypto import AuthorityKeys, NetworkKeyPair, SigningKeyPair
from narwhal.errors import NarwhalError
from narwhal.messages import (
    Batch,
    Certificate,
    CertificatesRequest,
    CheckpointRequest,
    Cleanup,
    Encoded,
    FetchCertificates,
    Header,
    OthersBatch,
    OurBatch,
    RequestBatches,
    SubmitTransactions,
    Synchronize,
    Vote,
)
from narwhal.ports import LOOP_CLOCK
from narwhal.primary.node import PrimaryNode
from narwhal.sim.loop import SkewedClock, true_now
from narwhal.sim.network import LinkModel, Links
from narwhal.sim.ports import PrimaryPort, SimPeer, WorkerPort
from narwhal.sim.store import MemoryStore
from narwhal.worker.node import WorkerNode

__all__ = ["OutputEntry", "SimCluster", "SimValidator"]


WORKER_ID = 0
#: The simulated validators' parameters: a header every 0.2 s at most (one batch is enough),
#: and a GC depth of 20 rounds (~4 s here, against 50 by default): a certificate no later
#: one references is proposed again at the GC horizon (the latency tail of issue 16), so
#: the horizon bounds how long an acknowledged batch can take once faults are healed, and
#: a short one exercises garbage collection in every run.
#: Batches of ~10 transactions of 100 bytes, sealed at 0.2 s at the latest.
SIM_PARAMETERS: dict[str, Any] = {"max_header_delay": 0.2, "header_size": 1, "gc_depth": 20,
                                  "batch_size": 1_000, "max_batch_delay": 0.2}
#: Bytes of each load transaction.
TX_SIZE = 100


@attrs.frozen
class OutputEntry:
    """One index of a validator's ordered output."""

    index: int
    round: int
    author: bytes
    certificate: bytes
    batches: tuple[bytes, ...]


def seeded_keys(seed: int, index: int) -> AuthorityKeys:
    """Validator ``index``'s keys, derived from the run's seed (never ``os.urandom``)."""
    def derive(label: str) -> bytes:
        return hashlib.sha256(f"narwhal-sim/{seed}/{index}/{label}".encode()).digest()
    return AuthorityKeys(SigningKeyPair(derive("signing")), NetworkKeyPair(derive("primary")),
                         [NetworkKeyPair(derive("worker-0"))])


class SimValidator:
    """One validator: its keys and two durable stores, and the running primary and worker
    (None while crashed)."""

    def __init__(self, cluster: SimCluster, index: int, keys: AuthorityKeys) -> None:
        self.cluster, self.index, self.keys = cluster, index, keys
        self.name = keys.name
        authority = cluster.committee.authorities[self.name]
        self.primary_key = authority.primary.network_key
        self.worker_key = authority.workers[WORKER_ID].network_key
        self.store = MemoryStore()  # the primary's
        self.worker_store = MemoryStore()
        self.rng = random.Random(f"{cluster.seed}/{index}/network")
        self.node: PrimaryNode | None = None
        self.worker: WorkerNode | None = None
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()  # its sends and its load
        self.submitted = 0
        self.starts = 0
        #: This validator's own clock (its machine's: kept across restarts); true time
        #: unless the run skews it.
        self.clock = SkewedClock()

    @property
    def up(self) -> bool:
        return self.node is not None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start (or restart, from the stores) the primary, the worker and the load, on the
        validator's clock (their tasks keep it)."""
        with self.clock.current():
            self._start()

    def _start(self) -> None:
        assert self.node is None
        self.starts += 1
        cluster = self.cluster
        rng = random.Random(f"{cluster.seed}/{self.index}/primary/{self.starts}")
        self.node = PrimaryNode(name=self.name, signer=self.keys.signing,
                                committee=cluster.committee, parameters=cluster.parameters,
                                store=self.store, network=PrimaryPort(cluster, self.index),
                                rng=rng, clock=LOOP_CLOCK)
        self.node.restore()
        self._task = asyncio.ensure_future(self.node.run())
        self.worker = WorkerNode(name=self.name, worker_id=WORKER_ID, committee=cluster.committee,
                                 parameters=cluster.parameters, store=self.worker_store,
                                 network=WorkerPort(cluster, self.index), clock=LOOP_CLOCK,
                                 rng=random.Random(f"{cluster.seed}/{self.index}/worker/{self.starts}"))
        self.worker.start()
        self.spawn(self._load())

    async def crash(self) -> None:
        """``kill -9``: every task of this validator stops; the stores stay."""
        node, worker, self.node, self.worker = self.node, self.worker, None, None
        tasks = [t for t in (self._task, *self._tasks) if t is not None]
        self._task, self._tasks = None, set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if worker is not None:
            await worker.stop()
        if node is not None:
            await node.close()

    def spawn(self, coroutine: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- the load, and the messages between the validator's own primary and worker ------------

    async def _load(self) -> None:
        """A client: one transaction every ``tx_interval`` while the run is sealing."""
        cluster, client = self.cluster, SimPeer(PeerInfo("client", b"", "client"))
        while cluster.sealing:
            await asyncio.sleep(cluster.tx_interval)
            worker = self.worker
            if worker is None or not cluster.sealing:
                continue
            self.submitted += 1
            tx = f"tx/{self.index}/{self.submitted}/".encode().ljust(TX_SIZE, b".")
            with contextlib.suppress(NarwhalError):  # refused (backpressure): not sent
                await worker.on_submit(client, SubmitTransactions((tx,)))

    async def to_primary(self, message: OurBatch | OthersBatch) -> None:
        """A report of our worker; acknowledged once the primary stored it."""
        node = self.node
        assert node is not None  # a crash stops the worker with the primary
        ours = isinstance(message, OurBatch)
        await node.on_batch(message.digest, message.worker_id, ours=ours,
                            transactions=message.transactions)
        if ours:
            self.cluster.acknowledged[message.digest] = self.index

    async def to_worker(self, message: Any) -> Any:
        """Our primary's ``Synchronize`` or ``Cleanup``, to our worker."""
        worker = self.worker
        if worker is None:
            raise ConnectionError("our worker is down")
        peer = SimPeer(PeerInfo("primary", self.primary_key, "primary", self.name))
        if isinstance(message, Synchronize):
            return await worker.on_synchronize(peer, message)
        if isinstance(message, Cleanup):
            return await worker.on_cleanup(peer, message)
        raise TypeError(f"a primary does not send {type(message).__name__} to its worker")

    async def worker_receives(self, sender: int, message: Any) -> Any:
        """A peer worker's ``Batch`` or ``RequestBatches``, across the link."""
        self.cluster.record("worker", sender, self.index, type(message).__name__,
                            _digest(message))
        worker = self.worker
        if worker is None:
            raise ConnectionError("worker down")  # transient: the sender retries
        source = self.cluster.validators[sender]
        peer = SimPeer(PeerInfo("worker", source.worker_key, "worker", source.name, WORKER_ID))
        if isinstance(message, Batch):
            return await worker.on_batch(peer, message)
        if isinstance(message, RequestBatches):
            answer: Encoded = await worker.on_request_batches(peer, message)
            return messages.decode(answer.tag, answer.body)
        raise TypeError(f"a worker does not send {type(message).__name__} to a worker")

    # -- what it output ------------------------------------------------------------------------

    def output(self) -> list[OutputEntry]:
        entries = []
        for _, blob in self.store.items("output"):
            index, round_, author, digest, payload = decode_output_record(blob)
            entries.append(OutputEntry(index, round_, author, digest, tuple(d for d, _ in payload)))
        return entries


class SimCluster:
    """``n`` validators over simulated links (see the module docstring)."""

    def __init__(self, *, seed: int, n: int = 4, link: LinkModel = LinkModel(),  # noqa: B008
                 tx_interval: float = 0.02, consensus: str = "bullshark",
                 **parameters: Any) -> None:
        self.seed = seed
        self.rng = random.Random(f"{seed}/cluster")
        keys = [seeded_keys(seed, i) for i in range(n)]
        self.committee = Committee.local([k.public() for k in keys], 1)
        self.parameters = Parameters(**{**SIM_PARAMETERS, "consensus": consensus, **parameters})
        self.validators = [SimValidator(self, i, k) for i, k in enumerate(keys)]
        self.by_name = {v.name: v for v in self.validators}
        self.by_worker_key = {v.worker_key: v for v in self.validators}
        self.links = Links(n, random.Random(f"{seed}/links"), link)
        self.tx_interval = tx_interval
        #: The clients submit while this is set (the run's last phase clears it).
        self.sealing = True
        #: Batches acknowledged (their author's primary stored the report): digest -> author.
        self.acknowledged: dict[bytes, int] = {}
        #: The index of a Byzantine validator (None: all honest). Its primary runs the
        #: honest code, but what it sends is changed by byzantine_sends: with
        #: ``equivocates``, its headers reach half of the others as twins (equivocation)
        #: and its certificates never reach one of them (withholding); with ``jams``, one
        #: honest validator also gets headers naming made-up parents (a fetcher jam); with
        #: ``forges``, everyone also gets forged certificates, votes for headers they never
        #: proposed and replayed headers (:meth:`forgeries`).
        self.byzantine: int | None = None
        self.equivocates = True
        self.jams = self.forges = False
        self.twins = self.withheld = self.jam_headers = self.forged = 0
        #: The Byzantine validator's latest real headers by round (replayed by forgeries).
        self._headers: dict[int, Header] = {}
        self._trace = hashlib.sha256()
        self.events = 0
        #: Handler failures at a receiver (a rejected message): kind -> count.
        self.rejections: dict[str, int] = {}

    # -- tracing and delivery ----------------------------------------------------------------

    def record(self, *fields: Any) -> None:
        now = true_now()
        self._trace.update(repr((round(now, 9), *fields)).encode())
        self.events += 1

    @property
    def trace_hash(self) -> str:
        return self._trace.hexdigest()

    def spawn(self, owner: int, coroutine: Awaitable[Any]) -> asyncio.Task[Any]:
        return self.validators[owner].spawn(coroutine)

    async def deliver(self, sender: int, target: SimValidator, message: Any) -> None:
        node = target.node
        self.record("deliver", sender, target.index, type(message).__name__, _digest(message))
        if node is None:
            return
        author = self.validators[sender].name
        try:
            if isinstance(message, Header):
                await node.on_header(author, message)
            elif isinstance(message, Vote):
                await node.on_vote(author, message)
            elif isinstance(message, Certificate):
                await node.on_certificate(author, message)
        except Exception as exc:  # noqa: BLE001 - a refusal is the receiver's answer
            kind = type(exc).__name__
            self.rejections[kind] = self.rejections.get(kind, 0) + 1

    async def answer(self, sender: int, target: SimValidator, message: Any) -> Any:
        node = target.node
        self.record("request", sender, target.index, type(message).__name__)
        if node is None:
            await asyncio.sleep(3600)  # a crashed peer never answers: the caller times out
            raise AssertionError("unreachable")
        if isinstance(message, CheckpointRequest):
            return await node.checkpoint_at_or_after(message.min_round)
        if isinstance(message, FetchCertificates):
            answer = await node.certificates_after(message.after_round, message.max_items)
        else:
            assert isinstance(message, CertificatesRequest)
            answer = await node.certificates_by_digest(list(message.digests))
        return messages.decode(answer.tag, answer.body)  # what the requester's codec sees

    def byzantine_sends(self, message: Any, receiver: int) -> list[Any]:
        """What the Byzantine validator sends ``receiver`` instead of ``message``: twins of
        its headers (:meth:`equivocate`), and none of its certificates to the last honest
        validator (withholding: that one must fetch them when later certificates name them
        as parents)."""
        if isinstance(message, Header):
            sent = self.equivocate(message, receiver) if self.equivocates else [message]
            if self.jams and receiver == self.honest()[len(self.honest()) // 2].index:
                sent.insert(0, self.jam(message))
            if self.forges:
                sent += self.forgeries(message, receiver)
            return sent
        if isinstance(message, Certificate) and self.equivocates \
                and receiver == self.honest()[-1].index:
            self.withheld += 1
            return []
        return [message]

    def forgeries(self, header: Header, receiver: int) -> list[Any]:
        """What a Byzantine validator can send that no honest one would, after each of its
        headers: a certificate of it whose honest votes are made up (bad signatures), a
        certificate of a round far ahead, a vote for a header ``receiver`` never proposed,
        and its previous header again (a replay). Each must be refused or ignored, at
        the cost of a signature check at most, and change nothing."""
        def made_up(label: str, size: int = 64) -> bytes:
            digest = hashlib.sha512(f"forged/{self.seed}/{header.round}/{label}".encode()).digest()
            return digest[:size]
        honest = sorted(v.name for v in self.honest())
        votes = tuple((name, made_up(name.hex())) for name in honest)
        far = Header(header.author, header.round + 1_000, (), header.parents, (), header.signature)
        target = self.validators[receiver].name
        forged: list[Any] = [
            Certificate(header, votes), Certificate(far, votes),
            Vote(made_up("digest", 32), header.round, target, header.author, made_up("vote"))]
        previous = max((r for r in self._headers if r < header.round), default=None)
        if previous is not None:
            forged.append(self._headers[previous])
        self._headers = {r: h for r, h in self._headers.items() if r >= header.round - 1}
        self._headers[header.round] = header
        self.forged += len(forged)
        return forged

    def jam(self, header: Header) -> Header:
        """Issue 12's fetcher jam: a header of ``JAM_AHEAD`` rounds later, signed, naming as
        many made-up parent certificates as the committee has authorities (more are refused
        unverified). Its receiver parks it and wants those parents, which nobody has; its
        fetcher must still catch up on the real ones (the checker's liveness rules)."""
        round_ = header.round + JAM_AHEAD
        parents = tuple(sorted(hashlib.sha256(f"jam/{self.seed}/{round_}/{i}".encode()).digest()
                               for i in range(len(self.validators))))
        unsigned = Header(header.author, round_, (), parents, (), bytes(64))
        self.jam_headers += 1
        keys = self.by_name[header.author].keys
        return Header(header.author, round_, (), parents, (), keys.signing.sign(unsigned.digest()))

    def equivocate(self, header: Header, receiver: int) -> list[Header]:
        """What the Byzantine validator sends ``receiver`` instead of its own ``header``
        (with a payload): the upper half of the others get a twin (same round and
        parents, no payload, signed), the first of the others gets both, in that order
        (so an honest validator holds the two signed headers: evidence), the rest the
        header."""
        others = [v.index for v in self.validators if v.index != self.byzantine]
        if not header.payload or receiver not in others[len(others) // 2:] + others[:1]:
            return [header]
        keys = self.by_name[header.author].keys
        unsigned = Header(header.author, header.round, (), header.parents, (), bytes(64))
        twin = Header(header.author, header.round, (), header.parents, (),
                      keys.signing.sign(unsigned.digest()))
        self.twins += 1
        return [header, twin] if receiver == others[0] else [twin]

    def honest(self) -> list[SimValidator]:
        return [v for v in self.validators if v.index != self.byzantine]

    # -- running -------------------------------------------------------------------------------

    def start(self) -> None:
        for validator in self.validators:
            validator.start()

    async def stop(self) -> None:
        for validator in self.validators:
            await validator.crash()

    def outputs(self) -> dict[int, list[OutputEntry]]:
        return {v.index: v.output() for v in self.validators}

    def commits(self) -> int:
        return max((len(o) for o in self.outputs().values()), default=0)


#: How many rounds ahead of its real header the jamming validator's made-up one is.
JAM_AHEAD = 3


def _digest(message: Any) -> str:
    digest = getattr(message, "digest", None)
    return digest().hex()[:16] if callable(digest) else ""
