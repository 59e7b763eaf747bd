"""A bounded task pool per peer: what runs the network's sends and requests to one peer.

How it works: every piece of work is a *job* that is, at any moment, in exactly one
state: ``IDLE`` (admitted, holding nothing: not started yet, or between an attempt and
its backoff), ``WAITING`` (queued for a slot), ``RUNNING`` (holding a slot), ``BACKOFF``
(sleeping between two attempts, holding no slot) or ``DONE``. The gauges are the counts
of jobs per state, so they cannot drift: one transition function moves a job, hands a
freed slot to the next waiter (FIFO, directly, so nobody can barge in) and admits the next
blocked :meth:`BoundedExecutor.spawn` when a job finishes.

Why two bounds:

- ``capacity`` bounds the attempts running at once against one peer, so a slow peer
  gets a bounded number of concurrent requests and cannot absorb the node's resources.
  Backoff sleeps never hold a slot (holding one is the MystenLabs bug where sleeping
  retries starve the pool, so fresh sends to a recovered peer wait behind them).
- ``max_pending`` bounds everything the executor holds (running + waiting for a slot +
  backing off), because each job pins its message in memory: with a peer down for hours,
  an unbounded queue of retries would grow without limit. :meth:`spawn` waits for room
  (backpressure on the producer); :meth:`try_spawn` refuses at once.

Guarantees: cancelling a returned task at any point (before it starts, waiting for a
slot, running, backing off) frees all it held; :meth:`close` cancels every task the
executor owns; no task is left unreferenced.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

from narwhal.errors import ExecutorClosed, NarwhalError, PoolFull
from narwhal.net.retry import Clock, OnRetry, RetryConfig, Sleep, is_transient, retry

__all__ = ["DEFAULT_CAPACITY", "DEFAULT_MAX_PENDING", "BoundedExecutor"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Attempts running at once against one peer: enough to keep a link busy with
#: pipelined requests, few enough that one slow peer cannot pin unbounded sockets/buffers.
DEFAULT_CAPACITY = 64
#: Jobs one peer's executor may hold (running + waiting + backing off): each pins its
#: message, so this caps the memory a peer that is down for hours can cost us.
DEFAULT_MAX_PENDING = 1024


class _State(enum.IntEnum):
    # IntEnum, not Enum: members are dict keys on the hot path and int hashing is C-fast.
    IDLE = 0
    WAITING = 1
    RUNNING = 2
    BACKOFF = 3
    DONE = 4


class _Job:
    __slots__ = ("state", "wakeup")

    def __init__(self) -> None:
        self.state = _State.IDLE
        #: Resolved when a slot is handed to this job while it is WAITING.
        self.wakeup: asyncio.Future[None] | None = None


class BoundedExecutor:
    """Runs async work for one peer with at most ``capacity`` attempts at once and at
    most ``max_pending`` jobs held in total. Use one per peer, inside one event loop."""

    def __init__(
        self,
        capacity: int = DEFAULT_CAPACITY,
        max_pending: int = DEFAULT_MAX_PENDING,
        *,
        name: str = "executor",
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if max_pending < capacity:
            raise ValueError(f"max_pending ({max_pending}) must be >= capacity ({capacity})")
        self._capacity = capacity
        self._max_pending = max_pending
        self._name = name
        self._sleep = sleep
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._counts = dict.fromkeys(_State, 0)
        self._slot_queue: collections.deque[_Job] = collections.deque()
        self._admission_queue: collections.deque[asyncio.Future[_Job]] = collections.deque()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._spawned = 0
        self._completed = 0
        self._failed = 0
        self._cancelled = 0
        self._retries = 0
        self._rejected = 0

    # --- gauges and counters (read-only, for metrics) ---------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def capacity(self) -> int:
        """Slots: attempts that may run at once."""
        return self._capacity

    @property
    def max_pending(self) -> int:
        """Jobs that may be held at once (running, waiting, backing off)."""
        return self._max_pending

    @property
    def in_flight(self) -> int:
        """Jobs holding a slot."""
        return self._counts[_State.RUNNING]

    @property
    def waiting(self) -> int:
        """Jobs queued for a slot."""
        return self._counts[_State.WAITING]

    @property
    def backing_off(self) -> int:
        """Jobs sleeping between two attempts (they hold no slot)."""
        return self._counts[_State.BACKOFF]

    @property
    def pending(self) -> int:
        """Every job held and not yet finished."""
        counts = self._counts
        return (
            counts[_State.IDLE]
            + counts[_State.WAITING]
            + counts[_State.RUNNING]
            + counts[_State.BACKOFF]
        )

    @property
    def spawned(self) -> int:
        return self._spawned

    @property
    def completed(self) -> int:
        return self._completed

    @property
    def failed(self) -> int:
        return self._failed

    @property
    def cancelled(self) -> int:
        return self._cancelled

    @property
    def retries(self) -> int:
        """Backoff sleeps started by :meth:`spawn_with_retries` jobs."""
        return self._retries

    @property
    def rejected(self) -> int:
        """:meth:`try_spawn` calls refused with :class:`PoolFull`."""
        return self._rejected

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        return (
            f"<BoundedExecutor {self._name} in_flight={self.in_flight}/{self._capacity} "
            f"waiting={self.waiting} backing_off={self.backing_off} "
            f"pending={self.pending}/{self._max_pending}>"
        )

    # --- spawning -----------------------------------------------------------------------

    async def spawn(self, fn: Callable[[], Awaitable[T]]) -> asyncio.Task[T]:
        """Wait while ``pending >= max_pending``, then return a task that waits for a
        slot, awaits ``fn()`` once and frees the slot.

        Raises ``ExecutorClosed`` once the executor is closed (also to callers blocked here
        when :meth:`close` is called).
        """
        job = await self._admit()
        return self._start(job, self._run_in_slot(job, fn))

    def try_spawn(self, fn: Callable[[], Awaitable[T]]) -> asyncio.Task[T]:
        """Start ``fn()`` in a slot taken now, never waiting.

        Raises :class:`PoolFull` at once when no slot is free (or others are queued for
        one) or when ``pending >= max_pending`` (e.g. every job is backing off).
        """
        loop = asyncio.get_running_loop()
        self._check_open()
        if (
            self.in_flight >= self._capacity
            or self._slot_queue
            or self.pending >= self._max_pending
            or self._admission_queue
        ):
            self._rejected += 1
            raise PoolFull(
                f"{self._name}: {self.in_flight}/{self._capacity} slots busy, "
                f"{self.pending}/{self._max_pending} pending"
            )
        job = self._new_job()
        self._set_state(job, _State.RUNNING)
        return self._start(job, self._run_in_slot(job, fn), loop)

    async def spawn_with_retries(
        self,
        fn: Callable[[], Awaitable[T]],
        config: RetryConfig,
        *,
        on_retry: OnRetry | None = None,
    ) -> asyncio.Task[T]:
        """Like :meth:`spawn`, but the task retries ``fn`` with :func:`retry`.

        Each attempt takes a slot and frees it before its backoff sleep. The task ends
        with ``fn``'s result, its first permanent error, or its last transient error when
        ``config.max_elapsed_time`` runs out. ``on_retry`` is called before each sleep.
        """
        job = await self._admit()
        return self._start(job, self._run_with_retries(job, fn, config, on_retry))

    # --- shutdown -----------------------------------------------------------------------

    def close(self) -> None:
        """Refuse new work, fail blocked :meth:`spawn` callers, cancel every owned task."""
        self._closed = True
        while self._admission_queue:
            waiter = self._admission_queue.popleft()
            if not waiter.done():
                waiter.set_exception(ExecutorClosed(f"{self._name}: executor closed"))
        for task in list(self._tasks):
            task.cancel()

    async def aclose(self) -> None:
        """:meth:`close`, then wait until every owned task has finished.

        Waits forever for a task whose ``fn`` swallows its cancellation.
        """
        self.close()
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # --- internals ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ExecutorClosed(f"{self._name}: executor closed")

    def _new_job(self) -> _Job:
        job = _Job()
        self._counts[_State.IDLE] += 1
        return job

    async def _admit(self) -> _Job:
        """Reserve a pending place, waiting FIFO behind earlier blocked callers."""
        self._check_open()
        if self.pending < self._max_pending and not self._admission_queue:
            return self._new_job()
        waiter: asyncio.Future[_Job] = asyncio.get_running_loop().create_future()
        self._admission_queue.append(waiter)
        try:
            job = await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # A place was reserved for us just before we were cancelled: give it back.
                self._set_state(waiter.result(), _State.DONE)
            elif waiter in self._admission_queue:
                self._admission_queue.remove(waiter)
            raise
        if self._closed:  # reserved for us, but closed before we resumed
            self._set_state(job, _State.DONE)
            self._check_open()
        return job

    def _start(
        self,
        job: _Job,
        coro: Coroutine[Any, Any, T],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> asyncio.Task[T]:
        loop = loop if loop is not None else asyncio.get_running_loop()
        self._spawned += 1
        task = loop.create_task(coro, name=f"{self._name}-{self._spawned}")
        self._tasks.add(task)
        # A task cancelled before its first step never runs the coroutine's `finally`,
        # so the done callback is what guarantees the job's resources are freed.
        task.add_done_callback(functools.partial(self._on_done, job))
        return task

    def _on_done(self, job: _Job, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self._set_state(job, _State.DONE)
        if task.cancelled():
            self._cancelled += 1
            return
        exc = task.exception()
        if exc is None:
            self._completed += 1
            return
        self._failed += 1
        if is_transient(exc) or isinstance(exc, NarwhalError):
            logger.debug("%s: task %s failed: %r", self._name, task.get_name(), exc)
        else:
            logger.warning(
                "%s: task %s raised a non-network error",
                self._name,
                task.get_name(),
                exc_info=exc,
            )

    def _set_state(self, job: _Job, state: _State) -> None:
        """The one place a job moves; keeps gauges, slot handoff and admission in step."""
        old = job.state
        if old is state or old is _State.DONE:
            return
        job.state = state
        self._counts[old] -= 1
        if state is not _State.DONE:
            self._counts[state] += 1
        if old is _State.WAITING and state is not _State.RUNNING and job in self._slot_queue:
            self._slot_queue.remove(job)
        if old is _State.RUNNING:
            self._grant_slots()
        if state is _State.DONE:
            self._admit_waiters()

    def _grant_slots(self) -> None:
        """Hand free slots to queued jobs, first come first served."""
        while self._slot_queue and self.in_flight < self._capacity:
            job = self._slot_queue.popleft()
            if job.wakeup is None or job.wakeup.done():
                continue  # its task was cancelled; its `finally` will tidy up
            self._set_state(job, _State.RUNNING)
            job.wakeup.set_result(None)

    def _admit_waiters(self) -> None:
        """Reserve places for blocked :meth:`spawn` callers, first come first served."""
        while self._admission_queue and self.pending < self._max_pending:
            waiter = self._admission_queue.popleft()
            if not waiter.done():
                waiter.set_result(self._new_job())

    async def _acquire_slot(self, job: _Job) -> None:
        if self.in_flight < self._capacity and not self._slot_queue:
            self._set_state(job, _State.RUNNING)
            return
        job.wakeup = asyncio.get_running_loop().create_future()
        self._set_state(job, _State.WAITING)
        self._slot_queue.append(job)
        await job.wakeup  # _grant_slots moved us to RUNNING before resolving this

    async def _run_in_slot(self, job: _Job, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            if job.state is not _State.RUNNING:
                await self._acquire_slot(job)
            return await fn()
        finally:
            self._set_state(job, _State.IDLE)

    async def _run_with_retries(
        self,
        job: _Job,
        fn: Callable[[], Awaitable[T]],
        config: RetryConfig,
        on_retry: OnRetry | None,
    ) -> T:
        async def attempt() -> T:
            return await self._run_in_slot(job, fn)

        async def backoff(delay: float) -> None:
            self._set_state(job, _State.BACKOFF)
            try:
                await self._sleep(delay)
            finally:
                self._set_state(job, _State.IDLE)

        def count_retry(number: int, error: BaseException, delay: float) -> None:
            self._retries += 1
            if on_retry is not None:
                on_retry(number, error, delay)

        return await retry(
            attempt,
            config,
            sleep=backoff,
            rng=self._rng,
            clock=self._clock,
            on_retry=count_retry,
        )
