"""The simulated links: a message on a slow link moves at the link's pace only while the
link is slow (seed 100659 of the 10,000-seed run), and travels on true time whatever the
sender's clock."""

from __future__ import annotations

import asyncio
import random

import pytest

from narwhal.sim.loop import EPOCH, SkewedClock, run_virtual, true_now
from narwhal.sim.network import LinkModel, Links

#: Every message takes exactly one second: no jitter, spikes or loss.
STEADY = LinkModel(latency=1.0, sigma=0.0, spike_rate=0.0, loss=0.0)


def deliver_time(*, slow_for: float | None, factor: float = 20.0,
                 clock: SkewedClock | None = None) -> float:
    """When a message sent at time 0 over a 1-second link arrives; the sender's link is
    ``factor`` times slower from the start for ``slow_for`` seconds (None: never)."""
    async def main() -> float:
        links = Links(2, random.Random(1), STEADY)
        arrived = asyncio.get_running_loop().create_future()

        async def deliver() -> None:
            arrived.set_result(true_now() - EPOCH)

        if slow_for is not None:
            links.slow[0] = factor
            asyncio.get_running_loop().call_later(slow_for, links.slow.clear)
        if clock is None:
            sending = asyncio.ensure_future(links.send(0, 1, deliver, random.Random(2)))
        else:
            with clock.current():
                sending = asyncio.ensure_future(links.send(0, 1, deliver, random.Random(2)))
        await sending
        return await arrived

    return run_virtual(main())


def test_a_message_on_a_healthy_link_takes_its_latency():
    assert deliver_time(slow_for=None) == 1.0


def test_a_slow_link_slows_what_it_carries_only_while_it_is_slow():
    assert deliver_time(slow_for=100.0) == pytest.approx(20.0)  # slow all the way
    # 2 s at 1/20 of the pace cover 0.1 s of the way; the other 0.9 s at the normal pace
    assert deliver_time(slow_for=2.0) == pytest.approx(2.9, abs=0.11)


def test_a_message_travels_on_true_time_whatever_the_senders_clock():
    assert deliver_time(slow_for=None, clock=SkewedClock(rate=3.0, offset=50.0)) == 1.0
