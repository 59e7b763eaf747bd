"""N simulated validators in one process: real primary cores and consensus, simulated
workers, over :mod:`narwhal.sim.network` (issue 14).

Each :class:`SimValidator` runs a real :class:`~narwhal.primary.node.PrimaryNode` (core,
proposer, certificate fetcher, state sync, Bullshark or Tusk, the ordered output) on a
:class:`~narwhal.sim.store.MemoryStore`, with the loop's (virtual) clock and a random
source seeded from the run's seed. Keys are derived from the seed too.

The workers are modelled, not run (a socket-free worker core is the next step of the
issue): each validator's worker seals a batch every ``batch_interval`` seconds, replicates
it to the other workers over the simulated links, and once 2f+1 workers hold it (ours
included) reports it to its primary as ours; that report returning is the batch's
*acknowledgement* (the primary stores it durably first, as the real one does). Batches of
other authorities are reported as they arrive; a ``Synchronize`` from the primary is
answered from what the worker holds, or fetched from a holder across the links. A worker
keeps what it holds across a crash (its store is durable); reports in flight at a crash are
sent again at the restart, as the real reporter does.

Every delivery and every output is folded into a SHA-256 ``trace``: the same seed gives the
same trace, bit for bit (``tests/sim/test_determinism.py``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import attrs

from narwhal import messages
from narwhal.config import Committee, Parameters
from narwhal.crypto import AuthorityKeys, NetworkKeyPair, SigningKeyPair
from narwhal.messages import (
    Certificate,
    CertificatesRequest,
    CheckpointRequest,
    Cleanup,
    FetchCertificates,
    Header,
    Synchronize,
    Vote,
)
from narwhal.ports import LOOP_CLOCK
from narwhal.primary.node import PrimaryNode, decode_output_record
from narwhal.sim.network import LinkModel, Links
from narwhal.sim.store import MemoryStore

__all__ = ["OutputEntry", "SimCluster", "SimValidator"]

log = logging.getLogger(__name__)

WORKER_ID = 0
#: The simulated validators' parameters: a header every 0.2 s at most (one batch is enough),
#: and a GC depth of 20 rounds (~4 s here, against 50 by default): a certificate no later
#: one references is proposed again at the GC horizon (the latency tail of issue 16), so
#: the horizon bounds how long an acknowledged batch can take once faults are healed, and
#: a short one exercises garbage collection in every run.
SIM_PARAMETERS: dict[str, Any] = {"max_header_delay": 0.2, "header_size": 1, "gc_depth": 20}


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


class _Handle:
    """What a reliable send returns: cancelling it stops the retries."""

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self._task = task

    def cancel(self) -> None:
        self._task.cancel()

    def done(self) -> bool:
        return self._task.done()


class _PrimaryPort:
    """One primary's network (``PrimaryNode``'s ``NodeNetwork``), over the links."""

    def __init__(self, cluster: SimCluster, me: int) -> None:
        self._cluster, self._me = cluster, me

    @property
    def others(self) -> list[bytes]:
        return [v.name for v in self._cluster.validators if v.index != self._me]

    async def broadcast(self, message: Any) -> list[Any]:
        return [await self.send(other, message) for other in self.others]

    async def send(self, authority: bytes, message: Any) -> _Handle:
        cluster = self._cluster
        target = cluster.by_name[authority]
        sent = [message]
        if self._me == cluster.byzantine and isinstance(message, Header):
            sent = cluster.equivocate(message, target.index)
        handles = [_Handle(cluster.spawn(self._me, cluster.links.send(
            self._me, target.index, _call(cluster.deliver, self._me, target, m),
            cluster.validators[self._me].rng))) for m in sent]
        return handles[0]

    async def to_workers(self, message: Any, worker_ids: Any = None) -> list[Any]:
        await self._cluster.validators[self._me].worker_message(message)
        return []

    async def request_worker(self, worker_id: int, message: Any, timeout: float) -> Any:
        await self._cluster.validators[self._me].worker_message(message)
        return None

    async def request(self, authority: bytes, message: Any, timeout: float) -> Any:
        cluster = self._cluster
        target = cluster.by_name[authority]
        return await cluster.links.request(
            self._me, target.index, lambda: cluster.answer(self._me, target, message), timeout)


class SimValidator:
    """One validator: its keys, durable store and worker state, and the running primary
    (None while crashed)."""

    def __init__(self, cluster: SimCluster, index: int, keys: AuthorityKeys) -> None:
        self.cluster, self.index, self.keys = cluster, index, keys
        self.name = keys.name
        self.store = MemoryStore()
        self.rng = random.Random(f"{cluster.seed}/{index}/network")
        self.node: PrimaryNode | None = None
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()  # its sends and background work
        #: The worker's durable state: batches held, and reports not yet acknowledged.
        self.held: dict[bytes, bytes] = {}  # digest -> author
        self.unreported: dict[bytes, bool] = {}  # digest -> ours
        self.sealed = 0
        self.starts = 0

    @property
    def up(self) -> bool:
        return self.node is not None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        assert self.node is None
        self.starts += 1
        rng = random.Random(f"{self.cluster.seed}/{self.index}/primary/{self.starts}")
        self.node = PrimaryNode(name=self.name, signer=self.keys.signing,
                                committee=self.cluster.committee,
                                parameters=self.cluster.parameters, store=self.store,
                                network=_PrimaryPort(self.cluster, self.index), rng=rng,
                                clock=LOOP_CLOCK)
        self.node.restore()
        self._task = asyncio.ensure_future(self.node.run())
        self.spawn(self._seal_batches())
        for digest, ours in list(self.unreported.items()):
            self.spawn(self._report(digest, ours))

    async def crash(self) -> None:
        """``kill -9``: every task of this validator stops; the store and the worker's
        durable state stay."""
        node, self.node = self.node, None
        tasks = [t for t in (self._task, *self._tasks) if t is not None]
        self._task, self._tasks = None, set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if node is not None:
            await node.close()

    def spawn(self, coroutine: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- the modelled worker -------------------------------------------------------------------

    async def _seal_batches(self) -> None:
        cluster = self.cluster
        while True:
            await asyncio.sleep(cluster.batch_interval)
            if not cluster.sealing:
                return
            self.sealed += 1
            digest = hashlib.sha256(f"batch/{cluster.seed}/{self.index}/{self.sealed}".encode()).digest()
            self.held[digest] = self.name
            cluster.batches[digest] = self.index
            self.spawn(self._replicate(digest))

    async def _replicate(self, digest: bytes) -> None:
        """To every other worker (reliably); ours once 2f+1 hold it."""
        cluster = self.cluster
        quorum = asyncio.Event()
        holders = [1]

        def stored() -> None:
            holders[0] += 1
            if holders[0] >= cluster.quorum:
                quorum.set()

        for other in cluster.validators:
            if other is not self:
                self.spawn(cluster.links.send(self.index, other.index,
                                              _call(other.receive_batch, digest, self.name, stored),
                                              self.rng))
        await quorum.wait()
        self.unreported[digest] = True
        await self._report(digest, True)

    async def receive_batch(self, digest: bytes, author: bytes, stored: Callable[[], None]) -> None:
        if digest not in self.held:
            self.held[digest] = author
            self.unreported[digest] = False
            if self.up:
                self.spawn(self._report(digest, False))
        stored()

    async def _report(self, digest: bytes, ours: bool) -> None:
        node = self.node
        if node is None:
            return  # sent again at the restart
        await node.on_batch(digest, WORKER_ID, ours=ours, transactions=1)
        self.unreported.pop(digest, None)
        if ours:
            self.cluster.acknowledged.add(digest)

    async def worker_message(self, message: Any) -> None:
        """Our primary's ``Synchronize`` (or ``Cleanup``, ignored) to our worker."""
        if isinstance(message, Cleanup) or not isinstance(message, Synchronize):
            return
        for digest in message.digests:
            if digest in self.held:
                self.spawn(self._report(digest, False))
            elif (holder := self.cluster.batches.get(digest)) is not None:
                self.spawn(self._fetch(digest, holder))

    async def _fetch(self, digest: bytes, holder: int) -> None:
        """Fetch a batch from its author's worker (retried while the link is cut)."""
        cluster = self.cluster
        source = cluster.validators[holder]
        await cluster.links.send(holder, self.index, _call(
            self.receive_batch, digest, source.name, lambda: None), self.rng)

    # -- what it output ------------------------------------------------------------------------

    def output(self) -> list[OutputEntry]:
        entries = []
        for _, blob in self.store.items("output"):
            index, round_, author, digest, payload = decode_output_record(blob)
            entries.append(OutputEntry(index, round_, author, digest, tuple(d for d, _ in payload)))
        return entries


