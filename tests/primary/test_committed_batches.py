"""CommittedBatches, socket-free: what it asks of our worker, when, and what it tells."""

from __future__ import annotations

import itertools
import logging

import pytest

from narwhal import messages
from narwhal.errors import ErrorCode, RequestRejected
from narwhal.metrics import StatusCollector
from narwhal.primary import committed_batches as module
from narwhal.primary.committed_batches import WARN_AFTER, CommittedBatches

AUTHOR, OTHER = b"a" * 32, b"b" * 32


class Worker:
    """Records every request; refuses while ``refuse`` is set."""

    def __init__(self) -> None:
        self.requests: list[tuple[int, messages.Synchronize]] = []
        self.refuse = False

    async def request(self, worker_id, message, timeout):
        self.requests.append((worker_id, message))
        if self.refuse:
            raise RequestRejected(ErrorCode.OVERLOADED, "too many batches being synchronized")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def tracker() -> tuple[CommittedBatches, Worker, Clock]:
    worker, clock = Worker(), Clock()
    return CommittedBatches(request_worker=worker.request, clock=clock), worker, clock


async def test_missing_batches_are_asked_of_the_worker_by_author_until_they_arrive():
    batches, worker, clock = tracker()
    batches.want(7, b"1" * 32, 0, AUTHOR)
    batches.want(7, b"2" * 32, 0, AUTHOR)
    batches.want(8, b"3" * 32, 1, OTHER)
    batches.want(9, b"1" * 32, 0, AUTHOR)  # wanted once, by its first index
    await batches.ask_due()
    asked = {(w, m.target): m.digests for w, m in worker.requests}
    assert asked == {(0, AUTHOR): (b"1" * 32, b"2" * 32), (1, OTHER): (b"3" * 32,)}
    await batches.ask_due()
    assert len(worker.requests) == 2  # not due again yet
    batches.arrived(b"3" * 32, 1)
    batches.arrived(b"9" * 32, 0)  # never wanted: ignored
    assert len(batches) == 2 and batches.status()["oldest_missing_index"] == 7
    clock.now += module.FIRST_DELAY
    await batches.ask_due()
    assert [m.digests for _, m in worker.requests[2:]] == [(b"1" * 32, b"2" * 32)]
    batches.arrived(b"1" * 32, 0)
    batches.arrived(b"2" * 32, 0)
    assert len(batches) == 0 and batches.status()["batches_arrived"] == 3


async def test_a_batch_that_does_not_come_is_asked_again_with_a_growing_delay_and_a_warning(caplog):
    batches, worker, clock = tracker()
    worker.refuse = True  # e.g. an overloaded worker: asked again, never given up
    batches.want(1952, b"d" * 32, 0, AUTHOR)
    times = []
    with caplog.at_level(logging.WARNING, logger=module.__name__):
        for _ in range(2_000):
            before = len(worker.requests)
            await batches.ask_due()
            if len(worker.requests) > before:
                times.append(clock.now)
            clock.now += 0.25
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[:4] == [0.5, 1.0, 2.0, 4.0] and max(gaps) == module.MAX_DELAY
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1  # once per batch, after WARN_AFTER requests
    assert "output index 1952" in warnings[0] and ("64" * 32) in warnings[0]
    status = batches.status()
    assert status["stalled"] == 1 and status["sync_requests"] == len(times) > WARN_AFTER
    assert status["sync_request_failures"] == len(times) and status["missing_batches"] == 1


async def test_one_tick_asks_at_most_one_request_of_digests_per_worker_oldest_first():
    batches, worker, _clock = tracker()
    count = messages.MAX_DIGESTS_PER_REQUEST + 10
    for n in range(count):
        batches.want(n + 1, n.to_bytes(32, "big"), 0, AUTHOR)
    await batches.ask_due()
    assert sum(len(m.digests) for _, m in worker.requests) == messages.MAX_DIGESTS_PER_REQUEST
    assert worker.requests[0][1].digests[0] == (0).to_bytes(32, "big")
    await batches.ask_due()  # the rest, on the next tick
    assert worker.requests[-1][1].digests == tuple(n.to_bytes(32, "big")
                                                   for n in range(count - 10, count))


@pytest.mark.parametrize("missing", [0, 2])
def test_metrics_export_the_missing_batches(missing):
    status = {"primary": {"committed_batches": {
        "missing_batches": missing, "oldest_missing_index": 5 if missing else None,
        "sync_requests": 9, "sync_request_failures": 1, "batches_arrived": 3, "stalled": 1}}}
    samples = {s.name: s.value for family in StatusCollector(lambda: status).collect()
               for s in family.samples}
    assert samples["narwhal_output_missing_batches"] == missing
    assert samples["narwhal_output_oldest_missing_index"] == (5 if missing else 0)
    assert samples["narwhal_output_sync_requests_total"] == 9
    assert samples["narwhal_output_stalled_batches_total"] == 1
