from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from narwhal.errors import ConnectionClosed, ExecutorClosed, PeerUnknown, PoolFull
from narwhal.net.executor import BoundedExecutor
from narwhal.net.retry import RetryConfig

FAST = RetryConfig(initial_interval=0.001, max_interval=0.001, randomization_factor=0.0)


async def settle(rounds: int = 10) -> None:
    """Let every ready callback and task step run."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def assert_idle(ex: BoundedExecutor) -> None:
    assert (ex.in_flight, ex.waiting, ex.backing_off, ex.pending) == (0, 0, 0, 0)
    assert not ex._tasks
    assert not ex._slot_queue and not ex._admission_queue
    assert ex.spawned == ex.completed + ex.failed + ex.cancelled


async def finish(*tasks: asyncio.Future[Any]) -> None:
    await asyncio.gather(*tasks, return_exceptions=True)
    await settle()


class Probe:
    """Makes instrumented fns: counts how many run at once; each can block on a gate."""

    def __init__(self, ex: BoundedExecutor | None = None) -> None:
        self.ex = ex
        self.running = 0
        self.peak = 0
        self.calls = 0
        self.order: list[str] = []

    def fn(
        self,
        label: str = "",
        gate: asyncio.Event | None = None,
        errors: list[BaseException] | None = None,
        yields: int = 0,
    ) -> Callable[[], Awaitable[str]]:
        async def run() -> str:
            self.calls += 1
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.order.append(label)
            if self.ex is not None:
                assert self.ex.in_flight <= self.ex.capacity
            try:
                for _ in range(yields):
                    await asyncio.sleep(0)
                if gate is not None:
                    await gate.wait()
                if errors:
                    raise errors.pop(0)
                return label
            finally:
                self.running -= 1

        return run


class GatedSleep:
    """A backoff sleep that lasts until the test opens it."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await self.gate.wait()


class OneSlot:
    """A capacity-1 executor whose slot "held" keeps until ``gate`` opens, with one
    task per label queued behind it for the slot."""

    def __init__(self, max_pending: int) -> None:
        self.ex = BoundedExecutor(1, max_pending)
        self.probe = Probe(self.ex)
        self.gate = asyncio.Event()
        self.tasks: dict[str, asyncio.Task[str]] = {}

    @classmethod
    async def start(cls, max_pending: int, *labels: str) -> OneSlot:
        pool = cls(max_pending)
        for label in ("held", *labels):
            gate = pool.gate if label == "held" else None
            pool.tasks[label] = await pool.ex.spawn(pool.probe.fn(label, gate))
        await settle()
        return pool

    def spawn_blocked(self) -> asyncio.Task[asyncio.Task[str]]:
        """A caller blocked in ``spawn()`` because max_pending is reached."""
        return asyncio.create_task(self.ex.spawn(self.probe.fn("blocked")))

    async def finish(self, *extra: asyncio.Future[Any]) -> None:
        await finish(*self.tasks.values(), *extra)


class BackingOff:
    """A capacity-1 executor with one retrying job ("flaky") asleep in its first backoff
    until ``sleep.gate`` opens; it succeeds after ``failures`` transient errors."""

    def __init__(self, max_pending: int) -> None:
        self.sleep = GatedSleep()
        self.ex = BoundedExecutor(1, max_pending, sleep=self.sleep)
        self.probe = Probe(self.ex)
        self.retried: list[int] = []

    @classmethod
    async def start(
        cls, max_pending: int, failures: int = 1
    ) -> tuple[BackingOff, asyncio.Task[str]]:
        pool = cls(max_pending)
        task = await pool.ex.spawn_with_retries(
            pool.probe.fn("flaky", errors=[ConnectionClosed()] * failures),
            FAST,
            on_retry=lambda n, e, d: pool.retried.append(n),
        )
        await settle()
        assert (pool.ex.in_flight, pool.ex.backing_off) == (0, 1)
        return pool, task


@pytest.mark.parametrize(("capacity", "max_pending"), [(0, 1), (-1, 5), (4, 3)])
def test_rejects_invalid_bounds(capacity: int, max_pending: int) -> None:
    with pytest.raises(ValueError):
        BoundedExecutor(capacity, max_pending)