def _call(handler: Callable[..., Awaitable[Any]], *args: Any) -> Callable[[], Awaitable[Any]]:
    return lambda: handler(*args)


class SimCluster:
    """``n`` validators over simulated links (see the module docstring)."""

    def __init__(self, *, seed: int, n: int = 4, link: LinkModel = LinkModel(),  # noqa: B008
                 batch_interval: float = 0.2, consensus: str = "bullshark",
                 **parameters: Any) -> None:
        self.seed = seed
        self.rng = random.Random(f"{seed}/cluster")
        keys = [seeded_keys(seed, i) for i in range(n)]
        self.committee = Committee.local([k.public() for k in keys], 1)
        self.parameters = Parameters(**{**SIM_PARAMETERS, "consensus": consensus, **parameters})
        self.validators = [SimValidator(self, i, k) for i, k in enumerate(keys)]
        self.by_name = {v.name: v for v in self.validators}
        self.links = Links(n, random.Random(f"{seed}/links"), link)
        self.batch_interval = batch_interval
        #: The workers seal new batches while this is set (the run's last phase clears it).
        self.sealing = True
        self.quorum = self.committee.quorum_threshold()
        #: Every batch sealed (digest -> author index), and those acknowledged.
        self.batches: dict[bytes, int] = {}
        self.acknowledged: set[bytes] = set()
        #: The index of a Byzantine validator (None: all honest). Its primary runs the
        #: honest code, but every header it proposes reaches the upper half of the others
        #: as a twin: same round and parents, no payload, signed (equivocation).
        self.byzantine: int | None = None
        self.twins = 0
        self._trace = hashlib.sha256()
        self.events = 0
        #: Handler failures at a receiver (a rejected message): kind -> count.
        self.rejections: dict[str, int] = {}

    # -- tracing and delivery ----------------------------------------------------------------

    def record(self, *fields: Any) -> None:
        now = asyncio.get_running_loop().time()
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
        unsigned = Header(header.author, header.round, (), header.parents, bytes(64))
        twin = Header(header.author, header.round, (), header.parents,
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


def _digest(message: Any) -> str:
    digest = getattr(message, "digest", None)
    return digest().hex()[:16] if callable(digest) else ""
