"""Admission control: what connections cost before their handshake completes.

First the sans-IO core (:class:`AdmissionControl`, fake clock): who is evicted, who is
throttled, what it remembers. Then real sockets on 127.0.0.1 against a real
``PeerManager`` (validator port) and ``ClientServer`` (client port): silent connection
floods, replayed and garbage handshake floods, the handshake timeout, and max_clients.
Attacker and real peers share 127.0.0.1 here, so these also prove the harder case: real
peers and clients getting through a flood from their *own* address.
"""

from __future__ import annotations

import asyncio
import gc
import time

import attrs
import pytest
from prometheus_client import generate_latest

from narwhal import messages
from narwhal.errors import AdmissionRefused, ErrorCode, PeerRejected
from narwhal.metrics import node_registry
from narwhal.net.admission import (
    AdmissionConfig,
    AdmissionControl,
    Stage,
    source_of,
)
from narwhal.net.clients import ClientServer, connect_client
from narwhal.net.connection import HANDSHAKE_RECEIVE_BUFFER, RECEIVE_BUFFER, ConnectionConfig
from narwhal.net.network import NetworkConfig
from narwhal.net.rpc import Router
from narwhal.net.sending import ReliableNetwork
from narwhal.wire.noise import HandshakePayload, Pattern

from .cluster import FAST, NETWORK_ID, eventually, keypair, make_nodes, stop_all
from .floods import (
    HandshakeFlood,
    SilentFlood,
    garbage_message1,
    raise_fd_limit,
    recorded_message1,
    rss_bytes,
)
from .test_network import recording_router

MiB = 1024 * 1024
#: Silent connections of the flood tests; the attacker holds them all open.
FLOOD = 2_000


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Owner:
    def __init__(self, name: str) -> None:
        self.name = name

    def abort(self, error: BaseException | None = None) -> None:
        pass

    def __repr__(self) -> str:
        return self.name


def ephemeral(n: int) -> bytes:
    return n.to_bytes(32, "big")


# -- sans-IO core ---------------------------------------------------------------------------


def test_a_source_over_its_cap_loses_its_oldest_silent_connections_first():
    control = AdmissionControl(AdmissionConfig(max_half_open=100, max_half_open_per_source=3))
    first, second, third = (control.admit("a", Owner(f"t{i}")) for i in range(3))
    first.started()  # the oldest has sent its first bytes: it is no longer the first victim
    fourth, fifth = control.admit("a", Owner("t3")), control.admit("a", Owner("t4"))
    assert control.over_limit
    assert control.shed() == [second, third]
    assert {first.live, fourth.live, fifth.live} == {True}
    assert control.half_open_of("a") == 3 and control.stats.evicted_per_source == 2
    assert not control.over_limit and control.shed() == []


def test_a_connection_past_message_1_outlives_silent_and_started_ones():
    control = AdmissionControl(AdmissionConfig(max_half_open=100, max_half_open_per_source=2))
    keyed = control.admit("a", Owner("keyed"))
    keyed.started()
    keyed.check_message1(ephemeral(1))
    assert keyed.stage is Stage.KEYED
    started = control.admit("a", Owner("started"))
    started.started()
    control.admit("a", Owner("newest")).started()
    assert control.shed() == [started]  # STARTED goes before KEYED, whatever the age


def test_a_full_listener_evicts_from_the_source_holding_the_most():
    control = AdmissionControl(AdmissionConfig(max_half_open=4, max_half_open_per_source=4))
    flood = [control.admit("attacker", Owner(f"a{i}")) for i in range(3)]
    honest = control.admit("honest", Owner("h"))
    other = control.admit("other", Owner("o"))
    assert control.shed() == [flood[0]]
    assert honest.live and other.live and control.stats.evicted_overall == 1
    # all at 2: the largest sources lose, the one that reached that count first first
    more = [control.admit(src, Owner(src)) for src in ("honest", "other")]
    assert control.shed() == [flood[1], honest] and control.half_open == 4
    assert all(t.live for t in more)
    assert [control.half_open_of(s) for s in ("attacker", "honest", "other")] == [1, 1, 2]


def test_the_ceiling_is_twice_the_overall_cap():
    control = AdmissionControl(AdmissionConfig(max_half_open=5, max_half_open_per_source=5))
    for i in range(9):
        control.admit("a", Owner(str(i)))
        assert not control.over_ceiling
    control.admit("a", Owner("9"))
    assert control.over_ceiling


