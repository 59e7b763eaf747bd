"""OutputBatches: one ask per batch, shared by every subscriber that wants it.

Regression (found by tests/adversarial/test_strangers.py, 2026-12-06): the shared ask ran
in the first caller's task, so when that subscriber left (a client probe closing its
connection) the CancelledError reached every other waiter, whose stream then ended
silently with its connection open: the test's long-lived subscriber stopped receiving
indexes for good while the node kept committing.
"""

from __future__ import annotations

import asyncio

from narwhal.messages import Batch, BatchesResponse, encode
from narwhal.primary.output_batches import OutputBatches


class SlowWorker:
    """Answers RequestBatches with ``batch`` once ``release`` is set; counts the asks."""

    def __init__(self, batch: Batch) -> None:
        self.batch, self.asks, self.release = batch, 0, asyncio.Event()

    async def request(self, worker_id: int, tag: int, body: bytes, timeout: float) -> tuple[int, bytes]:
        self.asks += 1
        await self.release.wait()
        response = BatchesResponse((self.batch,), ())
        return 0, encode(response)


async def test_one_waiter_leaving_does_not_cancel_the_others_answer() -> None:
    batch = Batch((b"tx-1", b"tx-2"))
    worker = SlowWorker(batch)
    batches = OutputBatches(worker.request, timeout=5.0)
    first = asyncio.ensure_future(batches.get(batch.digest(), 0))
    second = asyncio.ensure_future(batches.get(batch.digest(), 0))
    await asyncio.sleep(0.01)
    first.cancel()  # the first asker's subscriber leaves while the ask is in flight
    await asyncio.sleep(0.01)
    worker.release.set()
    body = await asyncio.wait_for(second, 5)
    assert bytes(body) == encode(batch)
    assert first.cancelled()
    assert worker.asks == 1, "concurrent asks for one digest share one request"


async def test_an_ask_everyone_left_still_fills_the_cache_and_close_cancels_the_rest() -> None:
    batch = Batch((b"tx",))
    worker = SlowWorker(batch)
    batches = OutputBatches(worker.request, timeout=5.0)
    waiter = asyncio.ensure_future(batches.get(batch.digest(), 0))
    await asyncio.sleep(0.01)
    waiter.cancel()
    worker.release.set()
    await asyncio.sleep(0.05)
    assert bytes(await batches.get(batch.digest(), 0)) == encode(batch)
    assert worker.asks == 1

    other = Batch((b"other",))
    worker.batch, worker.release = other, asyncio.Event()
    pending = asyncio.ensure_future(batches.get(other.digest(), 0))
    await asyncio.sleep(0.01)
    await batches.close()
    await asyncio.gather(pending, return_exceptions=True)
    assert pending.cancelled() or isinstance(pending.exception(), asyncio.CancelledError)
