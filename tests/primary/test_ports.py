"""The primary's cores read randomness and time through the ports (narwhal/ports.py)."""

from __future__ import annotations

import asyncio
import random

from narwhal.ports import LOOP_CLOCK, MONOTONIC_CLOCK
from narwhal.primary.fetcher import CertificateFetcher

PEERS = [bytes([i]) * 32 for i in range(10)]


async def _order_asked(rng: random.Random) -> list[bytes]:
    """The peers the fetcher asks, in order, for one chunk no one has."""
    asked: list[bytes] = []

    async def request(source: bytes, message: object, timeout: float) -> object:
        asked.append(source)
        raise TimeoutError

    async def deliver(certificate: object, source: bytes) -> None:
        raise AssertionError("nothing is delivered")

    fetcher = CertificateFetcher(others=PEERS, request=request, deliver=deliver,
                                 have=lambda digest: False, rng=rng)
    assert not await fetcher._fetch_chunk(None, [b"\x00" * 32])
    return asked


async def test_fetcher_asks_peers_in_the_order_its_seeded_random_source_draws():
    first = await _order_asked(random.Random(7))
    assert sorted(first) == PEERS  # every peer asked once
    assert await _order_asked(random.Random(7)) == first
    # another seed, another order (10! orders: a collision would be a broken injection)
    assert await _order_asked(random.Random(8)) != first


async def test_real_clocks_read_the_loop_and_the_monotonic_clock():
    loop = asyncio.get_running_loop()
    before = loop.time()
    await LOOP_CLOCK.sleep(0.01)
    assert LOOP_CLOCK.now() >= before + 0.009  # uvloop's loop time has 1 ms resolution
    assert abs(MONOTONIC_CLOCK.now() - loop.time()) < 1.0