async def test_never_more_than_capacity_running() -> None:
    ex = BoundedExecutor(3, 10)
    probe = Probe(ex)
    rng = random.Random(3)
    tasks = [await ex.spawn(probe.fn(str(i), yields=rng.randrange(5))) for i in range(100)]
    assert sorted(await asyncio.gather(*tasks)) == sorted(str(i) for i in range(100))
    await settle()
    assert probe.peak == 3
    assert ex.completed == 100
    assert_idle(ex)


async def test_slots_are_handed_out_first_come_first_served() -> None:
    pool = await OneSlot.start(10, "a", "b", "c")
    assert (pool.ex.in_flight, pool.ex.waiting) == (1, 3)
    pool.gate.set()
    await pool.finish()
    assert pool.probe.order == ["held", "a", "b", "c"]
    assert_idle(pool.ex)


async def test_try_spawn_raises_pool_full_and_succeeds_after_a_slot_frees() -> None:
    ex = BoundedExecutor(2, 10)
    probe = Probe(ex)
    gates = [asyncio.Event(), asyncio.Event()]
    running = [ex.try_spawn(probe.fn(str(i), gate)) for i, gate in enumerate(gates)]
    assert ex.in_flight == 2  # slots are taken synchronously
    with pytest.raises(PoolFull):
        ex.try_spawn(probe.fn("refused"))
    assert ex.rejected == 1
    gates[0].set()
    assert await running[0] == "0"
    extra = ex.try_spawn(probe.fn("extra"))
    assert await extra == "extra"
    gates[1].set()
    await finish(*running)
    assert "refused" not in probe.order
    assert_idle(ex)


async def test_try_spawn_does_not_jump_the_slot_queue() -> None:
    pool = await OneSlot.start(10, "queued")
    with pytest.raises(PoolFull):
        pool.ex.try_spawn(pool.probe.fn("barger"))
    pool.gate.set()
    await pool.finish()
    assert pool.probe.order == ["held", "queued"]
    assert_idle(pool.ex)


async def test_try_spawn_refuses_when_pending_is_full_even_with_a_free_slot() -> None:
    pool, task = await BackingOff.start(1)
    assert pool.ex.pending == 1
    with pytest.raises(PoolFull):
        pool.ex.try_spawn(pool.probe.fn("refused"))
    pool.sleep.gate.set()
    assert await task == "flaky"
    await settle()
    assert_idle(pool.ex)


async def test_spawn_blocks_at_max_pending_and_resumes() -> None:
    pool = await OneSlot.start(2, "queued")
    blocked = pool.spawn_blocked()
    await settle()
    assert not blocked.done()
    assert pool.ex.pending == 2
    pool.gate.set()
    assert await (await blocked) == "blocked"
    await pool.finish()
    assert pool.probe.order == ["held", "queued", "blocked"]
    assert_idle(pool.ex)


async def test_backoff_sleep_does_not_hold_a_slot() -> None:
    pool, flaky = await BackingOff.start(4)
    other = await pool.ex.spawn(pool.probe.fn("other"))
    assert await other == "other"  # ran while `flaky` was sleeping in backoff
    assert not flaky.done()
    pool.sleep.gate.set()
    assert await flaky == "flaky"
    await settle()
    assert pool.probe.order == ["flaky", "other", "flaky"]
    assert pool.ex.retries == 1 and pool.retried == [1] and pool.sleep.delays == [0.001]
    assert_idle(pool.ex)


async def test_retry_task_reports_permanent_and_exhausted_errors() -> None:
    ex = BoundedExecutor(2, 4)
    probe = Probe(ex)
    permanent = await ex.spawn_with_retries(probe.fn(errors=[PeerUnknown()]), FAST)
    with pytest.raises(PeerUnknown):
        await permanent
    exhausted = await ex.spawn_with_retries(
        probe.fn(errors=[ConnectionClosed() for _ in range(10_000)]),
        RetryConfig(initial_interval=0.001, max_interval=0.001, max_elapsed_time=0.02),
    )
    with pytest.raises(ConnectionClosed):
        await exhausted
    await settle()
    assert ex.failed == 2 and ex.retries >= 1
    assert_idle(ex)


