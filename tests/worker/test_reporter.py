"""The reporter keeps a report our primary could not store (its disk is full) and sends it
again; any other refusal is counted and dropped, as before."""

from __future__ import annotations

import asyncio

from narwhal.errors import ErrorCode, RemoteError
from narwhal.messages import OurBatch
from narwhal.worker import reporter as reporter_module
from narwhal.worker.metrics import WorkerMetrics
from narwhal.worker.reporter import PrimaryReporter


class Primary:
    """Answers each send with the next scripted error (then acks)."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.sends = 0

    async def send(self, primary: bytes, message: object) -> asyncio.Task[None]:
        self.sends += 1
        error = self.errors.pop(0) if self.errors else None

        async def answer() -> None:
            if error is not None:
                raise error
        return asyncio.ensure_future(answer())


async def report_once(primary: Primary, monkeypatch) -> tuple[WorkerMetrics, list[object]]:
    monkeypatch.setattr(reporter_module, "REPORT_RETRY", 0.01)
    acked: list[object] = []
    metrics = WorkerMetrics()
    reporter = PrimaryReporter(primary, b"p" * 32, metrics, on_acked=acked.append)
    reporter.start()
    reporter.report(OurBatch(b"d" * 32, 0, 10))
    await asyncio.sleep(0.2)
    await reporter.close()
    return metrics, acked


async def test_a_report_our_full_primary_refused_is_sent_again_until_it_is_stored(monkeypatch):
    full = RemoteError(ErrorCode.STORAGE_FAILED, "disk full")
    primary = Primary(full, full)
    metrics, acked = await report_once(primary, monkeypatch)
    assert primary.sends == 3 and len(acked) == 1
    assert metrics.errors["report_deferred"] == 2 and metrics.errors["report_failed"] == 0


async def test_other_refusals_are_counted_and_dropped(monkeypatch):
    primary = Primary(RemoteError(ErrorCode.INVALID, "no worker 0"))
    metrics, acked = await report_once(primary, monkeypatch)
    assert primary.sends == 1 and acked == []
    assert metrics.errors["report_failed"] == 1
