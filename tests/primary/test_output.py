"""The ordered output service on real sockets: 4 Primaries + 4 Workers in one event loop.

Built on the worker harness (every port pre-bound, real Noise connections, sqlite stores);
each primary gets its own store next to its worker's.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from narwhal.client import OutputItem, OutputSubscriber, TransactionClient
from narwhal.errors import ErrorCode, RemoteError
from narwhal.messages import Subscribe, tag_of
from narwhal.net.clients import connect_client
from narwhal.net.retry import RetryConfig
from narwhal.primary.primary import Primary
from narwhal.store import Store

from ..worker.harness import Cluster, eventually, fast_parameters

QUICK_RETRY = RetryConfig(initial_interval=0.05, max_interval=0.3)


class Network(Cluster):
    """The worker harness's committee with a real Primary per authority."""

    def __init__(self, tmp_path: Path, **overrides: Any) -> None:
        super().__init__(tmp_path, 4, fast_parameters(max_header_delay=0.05, **overrides))
        self.primaries: dict[int, Primary] = {}
        self.primary_stores: list[Store] = []

    async def start_all(self, slow_timeout: float = 30.0) -> None:
        for i in range(4):
            await self.start_worker(i)
        for i in range(4):
            store = Store.open(self.tmp_path / f"primary{i}.db", synchronous="NORMAL")
            self.primary_stores.append(store)
            primary = Primary(self.keys[i], self.committee, self.parameters, store,
                              slow_subscriber_timeout=slow_timeout)
            await primary.start(primary_sock=self.sockets[i]["primary"],
                                client_sock=self.sockets[i]["client"])
            self.primaries[i] = primary
        # every node committing before any load: the tests measure the output, not start-up
        await eventually(lambda: all(p.node.consensus_index > 4 for p in self.primaries.values()),
                         timeout=10)

    async def restart_primary(self, i: int) -> None:
        """Stop primary ``i`` and start a new one on the same store and ports."""
        ports = [self.sockets[i][kind].getsockname()[1] for kind in ("primary", "client")]
        await self.primaries[i].stop()
        await self.start_again(i, ports)

    async def start_again(self, i: int, ports: list[int]) -> None:
        """Start a new primary ``i`` (the old one stopped) on its store and ``ports``."""
        for kind, port in zip(("primary", "client"), ports):
            self.sockets[i][kind] = sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
        self.primaries[i] = Primary(self.keys[i], self.committee, self.parameters,
                                    self.primary_stores[i])
        await self.primaries[i].start(primary_sock=self.sockets[i]["primary"],
                                      client_sock=self.sockets[i]["client"])

    def subscriber(self, i: int) -> OutputSubscriber:
        return OutputSubscriber(self.committee, self.name(i), retry=QUICK_RETRY)

    async def output_conn(self, i: int) -> Any:
        host, port = self.sockets[i]["client"].getsockname()[:2]
        conn = await connect_client(host, port, server_static=self.keys[i].primary.public,
                                    network_id=self.committee.network_id())
        self.clients.append(conn)
        return conn

    async def submit(self, i: int, count: int, size: int = 100) -> list[bytes]:
        async with TransactionClient(self.committee, self.name(i)) as client:
            txs = client.next_transactions(count, size)
            assert await client.submit(txs) == count
        return txs

    async def close(self) -> None:
        for primary in self.primaries.values():
            await primary.stop()
        await super().close()
        for store in self.primary_stores:
            await store.close()


@contextlib.asynccontextmanager
async def network(tmp_path: Path, slow_timeout: float = 30.0, **overrides: Any) -> AsyncIterator[Network]:
    net = Network(tmp_path, **overrides)
    try:
        await net.start_all(slow_timeout)
        yield net
    finally:
        await net.close()


async def take(subscriber: OutputSubscriber, from_index: int, until: Any,
               timeout: float = 15.0) -> list[OutputItem]:
    """Items from ``from_index`` until ``until(items)`` is true."""
    items: list[OutputItem] = []
    stream = subscriber.subscribe(from_index)
    async with asyncio.timeout(timeout):
        async for item in stream:
            items.append(item)
            if until(items):
                break
    await stream.aclose()
    return items


def contains(txs: list[bytes]) -> Any:
    wanted = set(txs)
    return lambda items: wanted <= {tx for item in items for tx in item[4]}


async def test_two_nodes_stream_the_same_contiguous_output(tmp_path):
    async with network(tmp_path) as net:
        txs = await net.submit(0, 300) + await net.submit(2, 300)
        at0 = await take(net.subscriber(0), 1, contains(txs))
        assert [item[0] for item in at0] == list(range(1, len(at0) + 1))
        ordered = [tx for item in at0 for tx in item[4]]
        assert len(ordered) == len(set(ordered)) and set(txs) <= set(ordered)
        at1 = await take(net.subscriber(1), 0, lambda items: len(items) == len(at0))
        assert at1 == at0  # index 0 means "from the start"
        assert net.primaries[0].status()["output"]["items_sent"] >= len(at0)


