"""What subscribers may cost a node (issue 12, item 6), on real sockets: 4 primaries and 4
workers in one event loop (the harness of ``test_output.py``), real clients.

- caps on subscriptions, in all and per source address: typed refusals, counted;
- a client whose ``max_frame_size`` is below a part gets a permanent ``TOO_LARGE``, and the
  node logs no error;
- ``SubscribeAccepted`` precedes the first ``OrderedOutput``;
- a subscriber that never reads costs at most its buffer plus a part (far below its
  connection's outbound budget) and is disconnected without a GOAWAY it could not read;
- subscribers replaying history together are held to ``output_rate``, and consensus keeps
  committing meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import attrs
import pytest
from prometheus_client import generate_latest

from narwhal.client import OutputSubscriber
from narwhal.errors import ErrorCode, RemoteError
from narwhal.messages import Subscribe
from narwhal.metrics import node_registry
from narwhal.net.connection import FLUSH_THRESHOLD
from narwhal.net.rpc import Router
from narwhal.primary import output as output_module
from narwhal.primary.output import PACER_SLOTS
from narwhal.wire.frames import FrameKind

from ..worker.harness import eventually
from .test_output import QUICK_RETRY, Network, contains, network, take


async def _subscribe(net: Network, i: int = 0, from_index: int = 1):
    conn = await net.output_conn(i)
    return conn, await conn.sink.request(Subscribe(from_index), timeout=5)


async def test_subscriptions_are_capped_per_address_and_in_all(tmp_path):
    async with network(tmp_path, max_subscribers=3, max_subscribers_per_address=2) as net:
        output = net.primaries[0].output
        first, _ = await _subscribe(net)
        await _subscribe(net)
        with pytest.raises(RemoteError) as refused:
            await _subscribe(net)  # a third from 127.0.0.1
        assert refused.value.code is ErrorCode.OVERLOADED and "address" in str(refused.value)
        assert output.refused["per_address"] == 1
        # the refused connection is still usable; a freed place is given again
        first.abort()
        await eventually(lambda: output.status()["subscribers"] == 1, timeout=5)
        await _subscribe(net)
        # in all: a cap of 3 with 2 per address cannot be reached from one address, so lift
        # the per-address cap and fill the node
        output.limits = attrs.evolve(output.limits, max_subscribers_per_address=3)
        await _subscribe(net)
        with pytest.raises(RemoteError) as full:
            await _subscribe(net)
        assert full.value.code is ErrorCode.OVERLOADED
        assert output.refused["max_subscribers"] == 1
        with pytest.raises(RemoteError):
            await _subscribe(net, from_index=10**9)
        assert output.refused["future"] == 1
        scraped = generate_latest(node_registry(
            lambda: {"primary": net.primaries[0].status()})).decode()
        for line in ('narwhal_output_subscriptions_refused_total{reason="per_address"} 1.0',
                     'narwhal_output_subscriptions_refused_total{reason="max_subscribers"} 1.0',
                     "narwhal_output_subscribers 3.0", "narwhal_output_subscriptions_total 4.0"):
            assert line in scraped.splitlines(), line
        assert "narwhal_output_bytes_served_total" in scraped


async def test_the_output_port_holds_max_clients_per_address_connections_of_one_address(tmp_path):
    async with network(tmp_path, max_subscribers_per_address=2, max_clients_per_address=2) as net:
        held = [await net.output_conn(0) for _ in range(2)]
        third = await net.output_conn(0)
        await asyncio.wait_for(asyncio.shield(third.closed), 5)
        assert third.goaway is not None and third.goaway[0] == ErrorCode.OVERLOADED
        status = net.primaries[0].status()["output"]["clients"]
        assert (status["connected"], status["refused_per_address"]) == (2, 1)
        scraped = generate_latest(node_registry(
            lambda: {"primary": net.primaries[0].status()})).decode()
        assert 'narwhal_client_connections_refused_total{local="primary",reason="per_address"} 1.0' \
            in scraped.splitlines()
        for conn in held:
            conn.abort()


async def test_a_client_with_a_small_frame_limit_gets_a_permanent_too_large(tmp_path, caplog):
    async with network(tmp_path) as net:
        txs = await net.submit(1, 40, size=200)  # batches of ~8 KB: parts above 1 KiB
        small = OutputSubscriber(net.committee, net.name(0), retry=QUICK_RETRY,
                                 max_frame_size=1024)
        caplog.set_level(logging.INFO)
        with pytest.raises(RemoteError) as refused:
            await take(small, 1, contains(txs), timeout=20)
        assert refused.value.code is ErrorCode.TOO_LARGE and not refused.value.transient
        assert "max_frame_size 1024" in str(refused.value)
        output = net.primaries[0].output
        assert output.stats["parts_too_large"] == 1 and not output.stats["failed"]
        assert small.reconnects == 0  # it did not come back for the same refusal
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert not [r for r in caplog.records if r.exc_info]
        # the same client with the default limit gets everything
        items = await take(net.subscriber(0), 1, contains(txs), timeout=20)
        assert [item[0] for item in items] == list(range(1, len(items) + 1))


async def test_subscribe_accepted_precedes_the_first_ordered_output(tmp_path):
    async with network(tmp_path) as net:
        await net.submit(0, 100)
        for _ in range(10):
            conn = await net.output_conn(0)
            kinds: list[FrameKind] = []
            received = conn.sink.frame_received

            def spy(frame, received=received, kinds=kinds):
                if frame.kind in (FrameKind.RESPONSE, FrameKind.ONEWAY):
                    kinds.append(frame.kind)
                received(frame)

            conn.sink.frame_received = spy
            await conn.sink.request(Subscribe(1), timeout=5)
            await eventually(lambda kinds=kinds: len(kinds) > 3, timeout=5)
            assert kinds[0] is FrameKind.RESPONSE and FrameKind.RESPONSE not in kinds[1:]
            conn.abort()


async def test_a_subscriber_that_never_reads_costs_its_buffer_and_is_aborted(tmp_path):
    buffer = 64 * 1024
    async with network(tmp_path, slow_timeout=2.0, subscriber_buffer_bytes=buffer) as net:
        output = net.primaries[0].output
        await net.submit(1, 400, size=1_000)  # history of ~400 KB
        stuck = await net.output_conn(0)
        (served,) = output.server.connections
        for conn, option in ((served, socket.SO_SNDBUF), (stuck, socket.SO_RCVBUF)):
            conn._transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, option, 4096)
        assert (await stuck.sink.request(Subscribe(1), timeout=5)).next_index == 1
        stuck._transport.pause_reading()  # never read a byte again
        loop = asyncio.get_running_loop()
        started = loop.time()
        while not output.stats["slow_closed"] and loop.time() < started + 20:
            await net.submit(1, 100, size=1_000)
            await asyncio.sleep(0.1)
        assert output.stats["slow_closed"] == 1
        assert output.stats["pauses"] >= 1
        largest_part = net.parameters.batch_size + net.parameters.max_transaction_size + 200
        # what it cost us: its buffer, one part and what a flush holds, never its budget
        assert served.stats.peak_queued_outbound <= buffer + largest_part + FLUSH_THRESHOLD
        assert served.stats.peak_queued_outbound < served.outbound_budget
        assert not served.goaway and served.close_reason.code is ErrorCode.TIMEOUT
        # aborted, not closed gracefully: the client never sees a GOAWAY (it could not
        # read one), it sees the connection end and would resubscribe
        stuck._transport and stuck._transport.resume_reading()
        await asyncio.wait_for(asyncio.shield(stuck.closed), 10)
        assert stuck.goaway is None
        assert output.status()["subscribers"] == 0
        # the node keeps serving: a new subscriber gets the transactions of a new submission
        txs = await net.submit(3, 50)
        items = await take(net.subscriber(0), 1, contains(txs), timeout=20)
        assert [item[0] for item in items] == list(range(1, len(items) + 1))


async def test_replaying_subscribers_are_held_to_the_output_rate_while_consensus_commits(tmp_path):
    rate = 256 * 1024
    async with network(tmp_path, output_rate=rate, max_subscribers_per_address=16) as net:
        for i in range(8):  # a history of ~2 MB
            await net.submit(i % 4, 500, size=500)
        node = net.primaries[0].node

        async def commit_rate(seconds: float) -> float:
            before, started = node.consensus_index, time.monotonic()
            await asyncio.sleep(seconds)
            return (node.consensus_index - before) / (time.monotonic() - started)

        baseline = await commit_rate(3)
        output = net.primaries[0].output
        readers = []
        for _ in range(12):
            conn = await net.output_conn(0)
            conn.sink._router = Router()  # drop the items: read as fast as possible
            readers.append(conn)
            await conn.sink.request(Subscribe(1), timeout=5)
        served_before, started = output.stats["bytes_served"], time.monotonic()
        during = await commit_rate(4)
        served = output.stats["bytes_served"] - served_before
        elapsed = time.monotonic() - started
        burst = output.pacer.burst
        largest_part = net.parameters.batch_size + net.parameters.max_transaction_size + 200
        assert served <= burst + rate * elapsed + PACER_SLOTS * largest_part
        assert served >= 0.3 * rate * elapsed  # they are being served
        assert during >= 0.5 * baseline, (during, baseline)


async def test_small_parts_are_held_to_the_parts_rate(tmp_path, monkeypatch):
    """Every part is charged at least ``output_rate / OUTPUT_PARTS_RATE`` bytes, so a history
    of tiny parts (here: every index of an idle committee is one empty part of ~200 bytes)
    is replayed at a bounded number of parts per second, not as fast as the loop turns.
    The test lowers OUTPUT_PARTS_RATE to 20/s so the bound shows within seconds."""
    monkeypatch.setattr(output_module, "OUTPUT_PARTS_RATE", 20)
    rate = 256 * 1024  # bytes/s: ~1,300 parts of 200 bytes a second if charged by bytes
    async with network(tmp_path, output_rate=rate) as net:
        node, output = net.primaries[0].node, net.primaries[0].output
        await eventually(lambda: node.consensus_index >= 60, timeout=30)  # a history of parts
        conn = await net.output_conn(0)
        conn.sink._router = Router()  # read and drop
        sent_before, started = output.stats["items_sent"], time.monotonic()
        await conn.sink.request(Subscribe(1), timeout=5)
        await asyncio.sleep(3)
        parts = output.stats["items_sent"] - sent_before
        elapsed = time.monotonic() - started
        burst_parts = output.pacer.burst // (rate // 20)
        assert parts <= burst_parts + 20 * elapsed + PACER_SLOTS, parts
        assert parts >= 0.5 * 20 * elapsed, parts  # still served at that rate