async def test_failures_and_successes_are_counted() -> None:
    ex = BoundedExecutor(2, 4)
    probe = Probe(ex)
    ok = await ex.spawn(probe.fn("ok"))
    bad = ex.try_spawn(probe.fn(errors=[ConnectionClosed()]))
    await finish(ok, bad)
    assert isinstance(bad.exception(), ConnectionClosed)
    assert (ex.spawned, ex.completed, ex.failed, ex.cancelled) == (2, 1, 1, 0)
    assert_idle(ex)


# --- cancellation at every state -------------------------------------------------------------


async def test_cancel_before_the_task_starts() -> None:
    ex = BoundedExecutor(1, 2)
    probe = Probe(ex)
    tasks = [await ex.spawn(probe.fn())]
    tasks[0].cancel()
    tasks.append(ex.try_spawn(probe.fn()))
    tasks[1].cancel()
    for task in tasks:
        await finish(task)
        assert task.cancelled()
    assert probe.calls == 0 and ex.cancelled == 2
    assert_idle(ex)


async def test_cancel_while_running() -> None:
    ex = BoundedExecutor(1, 2)
    probe = Probe(ex)
    task = await ex.spawn(probe.fn(gate=asyncio.Event()))
    await settle()
    assert ex.in_flight == 1
    task.cancel()
    await finish(task)
    assert probe.running == 0
    assert_idle(ex)


async def test_cancel_while_waiting_for_a_slot_passes_it_to_the_next() -> None:
    pool = await OneSlot.start(4, "skipped", "after")
    assert pool.ex.waiting == 2
    pool.tasks["skipped"].cancel()
    await settle()
    assert pool.ex.waiting == 1
    pool.gate.set()
    await pool.finish()
    assert pool.probe.order == ["held", "after"]
    assert_idle(pool.ex)


async def test_cancel_racing_a_slot_release_passes_it_on() -> None:
    """The waiter is cancelled in the same loop step that frees the slot."""
    pool = await OneSlot.start(4, "skipped", "after")
    pool.tasks["held"].cancel()
    pool.tasks["skipped"].cancel()
    await pool.finish()
    assert pool.probe.order == ["held", "after"]
    assert_idle(pool.ex)


async def test_cancel_after_a_slot_was_granted_but_before_resuming() -> None:
    pool = await OneSlot.start(4, "granted", "after")
    granted = pool.tasks["granted"]
    pool.gate.set()  # "held" wakes first, finishes and hands its slot to "granted" ...
    asyncio.get_running_loop().call_soon(granted.cancel)  # ... which is cancelled before it runs
    await pool.finish()
    assert granted.cancelled()
    assert pool.probe.order == ["held", "after"]
    assert_idle(pool.ex)


async def test_cancel_while_backing_off() -> None:
    pool, task = await BackingOff.start(2, failures=3)
    task.cancel()
    await finish(task)
    assert task.cancelled() and pool.probe.calls == 1
    assert_idle(pool.ex)


async def test_cancel_a_spawn_blocked_on_max_pending() -> None:
    pool = await OneSlot.start(1)
    blocked = pool.spawn_blocked()
    await settle()
    blocked.cancel()
    await finish(blocked)
    assert blocked.cancelled()
    pool.gate.set()
    await pool.finish()
    assert pool.probe.order == ["held"]
    assert_idle(pool.ex)


async def test_cancel_a_spawn_after_its_place_was_reserved() -> None:
    pool = await OneSlot.start(1)
    blocked = pool.spawn_blocked()
    await settle()
    # Registered after the executor's own done callback, which reserves the place.
    pool.tasks["held"].add_done_callback(lambda _: blocked.cancel())
    pool.gate.set()
    await pool.finish(blocked)
    assert blocked.cancelled()
    assert pool.probe.order == ["held"]
    assert_idle(pool.ex)


