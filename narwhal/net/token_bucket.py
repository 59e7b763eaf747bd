"""A token bucket: ``rate`` tokens a second, at most ``burst`` held.

One class for every rate limit of the node (a worker's storage quota per peer authority,
the handshake budget of a listener): they differ only in what a token stands for.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["TokenBucket"]


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` held; starts full."""

    __slots__ = ("_clock", "_last", "burst", "rate", "tokens")

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic,
                 ) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock
        self.tokens, self._last = float(burst), clock()

    def refill(self) -> float:
        """Add what accrued since the last call; return the tokens held."""
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self._last) * self.rate)
        self._last = now
        return self.tokens

    def take(self, amount: float) -> bool:
        """Take ``amount`` tokens if the bucket holds them; False (and nothing taken) if not."""
        if self.refill() < amount:
            return False
        self.tokens -= amount
        return True

    @property
    def full(self) -> bool:
        """Refilled completely: the bucket carries no information and may be forgotten."""
        return self.refill() >= self.burst
