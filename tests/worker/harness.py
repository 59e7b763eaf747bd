"""Test harness: a local committee of N authorities x 1 worker on real 127.0.0.1 sockets.

Every listening socket (primary, client, worker, transactions ports) is bound to port 0
*before* the committee is built, so every address is known and no test depends on a fixed
port. Real :class:`~narwhal.worker.Worker` objects run in the test's event loop, each with
its own sqlite store under ``tmp_path``; fake primaries (and fake peer workers, for hostile
input) are plain PeerManagers holding that endpoint's real committee key, so everything a
worker sends or receives crosses a Noise connection.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from narwhal import messages
from narwhal.config import Authority, Committee, Parameters, PrimaryInfo, WorkerInfo
from narwhal.crypto import AuthorityKeys
from narwhal.errors import ConnectionClosed
from narwhal.net.clients import connect_client
from narwhal.net.connection import Connection
from narwhal.net.network import PeerManager
from narwhal.net.retry import RetryConfig
from narwhal.net.rpc import Router
from narwhal.store import Store
from narwhal.wire.noise import HandshakePayload
from narwhal.worker import Worker

from ..net.cluster import bound_socket, eventually

__all__ = ["Cluster", "FakeEndpoint", "eventually", "fast_parameters", "submit"]

FAST_RETRY = RetryConfig(initial_interval=0.05, max_interval=0.3, multiplier=1.5,
                         randomization_factor=0.3)


def fast_parameters(**overrides: Any) -> Parameters:
    """Small batches, short delays and quick retries, so tests take milliseconds."""
    base: dict[str, Any] = {
        "batch_size": 10_000, "max_batch_delay": 0.05, "max_transaction_size": 2_000,
        "sync_retry_delay": 0.3, "sync_retry_nodes": 3, "retry": FAST_RETRY, "dial_retry": FAST_RETRY,
        "connect_timeout": 0.5, "request_timeout": 2.0, "handshake_timeout": 2.0,
        "keepalive_interval": 0.5, "idle_timeout": 5.0}
    return Parameters(**{**base, **overrides})


def address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


class FakeEndpoint:
    """Authority ``i``'s primary or worker 0, played by a bare PeerManager with that
    endpoint's committee key. A primary records the reports its worker sends it."""

    def __init__(self, cluster: Cluster, i: int, role: str, router: Router | None = None) -> None:
        keys, name = cluster.keys[i], cluster.keys[i].name
        self.cluster, self.index, self.role = cluster, i, role
        self.ours: list[messages.OurBatch] = []
        self.others: list[messages.OthersBatch] = []
        self.router = router or Router()
        if role == "primary":
            key, payload = keys.primary, HandshakePayload("primary", authority=name)
            peers = [p for p in cluster.committee.primary_peers(name) if p.role == "worker"]
            self.router.route(messages.OurBatch, self._record)
            self.router.route(messages.OthersBatch, self._record)
        else:
            key, payload = keys.workers[0], HandshakePayload("worker", authority=name, worker_id=0)
            peers = cluster.committee.worker_peers(name, 0)
        payload = HandshakePayload(payload.role, payload.authority, payload.worker_id,
                                   max_frame_size=cluster.parameters.max_frame_size)
        self.manager = PeerManager(
            local_static=key.private, local_public=key.public, local_payload=payload,
            network_id=cluster.committee.network_id(), peers=peers, router=self.router,
            config=cluster.parameters.network_config(), name=f"fake-{role}{i}")

    async def _record(self, peer: Any, message: Any) -> None:
        (self.ours if isinstance(message, messages.OurBatch) else self.others).append(message)

    @property
    def reported(self) -> set[bytes]:
        return {m.digest for m in self.ours + self.others}

    async def start(self) -> FakeEndpoint:
        await self.manager.start(sock=self.cluster.sockets[self.index][self.role])
        return self

    async def request(self, peer_index: int, message: Any, *, raw: tuple[int, bytes] | None = None) -> Any:
        """Send a request to authority ``peer_index``'s worker 0 and return the answer."""
        key = self.cluster.keys[peer_index].workers[0].public
        tag, body = raw or (messages.tag_of(message), messages.encode(message))
        for _ in range(20):  # a connection may lose the duplicate-connection tie-break
            conn = await self.manager.connection(key, timeout=5.0)
            try:
                return await conn.sink.request_raw(tag, body, timeout=5.0)
            except ConnectionClosed:
                await asyncio.sleep(0.05)
        raise AssertionError("no stable connection")