@pytest.mark.parametrize("seed", range(5))
async def test_random_cancellations_leak_nothing(seed: int) -> None:
    rng = random.Random(seed)
    ex = BoundedExecutor(3, 8, sleep=lambda delay: asyncio.sleep(0), rng=rng)
    probe = Probe(ex)
    tasks: list[asyncio.Future[Any]] = []

    async def cancel_later(target: asyncio.Future[Any], steps: int) -> None:
        for _ in range(steps):
            await asyncio.sleep(0)
        target.cancel()

    async def spawn_and_wait(fn: Callable[[], Awaitable[str]]) -> str:
        return await (await ex.spawn(fn))

    def errors() -> list[BaseException]:
        kinds = [ConnectionClosed, ConnectionClosed, PeerUnknown]
        return [rng.choice(kinds)() for _ in range(rng.randrange(3))]

    for i in range(400):
        fn = probe.fn(str(i), errors=errors(), yields=rng.randrange(4))
        kind = rng.randrange(4)
        if kind == 0:  # the caller itself may be cancelled while blocked in spawn()
            target: asyncio.Future[Any] = asyncio.create_task(spawn_and_wait(fn))
        elif kind == 1:
            target = await ex.spawn(fn)
        elif kind == 2:
            target = await ex.spawn_with_retries(fn, FAST)
        else:
            try:
                target = ex.try_spawn(fn)
            except PoolFull:
                continue
        tasks.append(target)
        if rng.random() < 0.5:
            tasks.append(asyncio.create_task(cancel_later(target, rng.randrange(6))))
        if rng.random() < 0.3:
            await asyncio.sleep(0)
    await finish(*tasks)
    assert probe.peak <= 3 and probe.running == 0
    assert ex.cancelled > 0 and ex.completed > 0
    assert_idle(ex)


async def test_ten_thousand_spawn_and_cancel_cycles() -> None:
    ex = BoundedExecutor(4, 16)
    probe = Probe(ex)
    tasks = []
    for i in range(10_000):
        task = await ex.spawn(probe.fn(yields=1))
        for _ in range(i % 3):  # cancel before start, while running, or after a step
            await asyncio.sleep(0)
        task.cancel()
        tasks.append(task)
    await finish(*tasks)
    assert ex.spawned == 10_000
    assert ex.completed + ex.cancelled == 10_000 and ex.cancelled > 3_000
    assert_idle(ex)


# --- shutdown --------------------------------------------------------------------------------


async def test_close_cancels_everything() -> None:
    pool, backing_off = await BackingOff.start(3)
    ex, probe = pool.ex, pool.probe
    running = await ex.spawn(probe.fn(gate=asyncio.Event()))
    waiting = await ex.spawn(probe.fn())
    blocked = asyncio.create_task(ex.spawn(probe.fn()))
    await settle()
    assert (ex.backing_off, ex.in_flight, ex.waiting, ex.pending) == (1, 1, 1, 3)
    await ex.aclose()
    assert all(t.cancelled() for t in (backing_off, running, waiting))
    with pytest.raises(ExecutorClosed):
        await blocked
    with pytest.raises(ExecutorClosed):
        await ex.spawn(probe.fn())
    with pytest.raises(ExecutorClosed):
        ex.try_spawn(probe.fn())
    assert ex.closed and ex.cancelled == 3
    assert_idle(ex)


async def test_async_context_manager_closes() -> None:
    probe = Probe()
    async with BoundedExecutor(2, 4) as ex:
        task = await ex.spawn(probe.fn(gate=asyncio.Event()))
        await settle()
    assert task.cancelled()
    assert_idle(ex)


async def test_close_after_a_place_was_reserved_refuses_the_blocked_spawn() -> None:
    pool = await OneSlot.start(1)
    blocked = pool.spawn_blocked()
    await settle()
    # Registered after the executor's own done callback, which reserves the place.
    pool.tasks["held"].add_done_callback(lambda _: pool.ex.close())
    pool.gate.set()
    await pool.finish()
    with pytest.raises(ExecutorClosed):
        await blocked
    assert pool.probe.order == ["held"]
    assert_idle(pool.ex)


async def test_a_bug_in_fn_is_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    ex = BoundedExecutor(1, 1, name="peer-7")
    probe = Probe(ex)
    task = ex.try_spawn(probe.fn(errors=[ZeroDivisionError()]))
    await finish(task)
    assert isinstance(task.exception(), ZeroDivisionError)
    assert ex.failed == 1
    assert "peer-7" in caplog.text and "ZeroDivisionError" in caplog.text
    assert "peer-7" in repr(ex) and "in_flight=0/1" in repr(ex)
    assert_idle(ex)
