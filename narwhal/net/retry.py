"""Retry with jittered exponential backoff, stopping on permanent errors.

How it works: :func:`retry` calls an attempt; when it fails with a *transient* error
(:func:`is_transient`) it sleeps the next delay drawn from a :class:`Backoff` and tries
again. The n-th nominal delay is ``min(initial_interval * multiplier**n, max_interval)``;
every delay is jittered uniformly over ``nominal * (1 ± randomization_factor)`` so that
many senders retrying against one recovering peer do not all hit it in the same instant.

Guarantees:

- A permanent error (``NarwhalError.transient`` is False, or an exception that is not a
  network condition at all, i.e. a bug) is raised at once: it is never retried.
- ``asyncio.CancelledError`` is never caught: cancelling the caller stops the retries at
  once, whether it is inside an attempt or sleeping between two.
- With ``max_elapsed_time`` set, retrying stops before a sleep would carry the total time
  past it; the *last error itself* is raised (not wrapped, so callers can still match its
  type), with a note (``BaseException.add_note``) saying how many attempts were made.

The defaults are those of MystenLabs narwhal's ``RetryConfig`` (500 ms, x1.5, 15 s, ±30%).
:class:`RetryConfig` and its defaults are configuration values, defined in
:mod:`narwhal.config.network` and re-exported here for the callers of :func:`retry`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

from narwhal.config.network import (
    DEFAULT_INITIAL_INTERVAL,
    DEFAULT_MAX_ELAPSED_TIME,
    DEFAULT_MAX_INTERVAL,
    DEFAULT_MULTIPLIER,
    DEFAULT_RANDOMIZATION_FACTOR,
    RetryConfig,
)
from narwhal.errors import NarwhalError
from narwhal.ports import RandomSource

__all__ = [
    "DEFAULT_INITIAL_INTERVAL",
    "DEFAULT_MAX_ELAPSED_TIME",
    "DEFAULT_MAX_INTERVAL",
    "DEFAULT_MULTIPLIER",
    "DEFAULT_RANDOMIZATION_FACTOR",
    "Backoff",
    "Clock",
    "OnRetry",
    "RetryConfig",
    "Sleep",
    "is_transient",
    "retry",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Called as ``on_retry(attempt_number, error, delay)`` before each backoff sleep;
#: ``attempt_number`` is the 1-based number of the attempt that just failed.
OnRetry = Callable[[int, BaseException, float], None]
#: An ``asyncio.sleep``-like coroutine function (injectable for tests).
Sleep = Callable[[float], Awaitable[object]]
#: A monotonic clock in seconds (injectable for tests).
Clock = Callable[[], float]


class Backoff(Iterator[float]):
    """The delays of one operation, in order; stateful, not thread-safe.

    Iterating yields jittered delays and stops once the next sleep would carry the time
    elapsed since construction (or :meth:`reset`) past ``max_elapsed_time``. A jittered
    delay may exceed ``max_interval`` by up to the randomization factor, as in the
    ``backoff`` crate.
    """

    def __init__(
        self,
        config: RetryConfig,
        *,
        rng: RandomSource | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self._config = config
        self._rng: RandomSource = rng if rng is not None else random.Random()
        self._clock = clock
        self._n = 0
        self._start = clock()

    @property
    def config(self) -> RetryConfig:
        return self._config

    @property
    def attempt(self) -> int:
        """How many delays have been drawn since construction or :meth:`reset`."""
        return self._n

    @property
    def nominal_interval(self) -> float:
        """The nominal (unjittered) interval the next delay is drawn around."""
        return self._config.nominal_interval(self._n)

    @property
    def elapsed(self) -> float:
        """Seconds since construction or the last :meth:`reset`."""
        return self._clock() - self._start

    def reset(self) -> None:
        """Start over: the next delay is drawn around ``initial_interval`` again."""
        self._n = 0
        self._start = self._clock()

    def next_delay(self) -> float | None:
        """The next jittered delay, or None when ``max_elapsed_time`` would be exceeded."""
        interval = self.nominal_interval
        factor = self._config.randomization_factor
        delay = self._rng.uniform(interval * (1 - factor), interval * (1 + factor))
        self._n += 1
        limit = self._config.max_elapsed_time
        if limit is not None and self.elapsed + delay > limit:
            return None
        return delay

    def delay_or_max(self) -> float:
        """The next delay for a loop that never gives up: :meth:`next_delay`, or
        ``max_interval`` once ``max_elapsed_time`` is spent."""
        return self.next_delay() or self._config.max_interval

    async def pause(self, sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        """Sleep the next delay (:meth:`delay_or_max`): what a retry loop waits between two
        tries. ``sleep``: a clock's (the simulator's cores pass theirs)."""
        await sleep(self.delay_or_max())

    def __next__(self) -> float:
        delay = self.next_delay()
        if delay is None:
            raise StopIteration
        return delay


def is_transient(exc: BaseException) -> bool:
    """True when retrying the operation that raised ``exc`` may succeed.

    Our own errors say so themselves (:attr:`NarwhalError.transient`); socket-level
    failures and timeouts are transient; anything else is a bug and is not retried.
    """
    if isinstance(exc, NarwhalError):
        return exc.transient
    return isinstance(exc, OSError | ConnectionError | asyncio.TimeoutError | TimeoutError)


async def retry(
    attempt: Callable[[], Awaitable[T]],
    config: RetryConfig,
    *,
    sleep: Sleep = asyncio.sleep,
    rng: RandomSource | None = None,
    clock: Clock = time.monotonic,
    on_retry: OnRetry | None = None,
    transient: Callable[[BaseException], bool] = is_transient,
) -> T:
    """Await ``attempt()`` until it succeeds, retrying transient errors with backoff
    (``transient`` says which: by default :func:`is_transient`).

    Raises a permanent error at once; raises the last (transient) error itself, with a
    note added, when ``config.max_elapsed_time`` would be exceeded by the next sleep.
    ``asyncio.CancelledError`` propagates immediately, during an attempt or a sleep.
    ``on_retry(attempt_number, error, delay)`` runs before each sleep (for metrics);
    an exception it raises propagates.
    """
    backoff = Backoff(config, rng=rng, clock=clock)
    number = 0
    while True:
        number += 1
        try:
            return await attempt()
        except Exception as exc:
            if not transient(exc):
                raise
            delay = backoff.next_delay()
            if delay is None:
                exc.add_note(
                    f"retry: gave up after {number} attempts in {backoff.elapsed:.3f} s "
                    f"(max_elapsed_time={config.max_elapsed_time} s)"
                )
                raise
            logger.debug("attempt %d failed (%r); retrying in %.3f s", number, exc, delay)
            if on_retry is not None:
                on_retry(number, exc, delay)
        await sleep(delay)