def test_a_flooding_source_cannot_take_the_handshakes_of_another_source():
    clock = Clock()
    config = AdmissionConfig(handshake_rate=100, handshake_burst=20,
                             handshake_rate_per_source=10, handshake_burst_per_source=5)
    control = AdmissionControl(config, clock=clock)

    def attempt(source: str, n: int) -> bool:
        ticket = control.admit(source, Owner(source))
        try:
            ticket.check_message1(ephemeral(n))
        except AdmissionRefused:
            assert not ticket.live  # released at once: its connection is closed, uncounted
            return False
        return True

    assert sum(attempt("attacker", n) for n in range(1_000)) == 5  # its burst, nothing more
    assert control.stats.throttled_per_source == 995
    assert all(attempt("honest", 10_000 + n) for n in range(5))
    clock.now += 1.0  # a second later: each source has its rate again
    assert sum(attempt("attacker", 20_000 + n) for n in range(1_000)) == 5
    assert attempt("honest", 30_000)
    # many sources together are held to the listener's rate
    passed = sum(attempt(f"botnet-{n}", 40_000 + n) for n in range(100))
    assert passed == 20 - 5 - 1 and control.stats.throttled_overall == 100 - passed
    assert control.stats.handshakes == 5 + 5 + 5 + 1 + passed


def test_a_replayed_message_1_is_refused_without_taking_a_token():
    control = AdmissionControl(AdmissionConfig(handshake_burst_per_source=2), clock=Clock())
    control.admit("a", Owner("first")).check_message1(ephemeral(7) + b"rest of message 1")
    for _ in range(10):
        with pytest.raises(AdmissionRefused, match="replayed"):
            control.admit("a", Owner("replay")).check_message1(ephemeral(7) + b"other bytes")
    assert control.stats.replayed == 10 and control.stats.handshakes == 1
    control.admit("a", Owner("fresh")).check_message1(ephemeral(8))  # the second token is there


def test_what_the_control_remembers_is_bounded():
    clock = Clock()
    config = AdmissionConfig(replay_memory=100, handshake_rate=1e9, handshake_burst=10**9,
                             handshake_rate_per_source=10, handshake_burst_per_source=10)
    control = AdmissionControl(config, clock=clock)
    for n in range(10_000):  # a fresh source every 0.1 s: its bucket is full again 1 s later
        clock.now += 0.1
        ticket = control.admit(f"10.0.{n // 256}.{n % 256}", Owner("x"))
        ticket.check_message1(ephemeral(n))
        ticket.complete()
        assert control.tracked_buckets <= 11
    assert len(control._seen) == 100
    assert control.half_open == 0 and control.snapshot()["sources"] == 0


def test_sources_are_addresses_and_ipv6_slash_64_prefixes():
    assert source_of(("192.0.2.7", 4242)) == "192.0.2.7"
    assert source_of(("2001:db8:1:2:aaaa::1", 4242, 0, 0)) == "2001:db8:1:2::/64"
    assert source_of(("2001:db8:1:2:bbbb::9%eth0", 1, 0, 3)) == "2001:db8:1:2::/64"
    assert source_of(("::ffff:192.0.2.7", 1, 0, 0)) == "192.0.2.7"
    assert source_of(None) == "unknown"


# -- real sockets ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def enough_file_descriptors():
    """The attacker's sockets and the victim's live in this process."""
    if raise_fd_limit(3 * FLOOD) < 3 * FLOOD:
        pytest.skip(f"needs {3 * FLOOD} open files (ulimit -n)")


def half_open_buffers(conns) -> set[int]:
    return {c.receive_buffer_size for c in conns if not c.is_open}


async def relink(victim, peer) -> float:
    """Seconds until ``peer`` has a new link to ``victim`` after dropping the old one."""
    old = victim.manager.connection_nowait(peer.key)
    start = time.monotonic()
    peer.manager.connection_nowait(victim.key).abort()
    await eventually(lambda: victim.manager.connection_nowait(peer.key) not in (None, old),
                     timeout=5)
    return time.monotonic() - start


async def linked_pair(received: list) -> list:
    """A victim and its peer, linked. The victim only accepts: every (re)connection of its
    peer goes through the victim's listener, and so through any flood on it."""
    nodes = make_nodes(2, lambda i: recording_router(received))
    victim, peer = nodes
    await victim.start([victim.info, attrs.evolve(peer.info, address=None)])
    await peer.start([victim.info, peer.info])
    await eventually(lambda: victim.manager.is_connected(peer.key))
    return nodes