class Cluster:
    """N authorities x 1 worker; start any subset of workers and fake endpoints."""

    def __init__(self, tmp_path: Path, n: int = 4, parameters: Parameters | None = None) -> None:
        self.tmp_path = tmp_path
        self.parameters = parameters or fast_parameters()
        self.keys = [AuthorityKeys.generate(1) for _ in range(n)]
        self.sockets: list[dict[str, socket.socket]] = []
        authorities = {}
        for keys in self.keys:
            socks = {kind: bound_socket() for kind in ("primary", "client", "worker", "txs")}
            self.sockets.append(socks)
            authorities[keys.name] = Authority(1, PrimaryInfo(
                keys.primary.public, address(socks["primary"]), address(socks["client"])), [
                WorkerInfo(keys.workers[0].public, address(socks["worker"]), address(socks["txs"]))])
        self.committee = Committee(authorities)
        self.workers: dict[int, Worker] = {}
        self.stores: dict[int, Store] = {}
        self.fakes: list[FakeEndpoint] = []
        self.clients: list[Connection] = []

    def name(self, i: int) -> bytes:
        return self.keys[i].name

    def store(self, i: int) -> Store:
        if i not in self.stores:
            self.stores[i] = Store.open(self.tmp_path / f"worker{i}.db", synchronous="NORMAL")
        return self.stores[i]

    async def start_worker(self, i: int, **kwargs: Any) -> Worker:
        worker = Worker(self.keys[i], self.committee, self.parameters, 0, self.store(i), **kwargs)
        await worker.start(worker_sock=self.sockets[i]["worker"],
                           transactions_sock=self.sockets[i]["txs"])
        self.workers[i] = worker
        return worker

    async def up(self, workers: Iterable[int] = (0, 1, 2, 3), primaries: Iterable[int] = (0,),
                 ) -> tuple[dict[int, FakeEndpoint], dict[int, Worker]]:
        """Start fake primaries, then workers: ({i: primary}, {i: worker})."""
        fakes = {i: await self.start_primary(i) for i in primaries}
        return fakes, {i: await self.start_worker(i) for i in workers}

    async def start_primary(self, i: int) -> FakeEndpoint:
        fake = FakeEndpoint(self, i, "primary")
        self.fakes.append(fake)
        return await fake.start()

    async def start_fake_worker(self, i: int, router: Router) -> FakeEndpoint:
        fake = FakeEndpoint(self, i, "worker", router)
        self.fakes.append(fake)
        return await fake.start()

    async def client(self, i: int) -> Connection:
        host, port = self.sockets[i]["txs"].getsockname()[:2]
        conn = await connect_client(host, port, server_static=self.keys[i].workers[0].public,
                                    network_id=self.committee.network_id())
        self.clients.append(conn)
        return conn

    def holders(self, digest: bytes) -> set[int]:
        """Which authorities' stores hold ``digest``."""
        return {i for i, s in self.stores.items() if s.contains("batches", digest)}

    async def close(self) -> None:
        for conn in self.clients:
            await conn.aclose()
        for worker in self.workers.values():
            await worker.stop()
        for fake in self.fakes:
            await fake.manager.stop()
        for store in self.stores.values():
            await store.close()
        for socks in self.sockets:
            for sock in socks.values():
                sock.close()


async def submit(conn: Connection, txs: list[bytes]) -> Any:
    return await conn.sink.request(messages.SubmitTransactions(txs), timeout=10.0)


def reports(received: list[Any]) -> list[tuple[bytes, int]]:
    """(digest, worker id) of OurBatch/OthersBatch reports, ignoring the transaction count."""
    return [(m.digest, m.worker_id) for m in received]
