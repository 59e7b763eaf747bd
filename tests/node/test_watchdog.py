"""The event-loop watchdog: a blocked loop is reported once, with where it was blocked."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from narwhal.metrics import StatusCollector
from narwhal.node.watchdog import LoopWatchdog


def _block_the_loop_for(seconds: float) -> None:
    time.sleep(seconds)  # a blocking call on the loop thread: what the watchdog is for


async def test_a_stall_is_counted_once_and_logged_with_the_blocking_frame(
        caplog: pytest.LogCaptureFixture) -> None:
    watchdog = LoopWatchdog(threshold=0.1, beat=0.02)
    watchdog.start()
    try:
        await asyncio.sleep(0.1)
        assert watchdog.stalls == 0
        with caplog.at_level(logging.WARNING, logger="narwhal.node.watchdog"):
            _block_the_loop_for(0.45)
            await asyncio.sleep(0.1)
        assert watchdog.stalls == 1  # one stall, however long, is one report
        assert watchdog.max_lag >= 0.4
        (record,) = [r for r in caplog.records if "stalled" in r.getMessage()]
        assert "_block_the_loop_for" in record.getMessage()
        await asyncio.sleep(0.2)
        assert watchdog.stalls == 1  # a loop that runs again is no stall
    finally:
        watchdog.stop()
    status = watchdog.status()
    assert status["loop_stalls"] == 1 and status["loop_max_lag_ms"] >= 400
    metrics = {m.name: m for m in StatusCollector(lambda: {**status, "workers": {}}).collect()}
    assert metrics["narwhal_loop_stalls"].samples[0].value == 1
    assert metrics["narwhal_loop_max_lag_seconds"].samples[0].value >= 0.4


async def test_garbage_collections_are_timed_while_watched() -> None:
    import gc

    watchdog = LoopWatchdog(threshold=10.0, beat=0.02)
    gc.disable()  # only the collections below, none triggered by the allocations
    watchdog.start()
    try:
        garbage = [[] for _ in range(200_000)]
        for i, item in enumerate(garbage):
            item.append(garbage[i - 1])  # cycles: work for the collector
        del garbage, item
        gc.collect()  # a full collection
        gc.collect(0)
    finally:
        watchdog.stop()
        gc.enable()
    gc.collect()  # after stop: not counted
    status = watchdog.status()
    assert status["gc_full_collections"] == 1 and status["gc_max_pause_ms"] > 0
    metrics = {m.name: m for m in StatusCollector(lambda: {**status, "workers": {}}).collect()}
    assert metrics["narwhal_gc_full_collections"].samples[0].value == 1
    assert metrics["narwhal_gc_max_pause_seconds"].samples[0].value > 0
