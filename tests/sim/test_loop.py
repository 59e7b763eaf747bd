"""The virtual-time loop: timers fire in deadline order at their virtual time, at no real
cost; a program waiting for nothing is reported, not hung."""

from __future__ import annotations

import asyncio
import time

import pytest

from narwhal.sim.loop import EPOCH, SimulationStalled, SkewedClock, run_virtual, true_now


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


def test_a_skewed_clock_runs_its_code_timers_at_its_own_rate():
    """Code under a clock of rate 2 (a fast clock) reads twice the elapsed time and its
    timers fire after half the true time; code under rate 0.5 the reverse; the loop and
    code outside any clock see true time."""
    fast, slow = SkewedClock(rate=2.0, offset=100.0), SkewedClock(rate=0.5, offset=7.0)

    async def main():
        loop = asyncio.get_running_loop()
        woke = {}

        async def sleeper(name):
            start = loop.time()
            await asyncio.sleep(1.0)
            woke[name] = (true_now() - EPOCH, loop.time() - start)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(1.0):
                    await asyncio.sleep(10)
            woke[name + " timeout"] = true_now() - EPOCH

        with fast.current():
            a = asyncio.ensure_future(sleeper("fast"))  # the task keeps the clock
        with slow.current():
            b = asyncio.ensure_future(sleeper("slow"))
        assert loop.time() == EPOCH  # outside any clock: true time
        await asyncio.gather(a, b)
        return woke

    woke = run_virtual(main())
    assert woke["fast"] == (0.5, 1.0) and woke["fast timeout"] == 1.0
    assert woke["slow"] == (2.0, 1.0) and woke["slow timeout"] == 4.0


def test_a_deadline_on_a_skewed_clock_is_never_reached_early():
    """A timer for a local deadline fires when the local clock reads at least it, rounding
    included: otherwise code sleeping "until the deadline" slept again for the remaining
    ulp at a true time the loop had already reached, and the loop spun for ever (seen with
    --skew 4 before the fix)."""
    clock = SkewedClock(rate=3.7, offset=2_917.3)
    for true in (EPOCH, EPOCH + 0.1, EPOCH + 12.345678, EPOCH + 1e6 / 3):
        for ahead in (0.0, 1e-12, 1e-9, 0.2):
            deadline = clock.local(true) + ahead
            assert clock.local(clock.true(deadline)) >= deadline


def test_a_clock_needs_a_positive_rate():
    with pytest.raises(ValueError, match="positive"):
        SkewedClock(rate=0.0)