async def test_a_silent_flood_on_a_validator_port_is_bounded_and_the_peer_keeps_talking():
    received: list = []
    nodes = await linked_pair(received)
    victim, peer = nodes
    manager = victim.manager
    cap = manager.admission.config
    reliable = ReliableNetwork(peer.manager)
    gc.collect()
    rss_before = rss_bytes()
    flood = SilentFlood(victim.info.address[1], hold=FLOOD, total=FLOOD).start()
    rpc_seconds, reconnect_seconds, largest, buffers = [], None, 0, set()
    try:
        round_ = 0
        while not flood.done.is_set() or round_ < 20:
            round_ += 1
            largest = max(largest, manager.admission.half_open)
            buffers |= half_open_buffers(manager._handshaking)
            start = time.monotonic()
            handle = await reliable.send(victim.key, messages.Cleanup(round_))
            await asyncio.wait_for(handle.wait(), 5)
            rpc_seconds.append(time.monotonic() - start)
            if round_ == 10:  # the peer restarts its link: it must come back through the flood
                reconnect_seconds = await relink(victim, peer)
        await asyncio.sleep(0.05)
        gc.collect()
        rss_growth = rss_bytes() - rss_before
        stats = manager.admission.stats
        assert flood.opened == FLOOD
        # memory: the victim held at most its caps of half-open connections, each with the
        # small buffer (before: 2,000 x 256 KiB = 500 MiB for the 10 s handshake timeout)
        assert stats.peak_half_open <= 2 * cap.max_half_open and largest <= 2 * cap.max_half_open
        assert manager.admission.half_open <= cap.max_half_open_per_source
        assert buffers == {HANDSHAKE_RECEIVE_BUFFER}
        assert rss_growth < 48 * MiB, f"RSS grew {rss_growth / MiB:.1f} MiB"
        assert stats.evicted_per_source >= FLOOD - cap.max_half_open_per_source - 10
        # the honest peer: every request answered, and its reconnect went through quickly
        assert ("n1", round_) in received and max(rpc_seconds) < 2.0
        assert reconnect_seconds is not None and reconnect_seconds < 3.0
        print(f"silent flood: RSS +{rss_growth / MiB:.1f} MiB, peak half-open "
              f"{stats.peak_half_open}, slowest RPC {max(rpc_seconds) * 1000:.0f} ms, "
              f"reconnect {reconnect_seconds * 1000:.0f} ms, evicted {stats.evicted_per_source}")
    finally:
        await flood.stop()
        await stop_all(nodes)


def client_server(config: ConnectionConfig = FAST.connection) -> tuple[ClientServer, bytes]:
    """A worker's transactions port (max_clients 4) and its public key."""
    async def submit(peer, message):
        return messages.TransactionsAccepted(len(message.transactions))

    router = Router()
    router.route(messages.SubmitTransactions, submit)
    private, public = keypair()
    server = ClientServer(local_static=private, network_id=NETWORK_ID, router=router,
                          local_payload=HandshakePayload("worker", authority=b"\x01" * 32,
                                                         worker_id=0),
                          config=config, max_clients=4)
    return server, public


@pytest.fixture
async def client_port():
    server, public = client_server()
    port = await server.start()
    try:
        yield server, port, public
    finally:
        await server.stop()


async def test_real_clients_connect_through_a_silent_flood_from_their_own_address(client_port):
    server, port, public = client_port
    flood = SilentFlood(port, hold=FLOOD, total=FLOOD).start()
    clients, seconds, half_open_then = [], [], []
    try:
        await eventually(lambda: server.admission.half_open >= 100)
        for _ in range(server.max_clients):  # no retry: each must get through at once
            start = time.monotonic()
            conn = await connect_client("127.0.0.1", port, server_static=public,
                                        network_id=NETWORK_ID, timeout=3)
            seconds.append(time.monotonic() - start)
            half_open_then.append(server.admission.half_open)
            clients.append(conn)
            answer = await conn.sink.request(messages.SubmitTransactions((b"tx",)), timeout=3)
            assert answer == messages.TransactionsAccepted(1)
        # half-open connections never counted against max_clients: a fifth client is the
        # one refused, and it is told OVERLOADED (transient)
        with pytest.raises(PeerRejected) as refused:
            await connect_client("127.0.0.1", port, server_static=public, network_id=NETWORK_ID,
                                 timeout=3)
        assert refused.value.code is ErrorCode.OVERLOADED and server.refused == 1
        await flood.done.wait()
        assert len(server.authenticated) == server.max_clients
        assert min(half_open_then) > server.max_clients
        assert server.admission.stats.peak_half_open <= 2 * server.admission.config.max_half_open
        assert half_open_buffers(server.connections) == {HANDSHAKE_RECEIVE_BUFFER}
        assert {c.receive_buffer_size for c in server.authenticated} == {RECEIVE_BUFFER}
        print(f"clients connected in {[round(s * 1000) for s in seconds]} ms with "
              f"{half_open_then} half-open connections")
    finally:
        await flood.stop()
        for conn in clients:
            conn.abort()


