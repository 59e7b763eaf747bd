"""Per-(peer, route) rate limits over real 127.0.0.1 Noise connections: a flooding peer is
refused RATE_LIMITED while other peers and other routes keep being served, the refusals are
counted (limiter, peer snapshot, /metrics), an honest pace is never limited, our own
retrier backs off and gets through, and the limiter's memory stays bounded."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from narwhal import messages
from narwhal.config import Committee, Parameters
from narwhal.crypto import AuthorityKeys
from narwhal.errors import ErrorCode, RemoteError
from narwhal.metrics import StatusCollector
from narwhal.net.rate_limit import SWEEP_THRESHOLD, RateLimiter, RouteLimit
from narwhal.net.rpc import Router, channel_of, rate_limited
from narwhal.net.sending import ReliableNetwork

from ..worker.test_quotas import Clock
from .cluster import eventually, make_nodes, settled_link, start_all, stop_all

CLEANUP = messages.tag_of(messages.Cleanup)
FETCH = messages.tag_of(messages.CertificatesRequest)


def limited_router(served: list, limit: RouteLimit) -> Router:
    """Cleanup is limited to ``limit`` per peer; CertificatesRequest is not limited."""
    limiter = RateLimiter({CLEANUP: limit}, route_names={CLEANUP: "Cleanup"},
                          label=lambda peer: peer.info.name)
    router = Router(limiter=limiter)

    async def on_cleanup(peer, message):
        served.append((peer.info.name, message.round))

    async def on_fetch(peer, message):
        served.append((peer.info.name, "fetch"))
        return messages.CertificatesResponse(())

    router.route(messages.Cleanup, on_cleanup)
    router.route(messages.CertificatesRequest, on_fetch)
    return router


@contextlib.asynccontextmanager
async def limited_nodes(n: int, limit: RouteLimit):
    """``n`` nodes on real sockets whose routers limit Cleanup; yields (nodes, served)."""
    served: list = []
    nodes = make_nodes(n, lambda i: limited_router(served, limit))
    await start_all(nodes)
    try:
        yield nodes, served
    finally:
        await stop_all(nodes)


async def outcome(channel, message) -> str:
    try:
        await channel.request(message, timeout=5)
    except RemoteError as exc:
        return exc.code.name
    return "ok"


async def test_a_flooding_peer_is_limited_while_others_and_other_routes_are_served():
    async with limited_nodes(3, RouteLimit(20, 10)) as (nodes, served):
        flooder = channel_of(await settled_link(nodes[1], nodes[0]))
        honest = channel_of(await settled_link(nodes[2], nodes[0]))
        started = time.monotonic()
        flood = await asyncio.gather(*(outcome(flooder, messages.Cleanup(i)) for i in range(200)))
        elapsed = time.monotonic() - started
        # another route of the flooding peer, and the same route of another peer: served
        assert await outcome(flooder, messages.CertificatesRequest(())) == "ok"
        assert [await outcome(honest, messages.Cleanup(i)) for i in range(5)] == ["ok"] * 5

        refused = flood.count("RATE_LIMITED")
        assert set(flood) == {"ok", "RATE_LIMITED"}
        # at most the burst plus what the rate refilled while the flood arrived
        assert flood.count("ok") <= 10 + 20 * elapsed + 1
        limiter = nodes[0].router.limiter
        assert limiter.limited == {("n1", "Cleanup"): refused}
        assert len([s for s in served if s[0] == "n1" and s[1] != "fetch"]) == flood.count("ok")

        # the counter shows up in the peer snapshot (peer_top) and in /metrics
        rows = {row["name"]: row for row in nodes[0].manager.snapshot()}
        assert rows["n1"]["rate_limited"] == refused and rows["n2"]["rate_limited"] == 0
        status = {"primary": {"peers": nodes[0].manager.snapshot(),
                              "rate_limited": rate_limited(nodes[0].router)}}
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in StatusCollector(lambda: status).collect()
                   for s in family.samples}
        key = ("narwhal_rate_limited_total",
               (("local", "primary"), ("peer", "n1"), ("route", "Cleanup")))
        assert samples[key] == refused
        assert nodes[0].manager.is_connected(nodes[1].key)  # refused, not disconnected


async def test_an_honest_pace_below_the_rate_is_never_limited():
    async with limited_nodes(2, RouteLimit(20, 10)) as (nodes, _):
        channel = channel_of(await settled_link(nodes[1], nodes[0]))
        results = []
        for i in range(25):  # 13/s for ~2 s, against 20/s: scheduling jitter is absorbed
            results.append(await outcome(channel, messages.Cleanup(i)))
            await asyncio.sleep(1 / 13)
        assert results == ["ok"] * 25
        assert not nodes[0].router.limiter.limited


async def test_one_way_messages_over_the_limit_are_dropped_and_counted():
    async with limited_nodes(2, RouteLimit(1, 5)) as (nodes, served):
        channel = channel_of(await settled_link(nodes[1], nodes[0]))
        for i in range(40):
            await channel.notify(messages.Cleanup(i))
        limiter = nodes[0].router.limiter
        await eventually(lambda: len(served) + limiter.limited[("n1", "Cleanup")] == 40)
        assert 5 <= len(served) <= 8
        assert await outcome(channel, messages.CertificatesRequest(())) == "ok"


async def test_our_retrier_backs_off_on_rate_limited_and_gets_through():
    assert RemoteError(ErrorCode.RATE_LIMITED).transient
    async with limited_nodes(2, RouteLimit(5, 1)) as (nodes, served):
        await settled_link(nodes[0], nodes[1])
        net = ReliableNetwork(nodes[0].manager)
        handles = [await net.send(nodes[1].key, messages.Cleanup(i)) for i in range(6)]
        answers = await asyncio.wait_for(asyncio.gather(*(h.wait() for h in handles)), 20)
        assert all(isinstance(a, messages.Ack) for a in answers)
        assert sorted(r for _, r in served) == list(range(6))
        metrics = nodes[0].manager.metrics(nodes[1].key)
        assert metrics.retries >= 1 and metrics.sends_failed == 0


class _Peer:
    def __init__(self, number: int) -> None:
        self.number = number


def test_exempt_peers_are_never_limited_and_refusals_charge_nothing():
    clock = Clock()
    own, other = _Peer(0), _Peer(1)
    limiter = RateLimiter({CLEANUP: RouteLimit(1, 2, 100, 100)}, route_names={},
                          exempt=lambda peer: peer is own, clock=clock)
    assert all(limiter.admit(own, CLEANUP, 10_000) for _ in range(100))
    assert limiter.admit(other, CLEANUP, 60)
    assert not limiter.admit(other, CLEANUP, 60)  # bytes: 40 left
    assert limiter.admit(other, CLEANUP, 40)  # the refusal took no request token
    assert not limiter.admit(other, CLEANUP, 1)  # requests: none left
    clock.now += 10
    assert limiter.admit(other, CLEANUP, 5_000)  # larger than the byte burst: charged whole
    assert limiter.admit(other, FETCH, 10**9)  # an unlimited route


def test_idle_buckets_are_forgotten_so_memory_stays_bounded():
    clock = Clock()
    limiter = RateLimiter({CLEANUP: RouteLimit(10, 10)}, route_names={}, clock=clock)
    for round_ in range(5):
        for peer in range(SWEEP_THRESHOLD):
            limiter.admit(_Peer(peer), CLEANUP, 1)
        clock.now += 1  # every bucket refills: nothing left to remember
        assert limiter.tracked <= SWEEP_THRESHOLD + 1


@pytest.mark.parametrize("authorities", [4, 10])
def test_default_limits_follow_the_committee_and_the_batch_size(authorities):
    keys = [AuthorityKeys.generate(workers=1) for _ in range(authorities)]
    committee = Committee.local([k.public() for k in keys], workers=1)
    small, large = Parameters(batch_size=100_000), Parameters(batch_size=1_000_000)
    a, b = small.route_limits(committee), large.route_limits(committee)
    # more batches a second with small batches; as many fetch requests as authorities
    assert a["Batch"].requests_per_second > b["Batch"].requests_per_second
    assert a["CertificatesRequest"].requests_per_second == 4 * 10 * authorities
    # the benchmarked 50,000 tx/s of 512 B through one worker, in our client's frames of
    # 250, fits with the headroom; one round a second per peer is far inside
    submit = a["SubmitTransactions"]
    assert submit.requests_per_second >= 4 * 50_000 / 250
    assert submit.bytes_per_second >= 4 * 50_000 * 512
    assert a["Header"].request_burst >= 2 * small.gc_depth
    # a header full of payload digests always fits in the byte burst
    assert a["Header"].byte_burst >= 38 * messages.MAX_HEADER_PAYLOAD
    overridden = Parameters(rate_limits={"Vote": RouteLimit(1, 1)}).route_limits(committee)
    assert overridden["Vote"] == RouteLimit(1, 1)
