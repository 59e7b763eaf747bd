"""Backpressure: with no quorum possible, intake slows clients, then refuses them, and the
worker's pending bytes stay bounded; once peers return, intake resumes."""

from __future__ import annotations

import asyncio

import pytest

from narwhal import messages
from narwhal.errors import ErrorCode, RemoteError

from .harness import eventually, submit

LIMIT = 5_000


async def test_intake_slows_then_refuses_and_recovers(make_cluster):
    cluster = make_cluster(batch_size=2_000, max_transaction_size=1_000,
                           max_pending_transactions_bytes=LIMIT)
    primary0 = await cluster.start_primary(0)
    worker0 = await cluster.start_worker(0, admission_timeout=0.3)  # alone: no quorum
    client = await cluster.client(0)
    loop = asyncio.get_running_loop()

    accepted = 0
    for _ in range(3):  # 6,000 bytes: the third submission waits, then is refused
        try:
            accepted += (await submit(client, [b"t" * 1_000] * 2)).count
        except RemoteError as exc:
            assert exc.code is ErrorCode.OVERLOADED
    started = loop.time()
    with pytest.raises(RemoteError) as info:
        await submit(client, [b"t" * 1_000] * 2)
    assert info.value.code is ErrorCode.OVERLOADED
    assert loop.time() - started >= 0.25  # slowed first, refused after the wait
    status = worker0.status()
    assert accepted == 4 and status["txs_received"] == 4
    assert status["pending_tx_bytes"] == 4_000 <= LIMIT
    assert status["submissions_slowed"] >= 2 and status["errors"]["overloaded"] >= 2
    assert status["quorum_waits_outstanding"] == 2 and not primary0.ours

    # A burst changes nothing: every submission is refused, nothing more is held.
    burst = await asyncio.gather(*(submit(client, [b"b" * 1_000] * 2) for _ in range(20)),
                                 return_exceptions=True)
    refusals = (ErrorCode.OVERLOADED, ErrorCode.RATE_LIMITED)  # a burst may also meet the rate limit
    assert all(isinstance(r, RemoteError) and r.code in refusals for r in burst), burst
    assert worker0.status()["pending_tx_bytes"] == 4_000
    assert worker0.status()["submissions_waiting"] == 0

    # A waiting client gets in as soon as a quorum frees room.
    worker0.intake.admission_timeout = 10.0
    waiting = asyncio.ensure_future(submit(client, [b"w" * 1_000] * 2))
    await eventually(lambda: worker0.status()["submissions_waiting"] == 1)
    for i in (1, 2):
        await cluster.start_worker(i)
    assert await waiting == messages.TransactionsAccepted(2)
    await eventually(lambda: len(primary0.ours) >= 2)
    assert await submit(client, [b"u" * 1_000] * 2) == messages.TransactionsAccepted(2)
    await eventually(lambda: worker0.status()["pending_tx_bytes"] == 0, timeout=10)
