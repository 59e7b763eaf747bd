"""The network layer's settings as plain values: what ``narwhal.net`` is configured with.

Why here and not in ``narwhal/net/``: loading a committee or parameters must not load the
network stack (a simulator, a tool or a test reads configuration without sockets), and
:class:`~narwhal.config.Parameters` needs these types to build a node's network config. So
configuration owns the value types and their defaults, and ``narwhal.net`` imports them
from here (its modules re-export the ones their callers pass in). Each default is written
once, here; ``Parameters`` takes its defaults from these classes and documents why.

Nothing in this module does I/O or imports ``narwhal.net`` / ``narwhal.wire``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol

import attrs

from narwhal.limits import DEFAULT_MAX_FRAME_SIZE

__all__ = [
    "DEFAULT_DIAL_RETRY",
    "DEFAULT_INITIAL_INTERVAL",
    "DEFAULT_MAX_ELAPSED_TIME",
    "DEFAULT_MAX_INTERVAL",
    "DEFAULT_MULTIPLIER",
    "DEFAULT_OUTBOUND_BUDGET",
    "DEFAULT_RANDOMIZATION_FACTOR",
    "DEFAULT_REQUEST_TIMEOUT",
    "MAX_CONCURRENT_HANDLERS",
    "AdmissionConfig",
    "ConnectionConfig",
    "NetworkConfig",
    "PeerIdentity",
    "PeerInfo",
    "RetryConfig",
    "RouteLimit",
]

# --- retry ----------------------------------------------------------------------------------

#: First nominal delay, seconds: long enough that a peer restarting is not hammered,
#: short enough that a dropped connection is redialled within a round.
DEFAULT_INITIAL_INTERVAL = 0.5
#: Cap on the nominal delay, seconds: a peer that comes back after hours of downtime is
#: retried within this long (plus jitter), without unbounded growth.
DEFAULT_MAX_INTERVAL = 15.0
#: Growth factor of the nominal delay per failed attempt.
DEFAULT_MULTIPLIER = 1.5
#: Jitter: each delay is uniform over ``nominal * (1 ± factor)``, which spreads the
#: retries of many senders so a recovering peer is not hit by a synchronized burst.
DEFAULT_RANDOMIZATION_FACTOR = 0.3
#: Total time budget for one operation, seconds; ``None`` retries forever (until the
#: error turns permanent or the caller cancels).
DEFAULT_MAX_ELAPSED_TIME: float | None = None


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _positive_finite(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (_is_real(value) and math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be a positive finite number, got {value!r}")


def _optional_positive(
    instance: object, attribute: attrs.Attribute[float | None], value: float | None
) -> None:
    if value is not None and not (_is_real(value) and value > 0):
        raise ValueError(f"{attribute.name} must be None or a positive number, got {value!r}")


def _at_least_initial(
    instance: RetryConfig, attribute: attrs.Attribute[float], value: float
) -> None:
    if value < instance.initial_interval:
        raise ValueError(
            f"max_interval ({value!r}) must be >= initial_interval ({instance.initial_interval!r})"
        )


def _multiplier(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (_is_real(value) and math.isfinite(value) and value >= 1):
        raise ValueError(f"multiplier must be a finite number >= 1, got {value!r}")


def _factor(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (_is_real(value) and 0 <= value < 1):
        raise ValueError(f"randomization_factor must be in [0, 1), got {value!r}")


@attrs.frozen
class RetryConfig:
    """How one operation is retried (:func:`narwhal.net.retry.retry`). Every default is a
    documented module constant; they are those of MystenLabs narwhal's ``RetryConfig``
    (500 ms, x1.5, 15 s, ±30%).

    Validation: both intervals positive and finite, ``max_interval >= initial_interval``,
    ``multiplier >= 1``, ``0 <= randomization_factor < 1``, ``max_elapsed_time`` None or > 0.
    """

    initial_interval: float = attrs.field(
        default=DEFAULT_INITIAL_INTERVAL, validator=_positive_finite
    )
    max_interval: float = attrs.field(
        default=DEFAULT_MAX_INTERVAL, validator=[_positive_finite, _at_least_initial]
    )
    multiplier: float = attrs.field(default=DEFAULT_MULTIPLIER, validator=_multiplier)
    randomization_factor: float = attrs.field(
        default=DEFAULT_RANDOMIZATION_FACTOR, validator=_factor
    )
    max_elapsed_time: float | None = attrs.field(
        default=DEFAULT_MAX_ELAPSED_TIME, validator=_optional_positive
    )

    def nominal_interval(self, n: int) -> float:
        """The n-th (0-based) delay before jitter: ``min(initial * multiplier**n, max)``."""
        try:
            grown = self.initial_interval * self.multiplier**n
        except OverflowError:
            return self.max_interval
        return min(grown, self.max_interval)


#: Redial backoff: quick first retries (a restarting peer is back within a second or two),
#: capped low so a recovered peer is found soon; a refused dial costs almost nothing.
DEFAULT_DIAL_RETRY = RetryConfig(initial_interval=0.1, max_interval=2.0, multiplier=1.5,
                                 randomization_factor=0.3)

# --- rate limits ----------------------------------------------------------------------------


def _positive_or_none(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not (type(value) in (int, float) and value > 0):
        raise ValueError(f"{attribute.name} must be a positive number or None, got {value!r}")


def _at_least_one(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not (type(value) in (int, float) and value >= 1):
        raise ValueError(f"{attribute.name} must be a number >= 1 or None, got {value!r}")


@attrs.frozen
class RouteLimit:
    """The budget of one peer on one route (enforced by
    :class:`~narwhal.net.rate_limit.RateLimiter`). ``None`` leaves that dimension unlimited.

    A request burst is at least one request (a smaller one would refuse everything); a frame
    larger than the byte burst is charged the whole burst, so it passes when the peer has
    been quiet long enough to fill it."""

    requests_per_second: float | None = attrs.field(default=None, validator=_positive_or_none)
    request_burst: float | None = attrs.field(default=None, validator=_at_least_one)
    bytes_per_second: float | None = attrs.field(default=None, validator=_positive_or_none)
    byte_burst: float | None = attrs.field(default=None, validator=_positive_or_none)

    def __attrs_post_init__(self) -> None:
        for rate, burst in (("requests_per_second", "request_burst"),
                            ("bytes_per_second", "byte_burst")):
            if (getattr(self, rate) is None) != (getattr(self, burst) is None):
                raise ValueError(f"{rate} and {burst} must both be set or both be None")

    def to_json(self) -> dict[str, float | None]:
        return attrs.asdict(self)

# --- connections ----------------------------------------------------------------------------


def _positive(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if type(value) not in (int, float) or not value > 0:
        raise ValueError(f"{attribute.name} must be a positive number, got {value!r}")


@attrs.frozen
class AdmissionConfig:
    """Limits of one listener on connections that have not completed their handshake
    (:mod:`narwhal.net.admission`).

    Defaults (and why) in :class:`~narwhal.config.Parameters`, which builds this."""

    #: Half-open connections held at once; a newcomer beyond it evicts an older one.
    max_half_open: int = attrs.field(default=512, validator=_positive)
    #: ... of which one source address (an IPv6 /64) may hold this many.
    max_half_open_per_source: int = attrs.field(default=128, validator=_positive)
    #: Handshakes (message 1 read, the X25519 part) processed per second by the listener ...
    handshake_rate: float = attrs.field(default=1_000.0, validator=_positive)
    handshake_burst: int = attrs.field(default=256, validator=_positive)
    #: ... and per source address.
    handshake_rate_per_source: float = attrs.field(default=250.0, validator=_positive)
    handshake_burst_per_source: int = attrs.field(default=64, validator=_positive)
    #: Ephemeral keys of recent message 1s remembered to refuse replays (~100 bytes each).
    replay_memory: int = attrs.field(default=4_096, validator=_positive)
    #: The listening socket's accept backlog: a flood must not overflow the kernel's accept
    #: queue, or the SYNs of real clients are dropped and retried only after a second.
    listen_backlog: int = attrs.field(default=1_024, validator=_positive)


#: Authenticated client connections one source address (an IPv6 /64) may hold on one
#: client port (narwhal/net/clients.py): enough for a load generator's or an exchange's
#: several connections, an eighth of the port's 256.
DEFAULT_MAX_CLIENTS_PER_ADDRESS = 32


#: Default outbound budget floor (the default is the larger of this and two maximum frames).
DEFAULT_OUTBOUND_BUDGET = 8 * 1024 * 1024


@attrs.frozen
class ConnectionConfig:
    """Timeouts and buffer limits of one connection (:mod:`narwhal.net.connection`).
    Defaults are in ``wire_spec.md``; why, in :class:`~narwhal.config.Parameters`."""

    #: A handshake not complete (for a responder: not confirmed) by then is aborted:
    #: slow-loris protection, and how long a silent connection may hold a half-open slot.
    handshake_timeout: float = 4.0
    #: A PING is sent this often; its PONG measures RTT.
    keepalive_interval: float = 5.0
    #: Nothing received for this long: GOAWAY(IDLE_TIMEOUT) and close.
    idle_timeout: float = 30.0
    #: Largest frame we accept (advertised in the handshake).
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    #: Socket write buffer high-water mark: above it, senders wait.
    write_high_water: int = 4 * 1024 * 1024
    #: How long a graceful close waits for outstanding requests.
    close_grace: float = 5.0
    #: Bytes we may have queued toward the peer (not yet taken by the kernel) before we
    #: stop serving its requests; None = the larger of 8 MiB and two ``max_frame_size``.
    outbound_budget: int | None = None
    #: Over budget for this long (the peer does not read its answers): abort and count.
    #: None = ``idle_timeout``.
    budget_timeout: float | None = None
    #: Limits of a listener on connections still in their handshake (``admission.py``);
    #: here so that one config reaches every listener, client ports included.
    admission: AdmissionConfig = attrs.field(factory=AdmissionConfig)

    @property
    def effective_outbound_budget(self) -> int:
        if self.outbound_budget is not None:
            return self.outbound_budget
        return max(DEFAULT_OUTBOUND_BUDGET, 2 * self.max_frame_size)

    @property
    def effective_budget_timeout(self) -> float:
        return self.idle_timeout if self.budget_timeout is None else self.budget_timeout

# --- peers and the peer manager -------------------------------------------------------------


#: Requests without an explicit deadline give up after this long (seconds).
DEFAULT_REQUEST_TIMEOUT = 30.0
#: Handlers running at once per connection; bounds the memory one peer can make us use.
MAX_CONCURRENT_HANDLERS = 512


class PeerIdentity(Protocol):
    """Who a connecting peer says it is (``narwhal.wire.noise.HandshakePayload``)."""

    @property
    def role(self) -> str: ...
    @property
    def authority(self) -> bytes | None: ...
    @property
    def worker_id(self) -> int | None: ...


@attrs.frozen
class PeerInfo:
    """A directory entry: who a peer is and where to reach it."""

    #: Human-readable name for logs and metrics, e.g. ``"v2/primary"``.
    name: str
    #: The peer's X25519 network public key: its identity on the wire.
    static_key: bytes
    #: ``"primary"`` or ``"worker"``.
    role: str
    authority: bytes | None = None
    worker_id: int | None = None
    #: Where to dial it; None means we only accept its connections.
    address: tuple[str, int] | None = None

    def matches(self, payload: PeerIdentity) -> bool:
        return (payload.role, payload.authority, payload.worker_id) == (
            self.role, self.authority, self.worker_id)


@attrs.frozen
class NetworkConfig:
    """Knobs of the peer manager and the two networks (:mod:`narwhal.net.network`;
    defaults as in ``wire_spec.md``)."""

    connection: ConnectionConfig = attrs.field(factory=ConnectionConfig)
    #: Backoff of reliable sends (MystenLabs defaults: 500 ms, x1.5, 15 s, +-30%).
    retry: RetryConfig = attrs.field(factory=RetryConfig)
    dial_retry: RetryConfig = DEFAULT_DIAL_RETRY
    #: Requests in flight to one peer at once.
    pool_capacity: int = 128
    #: Jobs one peer's executor may hold (running + waiting + backing off); beyond it
    #: ``send`` waits (backpressure) and ``unreliable_send`` refuses.
    max_pending: int = 20_000
    connect_timeout: float = 5.0
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    #: Handlers one connection runs at once; more requests are answered OVERLOADED.
    max_concurrent_handlers: int = MAX_CONCURRENT_HANDLERS
    #: A peer dialed us while we keep an older connection to it (the duplicate tie-break):
    #: that one is aborted if nothing arrives on it within this many seconds of a PING.
    stale_check_timeout: float = 2.0
    #: Node-local dial addresses: a peer whose directory address is a key here is dialed
    #: at the value instead (a relay, a tunnel, a link emulator). Peers and the network id
    #: stay as the committee says; only where this node opens its TCP connection changes.
    dial_overrides: Mapping[tuple[str, int], tuple[str, int]] = attrs.field(factory=dict)