async def test_resume_after_disconnect_and_reconnect_mid_stream(tmp_path):
    async with network(tmp_path) as net:
        txs = await net.submit(1, 400)
        whole = await take(net.subscriber(0), 1, contains(txs))
        assert len(whole) >= 4
        # a new subscription from index k yields exactly the continuation
        k = len(whole) // 2
        rest = await take(net.subscriber(0), k, lambda items: len(items) == len(whole) - k + 1)
        assert rest == whole[k - 1:]
        # the node drops the connection mid-stream: the subscriber redials, no gap, no dup
        # (what it had buffered before the abort is yielded first; transactions submitted
        # after the abort can only come through the new connection)
        subscriber = net.subscriber(0)
        seen: list[OutputItem] = []
        stream = subscriber.subscribe(1)
        later: list[bytes] = []
        async with asyncio.timeout(15):
            async for item in stream:
                seen.append(item)
                if len(seen) == 2:
                    for conn in list(net.primaries[0].output.server.connections):
                        conn.abort()
                    later = await net.submit(2, 50)
                if later and contains(later)(seen):
                    break
        await stream.aclose()
        assert seen[:len(whole)] == whole and subscriber.reconnects >= 1
        assert [item[0] for item in seen] == list(range(1, len(seen) + 1))


async def test_bad_subscriptions_get_typed_errors(tmp_path):
    async with network(tmp_path) as net:
        conn = await net.output_conn(2)
        with pytest.raises(RemoteError) as future:
            await conn.sink.request(Subscribe(10**9), timeout=5)
        assert future.value.code is ErrorCode.INVALID and "future" in str(future.value)
        with pytest.raises(RemoteError) as malformed:
            await conn.sink.request_raw(tag_of(Subscribe), bytes.fromhex("8120"), timeout=5)
        assert malformed.value.code is ErrorCode.MALFORMED
        assert (await conn.sink.request(Subscribe(1), timeout=5)).next_index == 1
        with pytest.raises(RemoteError) as twice:
            await conn.sink.request(Subscribe(1), timeout=5)
        assert twice.value.code is ErrorCode.INVALID
        with pytest.raises(RemoteError):  # the client API refuses a permanent error
            await take(net.subscriber(2), 10**9, lambda items: True)


async def test_subscriber_resumes_across_a_node_restart(tmp_path):
    async with network(tmp_path) as net:
        subscriber, seen = net.subscriber(0), []
        stream = subscriber.subscribe(1)
        async with asyncio.timeout(20):
            async for item in stream:
                seen.append(item)
                if len(seen) == 3:
                    await net.restart_primary(0)
                if len(seen) == 3 + 20:
                    break
        await stream.aclose()
        assert [item[0] for item in seen] == list(range(1, 24)) and subscriber.reconnects >= 1
        assert await take(net.subscriber(1), 1, lambda items: len(items) == len(seen)) == seen


async def test_output_older_than_retention_is_pruned_with_the_earliest_index(tmp_path, monkeypatch):
    """retain_seconds deletes old output: a subscription below what is kept is refused
    PRUNED carrying the earliest index (the client API raises OutputPruned with it), and a
    stream overtaken by retention while it was not reading ends with GOAWAY PRUNED."""
    from narwhal.client import OutputPruned
    from narwhal.primary import history
    from narwhal.primary import node as primary_node

    monkeypatch.setattr(history, "MARK_INTERVAL", 0.05)
    monkeypatch.setattr(primary_node, "HISTORY_PRUNE_INTERVAL", 0.1)
    async with network(tmp_path, retain_seconds=1.0) as net:
        node, output = net.primaries[0].node, net.primaries[0].output
        await eventually(lambda: node.history.pruned_index > 5, timeout=20)
        earliest = output._earliest_kept()
        conn = await net.output_conn(0)
        with pytest.raises(RemoteError) as refused:
            await conn.sink.request(Subscribe(1), timeout=5)
        assert refused.value.code is ErrorCode.PRUNED and not refused.value.transient
        assert refused.value.detail >= earliest > 1
        with pytest.raises(OutputPruned) as pruned:
            await take(net.subscriber(0), 1, lambda items: True)
        assert pruned.value.index == 1 and pruned.value.earliest >= earliest
        assert output.refused["pruned"] == 2

        # a subscriber that stops reading near the oldest index is overtaken by retention
        output.server.config = attrs.evolve(output.server.config, write_high_water=4 * 1024)
        before = set(output.server.connections)
        behind = await net.output_conn(0)
        (served,) = set(output.server.connections) - before
        for conn_, option in ((served, socket.SO_SNDBUF), (behind, socket.SO_RCVBUF)):
            conn_._transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, option, 4096)
        behind._transport.pause_reading()  # reads nothing: the stream stalls near its start
        start = output._earliest_kept()
        accepted = asyncio.ensure_future(behind.sink.request(Subscribe(start), timeout=30))
        await eventually(lambda: node.history.pruned_index > start + 300, timeout=30)
        behind._transport.resume_reading()
        assert (await accepted).next_index == start
        await asyncio.wait_for(behind.closed, timeout=10)
        assert behind.goaway is not None and behind.goaway[0] == ErrorCode.PRUNED
        assert behind.goaway[2] > start + 300
        assert output.stats["pruned_closed"] == 1
