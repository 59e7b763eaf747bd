"""Deterministic in-memory simulation of N primaries: no sockets, same protocol code.

Each :class:`SimNode` is a real :class:`~narwhal.primary.node.PrimaryNode` with an
in-memory store and a :class:`SimNetwork` that delivers messages to the other nodes'
handlers as asyncio tasks. Workers are simulated by marking batches available at every
node. A node can be "down" (drops what it would receive and send).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import attrs

from narwhal import messages
from narwhal.config import Committee, Parameters
from narwhal.crypto import AuthorityKeys
from narwhal.messages import (
    Certificate,
    CertificatesRequest,
    CheckpointRequest,
    FetchCertificates,
    Header,
    Vote,
)
from narwhal.primary.node import PrimaryNode
from narwhal.sim.store import MemoryStore


class Handle:
    def __init__(self, task: asyncio.Task) -> None:
        self._task = task

    def cancel(self) -> None:
        self._task.cancel()

    def done(self) -> bool:
        return self._task.done()


class SimNetwork:
    """One node's view of the simulated network."""

    def __init__(self, sim: Simulation, me: bytes) -> None:
        self.sim = sim
        self.me = me
        self.to_worker_log: list[Any] = []
        self.sent: list[tuple[bytes, Any]] = []

    @property
    def others(self) -> list[bytes]:
        return [n for n in self.sim.names if n != self.me]

    async def broadcast(self, message):
        return [await self.send(other, message) for other in self.others]

    async def send(self, authority, message):
        self.sent.append((authority, message))
        return Handle(asyncio.ensure_future(self.sim.deliver(self.me, authority, message)))

    async def to_workers(self, message, worker_ids=None):
        self.to_worker_log.append(message)
        return []

    async def request_worker(self, worker_id, message, timeout):
        self.to_worker_log.append(message)
        if self.me in self.sim.down:
            raise TimeoutError("our worker is down with us")

    async def request(self, authority, message, timeout):
        target = self.sim.nodes[authority]
        if self.sim.down & {authority, self.me}:
            raise TimeoutError("peer down")
        if isinstance(message, CheckpointRequest):
            return await target.node.checkpoint_at_or_after(message.min_round)
        if isinstance(message, FetchCertificates):
            answer = await target.node.certificates_after(message.after_round, message.max_items)
        else:
            assert isinstance(message, CertificatesRequest)
            answer = await target.node.certificates_by_digest(list(message.digests))
        return messages.decode(answer.tag, answer.body)  # what the requester's codec sees


@attrs.define
class SimNode:
    keys: AuthorityKeys
    store: MemoryStore
    network: SimNetwork
    node: PrimaryNode
    task: asyncio.Task | None = None
    errors: list[Exception] = attrs.field(factory=list)


class Simulation:
    def __init__(self, n: int = 4, seed: int = 0, **parameters: Any) -> None:
        #: Seeds each node's random source (which peers its fetcher asks). Keys still come
        #: from os.urandom and time is real, so a run is not replayable yet (issue 14).
        self.seed = seed
        self.keys = [AuthorityKeys.generate(1) for _ in range(n)]
        self.committee = Committee.local([k.public() for k in self.keys], 1)
        self.parameters = Parameters(**{"max_header_delay": 0.02, **parameters})
        self.names = [k.name for k in self.keys]
        self.down: set[bytes] = set()
        self.drop: Any = lambda sender, receiver, message: False
        self.nodes: dict[bytes, SimNode] = {}
        for keys in self.keys:
            self.nodes[keys.name] = self._make(keys, MemoryStore())

    def _make(self, keys: AuthorityKeys, store: MemoryStore) -> SimNode:
        network = SimNetwork(self, keys.name)
        rng = random.Random(f"{self.seed}/{self.keys.index(keys)}")
        node = PrimaryNode(name=keys.name, signer=keys.signing, committee=self.committee,
                           parameters=self.parameters, store=store, network=network, rng=rng)
        return SimNode(keys, store, network, node)

    async def deliver(self, sender: bytes, receiver: bytes, message: Any) -> None:
        """Reliable delivery, like ReliableNetwork: retried while either side is down,
        until delivered or the send's handle is cancelled."""
        while self.down & {sender, receiver}:
            await asyncio.sleep(0.02)
        if self.drop(sender, receiver, message):
            return  # lost after being acknowledged (e.g. the receiver crashed right after)
        target = self.nodes[receiver]
        try:
            if isinstance(message, Header):
                await target.node.on_header(sender, message)
            elif isinstance(message, Vote):
                await target.node.on_vote(sender, message)
            elif isinstance(message, Certificate):
                await target.node.on_certificate(sender, message)
        except Exception as exc:  # noqa: BLE001 - recorded: tests assert on rejections
            target.errors.append(exc)

    def start(self, name: bytes | None = None) -> None:
        for sim_node in ([self.nodes[name]] if name else self.nodes.values()):
            sim_node.node.restore()
            sim_node.task = asyncio.ensure_future(sim_node.node.run())

    async def stop(self, name: bytes | None = None) -> None:
        for sim_node in ([self.nodes[name]] if name else self.nodes.values()):
            if sim_node.task is not None:
                sim_node.task.cancel()
                await asyncio.gather(sim_node.task, return_exceptions=True)
                sim_node.task = None
            await sim_node.node.close()

    async def restart(self, name: bytes) -> None:
        """Crash and restart ``name`` from its store (memory lost, store kept)."""
        await self.stop(name)
        old = self.nodes[name]
        self.nodes[name] = self._make(old.keys, old.store)
        self.start(name)

    async def make_batch(self, author_index: int, digest: bytes, worker_id: int = 0,
                         only: Any = None) -> None:
        """Simulate a worker: the batch is stored everywhere (or at the nodes ``only``), the
        author's quorum reached."""
        for name, sim_node in self.nodes.items():
            if only is None or name in only:
                await sim_node.node.on_batch(digest, worker_id, ours=name == self.names[author_index],
                                             transactions=10)

    def rounds(self) -> list[int]:
        return [n.node.core.dag.highest_round for n in self.nodes.values()]

    async def run_until(self, predicate, timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() > deadline:
                raise AssertionError(f"simulation did not reach the condition; rounds={self.rounds()}")
            await asyncio.sleep(0.01)
