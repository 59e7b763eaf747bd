"""The output pacer: turns in order of asking, a few at once, a byte rate for all."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from narwhal.primary.output_pacer import FairPacer


async def _run_streams(pacer: FairPacer, streams: int, part: int, seconds: float,
                       hold: float = 0.0) -> tuple[Counter[int], list[tuple[float, int]], int]:
    """``streams`` tasks taking turns for ``seconds``; (turns per stream, (time, bytes)
    of every turn, most turns running at once)."""
    turns: Counter[int] = Counter()
    sent: list[tuple[float, int]] = []
    running = most = 0

    async def stream(i: int) -> None:
        nonlocal running, most
        while True:
            async with pacer.turn() as turn:
                running += 1
                most = max(most, running)
                if hold:
                    await asyncio.sleep(hold)
                turn.spent = part
                turns[i] += 1
                sent.append((time.monotonic(), part))
                running -= 1
            await asyncio.sleep(0)

    tasks = [asyncio.ensure_future(stream(i)) for i in range(streams)]
    await asyncio.sleep(seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return turns, sent, most


async def test_many_streams_together_send_at_most_the_rate():
    rate, burst, part, slots = 200_000, 50_000, 4_000, 4
    pacer = FairPacer(rate=rate, burst=burst, slots=slots)
    started = time.monotonic()
    turns, sent, _ = await _run_streams(pacer, streams=20, part=part, seconds=1.5)
    elapsed = time.monotonic() - started
    total = sum(n for _, n in sent)
    # the bound of the module docstring, over the whole run and over its second half
    assert total <= burst + rate * elapsed + slots * part
    half = [n for t, n in sent if t >= started + elapsed / 2]
    assert sum(half) <= burst + rate * elapsed / 2 + slots * part
    assert total >= 0.5 * rate * elapsed  # and the rate is used, not starved (loaded box)
    assert pacer.waits > 0
    assert len(turns) == 20 and max(turns.values()) - min(turns.values()) <= 1  # shared fairly


async def test_turns_go_round_every_stream_in_order():
    pacer = FairPacer(rate=10**9, burst=10**9, slots=2)
    turns, _, most = await _run_streams(pacer, streams=20, part=1, seconds=0.5, hold=0.001)
    assert len(turns) == 20
    assert max(turns.values()) - min(turns.values()) <= 1  # nobody gets a second turn early
    assert most <= 2


async def test_a_stream_cancelled_while_waiting_or_granted_frees_its_place():
    pacer = FairPacer(rate=10**9, burst=10**9, slots=1)
    async with pacer.turn():
        waiter = asyncio.ensure_future(pacer.turn().__aenter__())
        await asyncio.sleep(0.01)
        assert pacer.waiting == 1
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
    assert pacer.waiting == 0
    async with asyncio.timeout(1):  # the slot is free again
        async with pacer.turn() as turn:
            turn.spent = 5
    assert pacer.bytes == 5


def test_parameters_must_be_positive():
    with pytest.raises(ValueError):
        FairPacer(rate=0, burst=1, slots=1)
