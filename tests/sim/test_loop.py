"""The virtual-time loop: timers fire in deadline order at their virtual time, at no real
cost; a program waiting for nothing is reported, not hung."""

from __future__ import annotations

import asyncio
import time

import pytest

from narwhal.sim.loop import EPOCH, SimulationStalled, run_virtual


def test_timers_fire_at_their_virtual_time_in_deadline_order_without_waiting():
    async def main():
        loop = asyncio.get_running_loop()
        fired = []

        async def after(seconds, tag):
            await asyncio.sleep(seconds)
            fired.append((tag, loop.time() - EPOCH))

        await asyncio.gather(after(5, "five"), after(1, "one"), after(3600, "hour"), after(1, "one'"))
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(10):
                await asyncio.sleep(100)
        return fired, loop.time() - EPOCH

    started = time.perf_counter()
    fired, ended = run_virtual(main())
    assert fired == [("one", 1), ("one'", 1), ("five", 5), ("hour", 3600)]
    assert ended == 3610
    assert time.perf_counter() - started < 1.0  # an hour and ten seconds, simulated


def test_a_program_waiting_for_nothing_is_reported_not_hung():
    async def main():
        await asyncio.get_running_loop().create_future()  # nobody will ever set it

    with pytest.raises(SimulationStalled):
        run_virtual(main())