async def test_a_replayed_message_1_costs_no_crypto_and_the_peer_still_reconnects():
    nodes = await linked_pair([])
    victim, peer = nodes
    manager = victim.manager
    # what a network attacker recorded of one of the peer's dials
    recorded = recorded_message1(Pattern.IK, victim.key, NETWORK_ID, local_static=peer.private,
                                 payload=HandshakePayload("primary", authority=peer.info.authority))
    flood = HandshakeFlood(victim.info.address[1], lambda: recorded, concurrency=32).start()
    try:
        await eventually(lambda: flood.sent >= 2_000, timeout=15)
        reconnect = await relink(victim, peer)
        handle = await ReliableNetwork(peer.manager).send(victim.key, messages.Cleanup(1))
        await asyncio.wait_for(handle.wait(), 5)
    finally:
        await flood.stop()
    stats = manager.admission.stats
    # the first copy was processed once (it never confirms); every other one was refused
    # before any Diffie-Hellman and never answered
    assert flood.answered <= 1
    assert stats.replayed >= flood.sent - 32 - 1
    assert stats.handshakes <= 3  # that first copy and the peer's own (re)dials
    assert reconnect < 3.0
    print(f"replay flood: {flood.sent} sent, {stats.replayed} refused as replays, "
          f"reconnect {reconnect * 1000:.0f} ms")
    await stop_all(nodes)


async def test_a_garbage_handshake_flood_is_held_to_the_handshake_rate():
    config = AdmissionConfig(handshake_rate=200, handshake_burst=20,
                             handshake_rate_per_source=100, handshake_burst_per_source=10)
    server, public = client_server(attrs.evolve(FAST.connection, admission=config))
    port = await server.start()
    template = recorded_message1(Pattern.NK, public, NETWORK_ID)
    flood = HandshakeFlood(port, garbage_message1(template), concurrency=32).start()
    start = time.monotonic()
    try:
        await asyncio.sleep(1.5)
    finally:
        await flood.stop()
        elapsed = time.monotonic() - start
    stats = server.admission.stats
    # the Diffie-Hellman work ran for at most the source's burst + rate x time
    assert stats.handshakes <= 10 + 100 * elapsed + 1
    assert stats.throttled_per_source >= flood.sent - stats.handshakes - 32
    assert stats.throttled_per_source > 10 * stats.handshakes  # the flood was mostly refused
    assert flood.answered == 0  # garbage never gets message 2
    # the flood leaves nothing behind: a client connects at once afterwards
    await asyncio.sleep(config.handshake_burst_per_source / config.handshake_rate_per_source)
    conn = await connect_client("127.0.0.1", port, server_static=public, network_id=NETWORK_ID)
    conn.abort()
    await server.stop()
    print(f"garbage flood: {flood.sent} in {elapsed:.1f}s, {stats.handshakes} processed, "
          f"{stats.throttled_per_source} throttled")


async def test_the_handshake_timeout_closes_silent_connections_and_counts_them():
    server, _ = client_server(attrs.evolve(FAST.connection, handshake_timeout=0.3))
    port = await server.start()
    flood = SilentFlood(port, hold=20, total=20).start()
    try:
        await flood.done.wait()
        await eventually(lambda: server.admission.half_open == 20)
        await eventually(lambda: server.admission.half_open == 0, timeout=2)
        assert server.admission.stats.timed_out == 20 and not server.connections
    finally:
        await flood.stop()
        await server.stop()


async def test_admission_counters_reach_metrics():
    config = NetworkConfig(connection=ConnectionConfig(
        admission=AdmissionConfig(max_half_open=2, max_half_open_per_source=2)))
    nodes = make_nodes(1)
    await nodes[0].start([nodes[0].info], config)
    flood = SilentFlood(nodes[0].info.address[1], hold=10, total=10).start()
    try:
        await flood.done.wait()
        await eventually(lambda: nodes[0].manager.admission.stats.evicted_per_source == 8)
        status = {"primary": {"admission": {"validators": nodes[0].manager.admission.snapshot()}}}
        text = generate_latest(node_registry(lambda: status)).decode()
        assert ('narwhal_admission_shed_total{listener="validators",local="primary",'
                'reason="evicted_per_source"} 8.0') in text
        assert 'narwhal_admission_half_open{listener="validators",local="primary"} 2.0' in text
        assert status["primary"]["admission"]["validators"]["top_sources"] == [["127.0.0.1", 2]]
    finally:
        await flood.stop()
        await stop_all(nodes)
