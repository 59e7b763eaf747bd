"""Node parameters: every tunable of one node, validated, stored as JSON.

:class:`Parameters` holds every tunable of a node (defaults as in the ``asonnino/narwhal``
prototype where it has one) and builds the network layer's
:class:`~narwhal.config.network.NetworkConfig`. The defaults of the fields that reach the
network layer are those of its value types (:mod:`narwhal.config.network`): each number is
written once, there; the reason for it is documented here.

Guarantees:

- ``@attrs.frozen`` and validated on construction, each field and then the bounds between
  fields: an invalid ``Parameters`` cannot exist, whether built in code or loaded, and every
  problem is a :class:`~narwhal.config.json_files.ConfigError` naming the field.
- Units are the same on disk and in memory: durations in **seconds** (JSON numbers),
  sizes in **bytes**. A file may omit fields (defaults apply), never add unknown ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import attrs

from narwhal.config.json_files import (
    ConfigError,
    JsonReader,
    PathLike,
    _check,
    load_json,
    save_json,
)
from narwhal.config.network import (
    DEFAULT_DIAL_RETRY,
    DEFAULT_MAX_CLIENTS_PER_ADDRESS,
    AdmissionConfig,
    ConnectionConfig,
    NetworkConfig,
    RetryConfig,
    RouteLimit,
)
from narwhal.config.rate_limits import HONEST_LOAD_BYTES, ROUTES, derived_route_limits
from narwhal.limits import DEFAULT_MAX_FRAME_SIZE

if TYPE_CHECKING:
    from narwhal.config.committee import Committee

__all__ = ["CONSENSUS_PROTOCOLS", "DEFAULT_RETRY", "Parameters"]

CONSENSUS_PROTOCOLS = ("bullshark", "tusk")
MiB = 1024 * 1024
#: Reliable-send backoff: MystenLabs' defaults (500 ms, x1.5, 15 s, +-30%).
DEFAULT_RETRY = RetryConfig()
#: What one honest worker sends each peer at the load we benchmark: 50,000 tx/s of 512 B
#: for the whole committee, spread over (at least) 4 authorities: 6.4 MB/s.
HONEST_PEER_BATCH_RATE = HONEST_LOAD_BYTES // 4
#: The network layer's own defaults: the defaults of the fields below that configure it.
_NETWORK = NetworkConfig()
_CONNECTION = _NETWORK.connection
_ADMISSION = _CONNECTION.admission


def _default_batch_quota_rate(p: Parameters) -> int:
    """4x what an honest peer sends: the larger of 20 full batches a second and the
    benchmarked load (40 MB/s with the default 500 KB batches)."""
    return 4 * max(20 * p.batch_size, HONEST_PEER_BATCH_RATE)


def _default_batch_quota_burst(p: Parameters) -> int:
    """Twice the pending budget: a peer back from a partition resends at once its batches
    waiting for a quorum (at most max_pending_transactions_bytes) and its late sends
    (about as much again). Never below the largest batch, which must always fit."""
    return max(2 * p.max_pending_transactions_bytes, p.batch_size + p.max_transaction_size)


def _int(default: int) -> Any:
    return attrs.field(default=default, validator=_check(
        lambda v: type(v) is int and v > 0, "a positive integer"))


def _seconds(default: float) -> Any:
    return attrs.field(default=default, validator=_check(
        lambda v: type(v) in (int, float) and math.isfinite(v) and v > 0,
        "a positive finite number of seconds"))


def _rate(default: float) -> Any:
    return attrs.field(default=default, validator=_check(
        lambda v: type(v) in (int, float) and math.isfinite(v) and v > 0,
        "a positive finite number per second"))


_is_retry = _check(lambda v: isinstance(v, RetryConfig), "a RetryConfig")


def _route_overrides(value: Any) -> Mapping[str, RouteLimit]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"rate_limits: must be an object of route -> limit, got {value!r}")
    for name, limit in value.items():
        if name not in ROUTES:
            raise ConfigError(f"rate_limits.{name}: not a rate-limited route (one of "
                              f"{sorted(ROUTES)})")
        if not isinstance(limit, RouteLimit):
            raise ConfigError(f"rate_limits.{name}: expected a RouteLimit, got {limit!r}")
    return MappingProxyType(dict(sorted(value.items())))


@attrs.frozen
class Parameters:
    """Tunables of one node. Durations in seconds, sizes in bytes (in JSON too)."""

    #: Bytes of batch digests (32 each) that make the proposer seal a header early...
    header_size: int = _int(1_000)
    #: ...or the longest it waits for them (once it has its parents).
    max_header_delay: float = _seconds(0.1)
    #: Rounds kept below the last committed round; older state is garbage-collected.
    gc_depth: int = _int(50)
    #: How long a batch sync waits for the named authority's worker before asking others,
    sync_retry_delay: float = _seconds(10.0)
    #: and how many other authorities' workers it then asks.
    sync_retry_nodes: int = _int(3)
    #: A worker seals a batch once it holds this many bytes of transactions...
    batch_size: int = _int(500_000)
    #: ...or once its oldest transaction has waited this long.
    max_batch_delay: float = _seconds(0.1)
    #: Largest transaction a worker accepts, so a batch stays below batch_size + this.
    max_transaction_size: int = _int(128 * 1024)
    #: Bytes a worker holds in accepted, not yet quorum-acknowledged transactions; beyond
    #: it intake slows or refuses clients (backpressure instead of unbounded memory).
    max_pending_transactions_bytes: int = _int(64 * MiB)
    #: Storage quota of one peer authority's worker: bytes of batches per second it may
    #: make us store (a token bucket; a batch under batch_size // 20 bytes is charged that
    #: much, which bounds the count of tiny batches too), and the burst it may send at
    #: once. Beyond it a Batch is refused OVERLOADED (the sender retries later) and counted
    #: batch_quota_exceeded. Defaults, derived from the fields above when omitted: rate
    #: 4 x max(20 x batch_size, 6.4 MB/s) (40 MB/s: 4x an honest worker's share of the
    #: benchmarked 50,000 tx/s x 512 B over 4 authorities, or of 20 full batches a second);
    #: burst 2 x max_pending_transactions_bytes (128 MiB: what an honest worker may resend at
    #: once after a partition, its batches awaiting a quorum plus about as much in late sends).
    batch_quota_rate: int = attrs.field(
        default=attrs.Factory(_default_batch_quota_rate, takes_self=True),
        validator=_check(lambda v: type(v) is int and v > 0, "a positive integer"))
    batch_quota_burst: int = attrs.field(
        default=attrs.Factory(_default_batch_quota_burst, takes_self=True),
        validator=_check(lambda v: type(v) is int and v > 0, "a positive integer"))
    #: History kept on disk: batch bodies (and the ordered output they make up) older than
    #: retain_seconds are deleted, and the oldest go first while a worker's batches take
    #: more than retain_bytes. A subscriber can replay this much; a validator down longer
    #: than this catches up from what its peers still hold.
    retain_seconds: float = _seconds(3600.0)
    retain_bytes: int = _int(4 * 1024 * MiB)
    #: A worker's batches are stored in files of this size, deleted whole by retention: the
    #: granularity at which disk space comes back.
    store_segment_bytes: int = _int(256 * MiB)
    #: Per-(peer, route) rate limits (token buckets of requests/s and bytes/s checked before
    #: a frame is decoded; over them a request is refused RATE_LIMITED and counted). The
    #: defaults are derived from the committee and the fields above, as ``headroom`` times
    #: an upper bound of honest traffic (``narwhal/config/rate_limits.py`` documents each
    #: route's formula); ``rate_limits`` overrides single routes by message name, e.g.
    #: ``{"Header": {"requests_per_second": 100, "request_burst": 500,
    #: "bytes_per_second": null, "byte_burst": null}}`` (null: that dimension unlimited).
    rate_limit_headroom: float = attrs.field(default=4.0, validator=_check(
        lambda v: type(v) in (int, float) and math.isfinite(v) and v >= 1, "a number >= 1"))
    rate_limits: Mapping[str, RouteLimit] = attrs.field(
        factory=dict, converter=_route_overrides)
    #: Largest application frame: the wire layer's hard limit on one message.
    max_frame_size: int = attrs.field(default=DEFAULT_MAX_FRAME_SIZE, validator=_check(
        lambda v: type(v) is int and 1024 <= v < 2**32, "an integer in [1024, 2**32)"))
    consensus: str = attrs.field(default="bullshark", validator=_check(
        lambda v: v in CONSENSUS_PROTOCOLS, f"one of {CONSENSUS_PROTOCOLS}"))
    #: Whether our headers carry weak links to late certificates nothing references
    #: (Bullshark's; ``docs/protocol.md``). Off, such a certificate's batches wait until
    #: they provably cannot be committed and are proposed again: for benchmarks of what
    #: weak links bring. Peers' weak links are followed either way.
    weak_links: bool = attrs.field(default=True, validator=_check(
        lambda v: type(v) is bool, "true or false"))
    #: When a store write counts as durable. "normal": what leaves the node as a promise
    #: (a vote, a proposed header, a batch acknowledgement) is fsynced before it leaves, so
    #: a power cut can never make the node vote or propose twice for one round, nor lose a
    #: batch it acknowledged; everything else (certificates, output records: recomputed or
    #: fetched again) survives a crash or kill -9 and is fsynced at checkpoints. "full":
    #: every commit fsynced. "process": nothing fsynced on the ack path (survives kill -9,
    #: not a power cut: benchmarks of what durability costs only; the references
    #: acknowledge batches after a RocksDB write without sync, i.e. this).
    store_sync: str = attrs.field(default="normal", validator=_check(
        lambda v: v in ("normal", "full", "process"), "'normal', 'full' or 'process'"))
    #: Backoff of reliable sends, and of redialing an unreachable peer.
    retry: RetryConfig = attrs.field(default=DEFAULT_RETRY, validator=_is_retry)
    dial_retry: RetryConfig = attrs.field(default=DEFAULT_DIAL_RETRY, validator=_is_retry)
    #: Requests in flight to one peer, and jobs its executor may hold in all.
    pool_capacity: int = _int(_NETWORK.pool_capacity)
    max_pending: int = _int(_NETWORK.max_pending)
    #: Handlers one connection runs at once; more requests are refused OVERLOADED.
    max_concurrent_handlers: int = _int(_NETWORK.max_concurrent_handlers)
    #: Ordered output (the primary's client port, wire_spec.md §9.3). Bytes per second
    #: sent to all subscribers together, shared in turn between them (replaying history or
    #: following the tip alike), so N subscribers cost the event loop what one costs at
    #: this rate, never N times more: 64 MiB/s, about 2 subscribers at the benchmarked
    #: peak of ~55,000 tx/s x 512 B. Measured (bench/subscribers.py, 10,000 tx/s): 32
    #: subscribers replaying history at 60 MB/s in all plus 32 that never read left the
    #: node's commit rate at 1.00x and its latency at 1.06x of the same run's baseline.
    output_rate: int = _int(64 * MiB)
    #: Subscriptions at once, in all and from one source address; more are refused
    #: OVERLOADED and counted (narwhal_output_subscriptions_refused{reason}).
    max_subscribers: int = _int(64)
    max_subscribers_per_address: int = _int(8)
    #: Authenticated client connections from one source address (an IPv6 /64) on one client
    #: port (a worker's transactions port, a primary's output port); more are refused
    #: OVERLOADED. A stranger from one address cannot take the port's every place, nor
    #: multiply the per-connection rate limits of a client port by more than this.
    max_clients_per_address: int = _int(DEFAULT_MAX_CLIENTS_PER_ADDRESS)
    #: Bytes queued toward one subscriber (not yet taken by its socket) before its next
    #: part waits: what a subscriber that stops reading costs us, plus one part.
    subscriber_buffer_bytes: int = _int(1 * MiB)
    #: A connection whose handshake is not complete (for a listener: confirmed by the
    #: initiator's first transport message) by then is closed. It is what a silent or
    #: slow-loris connection may hold a half-open slot for. 4 s: an honest handshake takes
    #: 1.5 round trips (under 0.5 s on the slowest path) plus, should a segment be lost,
    #: TCP's first retransmission (1 s initial timeout, RFC 6298) and room for a second.
    handshake_timeout: float = _seconds(_CONNECTION.handshake_timeout)
    #: Admission control of every listener (validator port, transactions and output ports;
    #: narwhal/net/admission.py). Half-open connections (handshake not complete) held at
    #: once, and by one source address (an IPv6 /64); beyond either, the oldest half-open
    #: connection of the source holding the most is closed to make room, never the
    #: newcomer. An honest handshake is half-open for a few ms, so these only ever fill
    #: with floods; each costs about 10 KiB of objects (measured with tracemalloc), its
    #: receive buffer only 1 KiB until authenticated (256 KiB after).
    max_half_open_connections: int = _int(_ADMISSION.max_half_open)
    max_half_open_per_source: int = _int(_ADMISSION.max_half_open_per_source)
    #: Handshakes processed (message 1 read: ~100-250 us of X25519 each) per second by one
    #: listener, and the burst it may process at once: 1,000/s bounds a handshake flood to
    #: about a quarter of the event loop; 256 lets a whole committee redial at once after
    #: a restart. Beyond it a connection is closed before any crypto (counted).
    handshake_rate: float = _rate(_ADMISSION.handshake_rate)
    handshake_burst: int = _int(_ADMISSION.handshake_burst)
    #: ... and by one source address, so one source cannot take the whole budget (an
    #: honest validator dials each endpoint once; clients connect a few times).
    handshake_rate_per_source: float = _rate(_ADMISSION.handshake_rate_per_source)
    handshake_burst_per_source: int = _int(_ADMISSION.handshake_burst_per_source)
    #: A PING this often on every connection (its PONG measures RTT); a connection that
    #: receives nothing for idle_timeout is closed.
    keepalive_interval: float = _seconds(_CONNECTION.keepalive_interval)
    idle_timeout: float = _seconds(_CONNECTION.idle_timeout)
    #: A dial that has not connected by then fails (and is retried with dial_retry).
    connect_timeout: float = _seconds(_NETWORK.connect_timeout)
    #: A request without an explicit deadline gives up after this long.
    request_timeout: float = _seconds(_NETWORK.request_timeout)

    def __attrs_post_init__(self) -> None:
        if self.batch_size + self.max_transaction_size >= self.max_frame_size:
            raise ConfigError(
                f"batch_size: batch_size + max_transaction_size ({self.batch_size} + "
                f"{self.max_transaction_size}) must be below max_frame_size "
                f"({self.max_frame_size})")
        if self.batch_quota_burst < self.batch_size + self.max_transaction_size:
            raise ConfigError(
                f"batch_quota_burst: must hold the largest batch, batch_size + "
                f"max_transaction_size ({self.batch_size + self.max_transaction_size}), "
                f"got {self.batch_quota_burst}")
        if self.max_pending < self.pool_capacity:
            raise ConfigError(f"max_pending: must be >= pool_capacity ({self.pool_capacity}), "
                              f"got {self.max_pending}")
        if self.max_subscribers_per_address > self.max_subscribers:
            raise ConfigError(f"max_subscribers_per_address: must be <= max_subscribers "
                              f"({self.max_subscribers}), got {self.max_subscribers_per_address}")
        if self.max_subscribers_per_address > self.max_clients_per_address:
            raise ConfigError(f"max_subscribers_per_address: must be <= max_clients_per_address "
                              f"({self.max_clients_per_address}), got "
                              f"{self.max_subscribers_per_address}")
        if self.max_half_open_per_source > self.max_half_open_connections:
            raise ConfigError(f"max_half_open_per_source: must be <= max_half_open_connections "
                              f"({self.max_half_open_connections}), got "
                              f"{self.max_half_open_per_source}")
        if self.keepalive_interval >= self.idle_timeout:
            raise ConfigError(f"keepalive_interval: must be below idle_timeout "
                              f"({self.idle_timeout}), got {self.keepalive_interval}")

    def network_config(self) -> NetworkConfig:
        """The network layer's config built from these parameters."""
        admission = AdmissionConfig(
            max_half_open=self.max_half_open_connections,
            max_half_open_per_source=self.max_half_open_per_source,
            handshake_rate=self.handshake_rate, handshake_burst=self.handshake_burst,
            handshake_rate_per_source=self.handshake_rate_per_source,
            handshake_burst_per_source=self.handshake_burst_per_source)
        connection = ConnectionConfig(
            handshake_timeout=self.handshake_timeout, keepalive_interval=self.keepalive_interval,
            idle_timeout=self.idle_timeout, max_frame_size=self.max_frame_size,
            admission=admission)
        return NetworkConfig(
            connection=connection, retry=self.retry, dial_retry=self.dial_retry,
            pool_capacity=self.pool_capacity, max_pending=self.max_pending,
            connect_timeout=self.connect_timeout, request_timeout=self.request_timeout,
            max_concurrent_handlers=self.max_concurrent_handlers)

    def route_limits(self, committee: Committee) -> dict[str, RouteLimit]:
        """The limit of every rate-limited route: derived from ``committee`` (size, workers)
        and these parameters, then ``rate_limits`` applied on top."""
        limits = derived_route_limits(self, committee.size, len(committee.worker_ids))
        limits.update(self.rate_limits)
        return limits

    def to_json(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        out["rate_limits"] = {name: limit.to_json() for name, limit in self.rate_limits.items()}
        return out

    @classmethod
    def from_json(cls, value: Any) -> Parameters:
        """Fields may be omitted (defaults apply); unknown fields are refused."""
        reader = JsonReader(value, optional=attrs.fields_dict(cls))
        fields = dict(reader.value)
        if "rate_limits" in fields:
            routes = reader.child("rate_limits", optional=None)
            limits = {}
            for name in routes.value:
                entry = routes.child(name, optional=attrs.fields_dict(RouteLimit))
                try:
                    limits[name] = RouteLimit(**entry.value)
                except (TypeError, ValueError) as exc:
                    raise ConfigError(f"rate_limits.{name}: {exc}") from exc
            fields["rate_limits"] = limits
        for name in ("retry", "dial_retry"):
            if name in fields:
                sub = reader.child(name, optional=attrs.fields_dict(RetryConfig))
                try:
                    fields[name] = RetryConfig(**sub.value)
                except (TypeError, ValueError) as exc:
                    raise ConfigError(f"{name}: {exc}") from exc
        return cls(**fields)

    @classmethod
    def load(cls, path: PathLike) -> Parameters:
        return load_json(path, cls.from_json)

    def save(self, path: PathLike) -> None:
        save_json(path, self.to_json())
