"""The primary's sends in flight, kept so that garbage collection can cancel them.

Why: a reliable send retries until the peer answers, for ever. A vote, header or
certificate of a round at or below the GC horizon no longer matters to anyone, so its
sends are cancelled with the round (Narwhal's cancel-on-GC rule); without that, a peer
that stays down would accumulate every message of every round we ever sent it. The real
network's handles cancel on drop too, so the tracker is also what keeps them alive until
then.

Socket-free: it holds whatever the network port's sends return (anything with
``cancel``, ``done`` and ``add_done_callback``: ``narwhal.ports.SendHandle``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from narwhal.ports import SendHandle

__all__ = ["SendTracker"]


class SendTracker:
    """Sends by round (cancelled at GC), sends tied to no round (kept until done), and the
    tasks that start them from synchronous code."""

    def __init__(self) -> None:
        self._by_round: dict[int, list[SendHandle]] = {}
        self._unrounded: set[SendHandle] = set()  # e.g. Cleanup to our workers
        self._tasks: set[asyncio.Task[Any]] = set()  # the loop keeps only weak references

    def track(self, round_: int, handles: SendHandle | list[SendHandle]) -> None:
        """Keep ``handles`` (sends of round ``round_``) until done or GC'd."""
        if not isinstance(handles, list):
            handles = [handles]
        bucket = self._by_round.setdefault(round_, [])
        bucket[:] = [h for h in bucket if not h.done()]
        bucket.extend(handles)

    def spawn(self, coroutine: Awaitable[Any], round_: int | None) -> None:
        """Start a network call from synchronous code and keep what it returns: the
        handles of a round until GC, the others until done."""
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if t.cancelled() or t.exception() is not None or t.result() is None:
                return
            result = t.result()
            handles = result if isinstance(result, list) else [result]
            if round_ is not None:
                self.track(round_, handles)
                return
            for handle in handles:
                self._unrounded.add(handle)
                handle.add_done_callback(lambda _, h=handle: self._unrounded.discard(h))

        task.add_done_callback(done)

    def cancel_through(self, gc_round: int) -> None:
        """Cancel the sends of every round <= ``gc_round``."""
        for round_ in [r for r in self._by_round if r <= gc_round]:
            for handle in self._by_round.pop(round_):
                handle.cancel()

    def close(self) -> None:
        """Cancel everything: the starting tasks and every send."""
        for task in list(self._tasks):
            task.cancel()
        for handles in [*self._by_round.values(), list(self._unrounded)]:
            for handle in handles:
                handle.cancel()
        self._by_round.clear()
        self._unrounded.clear()
