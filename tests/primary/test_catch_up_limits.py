"""The default rate limits never throttle an honest catch-up: a primary that was down while
the others advanced a hundred rounds fetches their hundreds of certificates at full speed
(4 real Primaries + 4 real Workers, real sockets, the default limits of ``Parameters``)."""

from __future__ import annotations

from narwhal.net.rpc import rate_limited

from ..worker.harness import eventually
from .test_output import network

BEHIND = 100


async def test_a_restarted_primary_catches_up_hundreds_of_certificates_unlimited(tmp_path):
    async with network(tmp_path) as net:
        await net.submit(0, 200)
        ports = [net.sockets[3][kind].getsockname()[1] for kind in ("primary", "client")]
        stopped_at = net.primaries[3].node.proposer.round
        await net.primaries[3].stop()

        def others_round() -> int:
            return min(net.primaries[i].node.proposer.round for i in range(3))

        await eventually(lambda: others_round() >= stopped_at + BEHIND, timeout=120)
        await net.start_again(3, ports)
        target = others_round()
        await eventually(lambda: net.primaries[3].node.proposer.round >= target, timeout=120)
        assert net.primaries[3].node.proposer.round >= stopped_at + BEHIND
        # it caught up through the catch-up route (bulk fetches of up to 1,000 certificates)
        fetches = sum(net.primaries[i].manager.routes.snapshot().get("FetchCertificates", {})
                      .get("requests", 0) for i in range(3))
        assert fetches >= 1
        for i in range(4):
            assert rate_limited(net.primaries[i].manager.router) == {}, i
            worker = net.workers[i]
            assert rate_limited(worker.manager.router, worker.clients.router) == {}, i
