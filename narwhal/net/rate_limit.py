"""Per-(peer, route) rate limits: token buckets for requests and bytes a second.

A :class:`RateLimiter` belongs to a :class:`~narwhal.net.rpc.Router` (so to every
connection of one listener) and is asked by the RPC channel about each inbound REQUEST or
ONEWAY frame *before* its body is decoded: :meth:`RateLimiter.admit` takes one request and
the body's bytes from the buckets of (sender, route). A frame the buckets cannot pay for is
refused ``RATE_LIMITED`` (a request) or dropped (a one-way message), and counted per (peer
label, route). Nothing is charged for a refused frame.

Why before decoding: what a flood costs us is the decode, the signature check and the
handler. Refusing first makes an over-limit frame cost one dictionary lookup and a few
float operations.

Memory: a bucket that has refilled completely carries no information (a new bucket starts
full), so buckets are forgotten once full; the limiter holds at most one bucket per
(peer, route) that sent something in the last ``burst / rate`` seconds. Clients (one
``ClientPeer`` per connection) therefore cost nothing once they go quiet.

The limits themselves (:class:`RouteLimit`) come from
:meth:`narwhal.config.Parameters.route_limits`, which derives them from the committee and
the batch size (``narwhal/config/rate_limits.py``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from narwhal.config.network import RouteLimit
from narwhal.config.rate_limits import ROUTE_NAMES, limits_by_tag
from narwhal.net.token_bucket import TokenBucket

if TYPE_CHECKING:
    from narwhal.config import Committee, Parameters

__all__ = ["RateLimiter", "RouteLimit", "TokenBucket", "client_limiter", "validator_limiter"]

#: The bucket table is swept of full (idle) buckets whenever it grows past this.
SWEEP_THRESHOLD = 1_024


class _Buckets:
    """The two buckets of one (peer, route)."""

    __slots__ = ("bytes", "requests")

    def __init__(self, limit: RouteLimit, clock: Callable[[], float]) -> None:
        self.requests = (None if limit.requests_per_second is None else
                         TokenBucket(limit.requests_per_second, limit.request_burst or 0, clock))
        self.bytes = (None if limit.bytes_per_second is None else
                      TokenBucket(limit.bytes_per_second, limit.byte_burst or 0, clock))

    def take(self, nbytes: int) -> bool:
        requests, size = self.requests, self.bytes
        if requests is not None and requests.refill() < 1:
            return False
        # a frame larger than the byte burst is charged the whole burst: it passes when the
        # bucket is full, so no limit can make a route's largest frames impossible
        if size is not None and not size.take(min(nbytes, size.burst)):
            return False
        if requests is not None:
            requests.tokens -= 1
        return True

    @property
    def idle(self) -> bool:
        return all(b is None or b.full for b in (self.requests, self.bytes))


class RateLimiter:
    """Token buckets per (peer, route) for the routes in ``limits`` (message tag -> limit).

    ``exempt(peer)`` names peers never limited (our own authority's other endpoints);
    ``label(peer)`` names a peer in the counters (a validator's name; ``"client"`` for the
    anonymous clients of a client port, which would otherwise make one label each)."""

    def __init__(self, limits: Mapping[int, RouteLimit], *,
                 route_names: Mapping[int, str],
                 exempt: Callable[[Any], bool] | None = None,
                 label: Callable[[Any], str] = str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._limits = dict(limits)
        self._names = dict(route_names)
        self._exempt = exempt
        self._label = label
        self._clock = clock
        self._buckets: dict[tuple[Any, int], _Buckets] = {}
        #: Frames refused, by (peer label, route name).
        self.limited: Counter[tuple[str, str]] = Counter()

    def limit_for(self, tag: int) -> RouteLimit | None:
        return self._limits.get(tag)

    def admit(self, peer: Any, tag: int, nbytes: int) -> bool:
        """Charge one frame of ``nbytes`` body bytes from ``peer`` on route ``tag``;
        False (counted, nothing charged) when its buckets cannot pay."""
        limit = self._limits.get(tag)
        if limit is None or (self._exempt is not None and self._exempt(peer)):
            return True
        key = (peer, tag)
        buckets = self._buckets.get(key)
        if buckets is None:
            if len(self._buckets) >= SWEEP_THRESHOLD:
                self._sweep()
            buckets = self._buckets[key] = _Buckets(limit, self._clock)
        if buckets.take(nbytes):
            return True
        self.limited[(self._label(peer), self._names.get(tag, f"0x{tag:04x}"))] += 1
        return False

    def _sweep(self) -> None:
        for key in [k for k, b in self._buckets.items() if b.idle]:
            del self._buckets[key]

    @property
    def tracked(self) -> int:
        """Buckets held right now (for tests of the memory bound)."""
        return len(self._buckets)

    def limited_for(self, label: str) -> int:
        """Frames refused from the peer named ``label``, all routes."""
        return sum(n for (peer, _), n in self.limited.items() if peer == label)

    def snapshot(self) -> dict[str, dict[str, int]]:
        """JSON-ready: ``{peer label: {route: frames refused}}``."""
        out: dict[str, dict[str, int]] = {}
        for (peer, route), count in sorted(self.limited.items()):
            out.setdefault(peer, {})[route] = count
        return out


def validator_limiter(p: Parameters, committee: Committee, me: bytes) -> RateLimiter:
    """The limiter of a validator port: every peer of another authority, labelled by name;
    our own primary and workers are exempt (they are us)."""
    def exempt(peer: Any) -> bool:
        return bool(peer.info.authority == me)

    def label(peer: Any) -> str:
        return str(peer.info.name)

    return RateLimiter(limits_by_tag(p.route_limits(committee)), route_names=ROUTE_NAMES,
                       exempt=exempt, label=label)


def client_limiter(p: Parameters, committee: Committee) -> RateLimiter:
    """The limiter of a client port: per connection, all counted under ``"client"``."""
    return RateLimiter(limits_by_tag(p.route_limits(committee)), route_names=ROUTE_NAMES,
                       label=lambda peer: "client")
