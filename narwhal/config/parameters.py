"""Node parameters: every tunable of one node, validated, stored as JSON.

:class:`Parameters` holds every tunable of a node (defaults as in the ``asonnino/narwhal``
prototype where it has one) and builds the network layer's
:class:`~narwhal.net.network.NetworkConfig`.

Guarantees:

- ``@attrs.frozen`` and validated on construction, each field and then the bounds between
  fields: an invalid ``Parameters`` cannot exist, whether built in code or loaded, and every
  problem is a :class:`~narwhal.config.json_files.ConfigError` naming the field.
- Units are the same on disk and in memory: durations in **seconds** (JSON numbers),
  sizes in **bytes**. A file may omit fields (defaults apply), never add unknown ones.
"""

from __future__ import annotations

import math
from typing import Any

import attrs

from narwhal.config.json_files import (
    ConfigError,
    JsonReader,
    PathLike,
    _check,
    load_json,
    save_json,
)
from narwhal.net.connection import ConnectionConfig
from narwhal.net.network import DEFAULT_DIAL_RETRY, NetworkConfig
from narwhal.net.retry import RetryConfig
from narwhal.net.rpc import DEFAULT_REQUEST_TIMEOUT, MAX_CONCURRENT_HANDLERS
from narwhal.wire.frames import DEFAULT_MAX_FRAME_SIZE

__all__ = ["CONSENSUS_PROTOCOLS", "DEFAULT_RETRY", "Parameters"]

CONSENSUS_PROTOCOLS = ("bullshark", "tusk")
MiB = 1024 * 1024
#: Reliable-send backoff: MystenLabs' defaults (500 ms, x1.5, 15 s, +-30%).
DEFAULT_RETRY = RetryConfig()
#: What one honest worker sends each peer at the load we benchmark: 50,000 tx/s of 512 B
#: for the whole committee, spread over (at least) 4 authorities: 6.4 MB/s.
HONEST_PEER_BATCH_RATE = 50_000 * 512 // 4


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


_is_retry = _check(lambda v: isinstance(v, RetryConfig), "a RetryConfig")


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
    #: Largest application frame: the wire layer's hard limit on one message.
    max_frame_size: int = attrs.field(default=DEFAULT_MAX_FRAME_SIZE, validator=_check(
        lambda v: type(v) is int and 1024 <= v < 2**32, "an integer in [1024, 2**32)"))
    consensus: str = attrs.field(default="bullshark", validator=_check(
        lambda v: v in CONSENSUS_PROTOCOLS, f"one of {CONSENSUS_PROTOCOLS}"))
    #: When a store write counts as durable: "normal" = survives the process being killed
    #: (kill -9, a crash), fsync only at checkpoints; "full" = fsync at every commit, also
    #: survives power loss, at the cost of two fsyncs per group commit on the ack path
    #: (the references acknowledge batches after a RocksDB write without sync: "normal").
    store_sync: str = attrs.field(default="normal", validator=_check(
        lambda v: v in ("normal", "full"), "'normal' or 'full'"))
    #: Backoff of reliable sends, and of redialing an unreachable peer.
    retry: RetryConfig = attrs.field(default=DEFAULT_RETRY, validator=_is_retry)
    dial_retry: RetryConfig = attrs.field(default=DEFAULT_DIAL_RETRY, validator=_is_retry)
    #: Requests in flight to one peer, and jobs its executor may hold in all.
    pool_capacity: int = _int(128)
    max_pending: int = _int(20_000)
    #: Handlers one connection runs at once; more requests are refused OVERLOADED.
    max_concurrent_handlers: int = _int(MAX_CONCURRENT_HANDLERS)
    handshake_timeout: float = _seconds(10.0)
    keepalive_interval: float = _seconds(5.0)
    idle_timeout: float = _seconds(30.0)
    connect_timeout: float = _seconds(5.0)
    request_timeout: float = _seconds(DEFAULT_REQUEST_TIMEOUT)

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
        if self.keepalive_interval >= self.idle_timeout:
            raise ConfigError(f"keepalive_interval: must be below idle_timeout "
                              f"({self.idle_timeout}), got {self.keepalive_interval}")

    def network_config(self) -> NetworkConfig:
        """The network layer's config built from these parameters."""
        connection = ConnectionConfig(
            handshake_timeout=self.handshake_timeout, keepalive_interval=self.keepalive_interval,
            idle_timeout=self.idle_timeout, max_frame_size=self.max_frame_size)
        return NetworkConfig(
            connection=connection, retry=self.retry, dial_retry=self.dial_retry,
            pool_capacity=self.pool_capacity, max_pending=self.max_pending,
            connect_timeout=self.connect_timeout, request_timeout=self.request_timeout,
            max_concurrent_handlers=self.max_concurrent_handlers)

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, value: Any) -> Parameters:
        """Fields may be omitted (defaults apply); unknown fields are refused."""
        reader = JsonReader(value, optional=attrs.fields_dict(cls))
        fields = dict(reader.value)
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
