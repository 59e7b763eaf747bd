"""Prometheus exporter of one node, built from the roles' ``status()`` documents.

No double bookkeeping: :class:`StatusCollector` calls a status function at scrape time
(the runner's :meth:`~narwhal.node.runner.AuthorityRunner.status`: ``{"primary": {...,
"peers": [...]}, "workers": {"0": {..., "peers": [...]}}}``) and turns the counters the
roles already keep into metric families. Each node gets its own
:class:`~prometheus_client.CollectorRegistry` (:func:`node_registry`), never the global
one, so many nodes can live in one process (the tests do that).

Per-peer families carry the labels ``local`` (our role that holds the connection:
``primary`` or ``worker-<i>``), ``peer`` (the peer's name, e.g. ``v2/primary``) and
``role`` (the peer's role).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

__all__ = ["StatusCollector", "local_roles", "node_registry"]

StatusFn = Callable[[], dict[str, Any]]
PEER_LABELS = ["local", "peer", "role"]

#: Per-peer counters: (metric name, help, snapshot key).
PEER_COUNTERS = [
    ("narwhal_peer_reconnects", "Successful connections after the first one", "reconnects"),
    ("narwhal_peer_dial_failures", "Failed attempts to dial the peer", "dial_failures"),
    ("narwhal_peer_duplicate_refusals",
     "Our dials the peer refused as duplicates while we held no other connection",
     "duplicate_refusals"),
    ("narwhal_peer_stale_aborts", "Connections aborted: silent after the peer dialed again",
     "stale_aborts"),
    ("narwhal_peer_retries", "Reliable sends retried after a transient failure", "retries"),
    ("narwhal_peer_received_bytes", "Bytes received from the peer", "bytes_in"),
    ("narwhal_peer_sent_bytes", "Bytes sent to the peer", "bytes_out"),
    ("narwhal_peer_received_messages", "Frames received from the peer", "frames_in"),
    ("narwhal_peer_sent_messages", "Frames sent to the peer", "frames_out"),
    ("narwhal_peer_sends_failed", "Reliable sends that failed for good", "sends_failed"),
]
#: Per-peer gauges: (metric name, help, snapshot key).
PEER_GAUGES = [
    ("narwhal_peer_requests_in_flight", "Requests to the peer in flight", "in_flight"),
    ("narwhal_peer_queue_depth", "Requests waiting for a pool slot", "queued"),
    ("narwhal_peer_backing_off", "Requests waiting to be retried", "backing_off"),
    ("narwhal_peer_pending", "Jobs held by the peer's executor", "pending"),
    ("narwhal_peer_pool_capacity", "Requests the peer's pool runs at once", "pool_capacity"),
]
#: Primary gauges/counters: (metric name, help, status key, is_counter).
PRIMARY_METRICS = [
    ("narwhal_primary_round", "Current round of the proposer", "round", False),
    ("narwhal_primary_dag_round", "Highest round in the local DAG", "dag_round", False),
    ("narwhal_primary_committed_round", "Last committed round", "committed_round", False),
    ("narwhal_primary_consensus_index", "Certificates ordered by consensus", "consensus_index",
     False),
    ("narwhal_primary_headers_proposed", "Headers proposed", "headers_proposed", True),
    ("narwhal_primary_weak_links_proposed", ("Weak links our headers carried (late certificates "
     "no parent edge reached)"), "weak_links_proposed", True),
    ("narwhal_primary_batches_reproposed", ("Batches of ours proposed again, their header "
     "never committed"), "batches_reproposed", True),
    ("narwhal_primary_batches_reproposed_at_horizon", ("Of those, batches whose header waited "
     "for the GC horizon (the last resort)"), "batches_reproposed_at_horizon", True),
    ("narwhal_primary_certificates", "Certificates accepted", "certificates", True),
    ("narwhal_primary_transactions_committed",
     "Transactions in committed batches (as reported by the workers)", "transactions_committed", True),
    ("narwhal_output_write_failures", ("Failed writes of the ordered output (disk full, I/O "
     "error); each is retried, the output waits"), "output_write_failures", True),
    ("narwhal_output_write_failing", ("1 while the store refuses the ordered output's writes "
     "(the output is held back, never skipped)"), "output_write_failing", False),
]
#: Committed batches our workers lack (``primary.committed_batches``): (metric name, help,
#: status key, is_counter). A missing batch holds the output back at its index.
OUTPUT_METRICS = [
    ("narwhal_output_missing_batches", ("Committed batches our workers do not hold yet (the "
     "output waits at the oldest)"), "missing_batches", False),
    ("narwhal_output_oldest_missing_index", ("Consensus index of the oldest committed batch our "
     "workers lack (0: none missing)"), "oldest_missing_index", False),
    ("narwhal_output_sync_requests", ("Synchronize requests sent to our workers for committed "
     "batches they lack"), "sync_requests", True),
    ("narwhal_output_stalled_batches", ("Committed batches still missing after several sync "
     "requests (each logged at WARNING)"), "stalled", True),
]
#: Output subscribers (``primary.output``, narwhal/primary/output.py): (metric name, help,
#: status key, is_counter). Refusals are one family labelled by ``reason``.
SUBSCRIBER_METRICS = [
    ("narwhal_output_subscribers", "Subscribers connected to the ordered output",
     "subscribers", False),
    ("narwhal_output_subscribers_paused", ("Subscribers whose buffer is full (not reading "
     "fast enough): their next part waits"), "paused", False),
    ("narwhal_output_subscriptions", "Subscriptions accepted", "subscriptions", True),
    ("narwhal_output_bytes_served", "Bytes of OrderedOutput parts sent to subscribers",
     "bytes_served", True),
    ("narwhal_output_parts_served", "OrderedOutput parts sent to subscribers", "items_sent", True),
    ("narwhal_output_subscriber_pauses", "Times a subscriber's buffer was full before a part",
     "pauses", True),
    ("narwhal_output_slow_subscribers_closed", ("Subscribers disconnected for not reading "
     "for the slow-subscriber timeout"), "slow_closed", True),
    ("narwhal_output_parts_too_large", ("Subscriptions ended because a part exceeded the "
     "client's max_frame_size (GOAWAY TOO_LARGE)"), "parts_too_large", True),
    ("narwhal_output_pacer_waits", ("Parts that waited for a turn (the output_rate or the "
     "pacer's slots)"), "pacer_waits", True),
    ("narwhal_output_worker_fetches", "Batches the output asked our workers for",
     "worker_fetches", True),
    ("narwhal_output_cache_hits", "Batches the output found in its cache (or already asked for)",
     "cache_hits", True),
]
#: Admission control of each listener (``status["admission"][listener]``, see
#: narwhal/net/admission.py): half-open connections shed, by reason (status key).
ADMISSION_SHED_REASONS = ["evicted_per_source", "evicted_overall", "throttled_per_source",
                          "throttled_overall", "replayed", "timed_out"]
#: ... and its other counters and gauges: (metric name, help, status key, is_counter).
ADMISSION_METRICS = [
    ("narwhal_admission_accepted", ("Connections accepted by the listener (each starts "
     "half-open)"), "admitted", True),
    ("narwhal_admission_completed", "Handshakes completed on the listener", "completed", True),
    ("narwhal_admission_abandoned", ("Half-open connections that ended otherwise (peer left, "
     "failed handshake)"), "abandoned", True),
    ("narwhal_admission_half_open", "Connections still in their handshake", "half_open", False),
    ("narwhal_admission_peak_half_open", "Most connections in their handshake at once",
     "peak_half_open", False),
]
#: Worker counters: (metric name, help, status key).
WORKER_COUNTERS = [
    ("narwhal_worker_batches_sealed", "Own batches sealed", "batches_sealed"),
    ("narwhal_worker_transactions_received", "Transactions accepted from clients",
     "txs_received"),
    ("narwhal_worker_transactions_sealed", "Transactions in own sealed batches", "txs_sealed"),
    ("narwhal_worker_transactions_stored", "Transactions in stored batches", "txs_stored"),
    ("narwhal_worker_quorums_reached", "Own batches that reached a quorum", "quorums_reached"),
]


def local_roles(status: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(local role name, role status)`` for each role in a runner status document."""
    if status.get("primary"):
        yield "primary", status["primary"]
    for worker_id, worker in sorted((status.get("workers") or {}).items()):
        yield f"worker-{worker_id}", worker


class StatusCollector(Collector):
    """Metric families computed from ``status_fn()`` at each scrape."""

    def __init__(self, status_fn: StatusFn) -> None:
        self.status_fn = status_fn

    def collect(self) -> Iterator[Metric]:
        status = self.status_fn()
        roles = list(local_roles(status))
        yield from _peer_families(roles)
        primary = status.get("primary") or {}
        for name, doc, key, counter in PRIMARY_METRICS:
            if isinstance(primary.get(key), int | float):
                yield _unlabelled(name, doc, primary[key], counter)
        committed = primary.get("committed_batches") or {}
        for name, doc, key, counter in OUTPUT_METRICS if committed else ():
            yield _unlabelled(name, doc, committed.get(key) or 0, counter)
        if primary.get("evidence"):
            yield from _evidence_families(primary["evidence"])
        yield from _subscriber_families(primary.get("output"))
        workers = [(local, s) for local, s in roles if local.startswith("worker")]
        for name, doc, key in WORKER_COUNTERS:
            family = CounterMetricFamily(name, doc, labels=["local"])
            for local, worker in workers:
                family.add_metric([local], worker.get(key, 0))
            yield family
        errors = CounterMetricFamily("narwhal_worker_errors", "Worker rejections by kind",
                                     labels=["local", "kind"])
        for local, worker in workers:
            for kind, count in sorted((worker.get("errors") or {}).items()):
                errors.add_metric([local, kind], count)
        yield errors
        yield from _route_families(roles)
        yield from _serving_read_families(roles)
        yield from _client_port_families(roles)
        limited = CounterMetricFamily(
            "narwhal_rate_limited", "Frames refused RATE_LIMITED (requests) or dropped "
            "(one-way) for exceeding the peer's rate limit on the route; clients count as "
            "peer \"client\"", labels=["local", "peer", "route"])
        for local, role in roles:
            for peer, routes in sorted((role.get("rate_limited") or {}).items()):
                for route, count in sorted(routes.items()):
                    limited.add_metric([local, peer, route], count)
        yield limited
        yield from _admission_families(roles)
        if "loop_stalls" in status:  # the runner's event-loop watchdog
            stalls = CounterMetricFamily("narwhal_loop_stalls", "Event-loop stalls over the "
                                         "watchdog's threshold (each logged with its stack)")
            stalls.add_metric([], status["loop_stalls"])
            lag = GaugeMetricFamily("narwhal_loop_max_lag_seconds", "Worst event-loop lag seen")
            lag.add_metric([], status.get("loop_max_lag_ms", 0) / 1000)
            full = CounterMetricFamily("narwhal_gc_full_collections", "Full (generation 2) "
                                       "collections of the cyclic garbage collector")
            full.add_metric([], status.get("gc_full_collections", 0))
            pause = GaugeMetricFamily("narwhal_gc_max_pause_seconds",
                                      "Longest garbage-collector pause seen (any generation)")
            pause.add_metric([], status.get("gc_max_pause_ms", 0) / 1000)
            yield from (stalls, lag, full, pause)
        size = GaugeMetricFamily("narwhal_store_size_bytes", "Bytes on disk of each role's store",
                                 labels=["local"])
        for local, role in roles:
            size.add_metric([local], role.get("store_bytes", 0))
        yield size
        pruned = CounterMetricFamily("narwhal_retention_pruned_bytes", "Bytes of batches deleted "
                                     "by retention (retain_seconds, retain_bytes)", labels=["local"])
        for local, role in roles:
            if "retention" in role:
                pruned.add_metric([local], role["retention"].get("pruned_bytes", 0))
        yield pruned
        corrupt = CounterMetricFamily("narwhal_store_corrupt_values", "Stored batches found "
                                      "damaged (power cut, bad sector): read as missing, fetched "
                                      "again", labels=["local"])
        for local, role in roles:
            if "store_corrupt_values" in role:
                corrupt.add_metric([local], role["store_corrupt_values"])
        yield corrupt


def _unlabelled(name: str, doc: str, value: float, counter: bool) -> Metric:
    """A counter or gauge family with one unlabelled sample."""
    family = (CounterMetricFamily if counter else GaugeMetricFamily)(name, doc)
    family.add_metric([], value)
    return family


def _evidence_families(evidence: dict[str, Any]) -> Iterator[Metric]:
    """Equivocation evidence (``primary.evidence``): pieces stored per equivocating
    authority (kept across restarts), and what this process detected."""
    stored = GaugeMetricFamily("narwhal_equivocation_evidence",
                               "Pieces of equivocation evidence stored, by equivocating authority",
                               labels=["author"])
    for author, count in sorted((evidence.get("by_author") or {}).items()):
        stored.add_metric([author], count)
    yield stored
    yield _unlabelled("narwhal_equivocation_detected", "New pieces of equivocation evidence "
                      "detected by this process (each logged once at WARNING)",
                      evidence.get("detected", 0), True)
    yield _unlabelled("narwhal_equivocation_not_stored", "Pieces of equivocation evidence "
                      "detected but not stored (over the per-author or total cap)",
                      evidence.get("not_stored", 0), True)


def _serving_read_families(roles: list[tuple[str, dict[str, Any]]]) -> Iterator[Metric]:
    """Store reads serving peers, run off the event loop (``narwhal.serving_reads``)."""
    served = CounterMetricFamily("narwhal_serving_reads", "Peer requests read from the store "
                                 "on reader threads", labels=["local"])
    refused = CounterMetricFamily("narwhal_serving_reads_refused", "Peer requests refused "
                                  "OVERLOADED: too many store reads of that peer, or in all, "
                                  "under way", labels=["local"])
    for local, role in roles:
        reads = role.get("serving_reads") or {}
        if reads:
            served.add_metric([local], reads.get("served", 0))
            refused.add_metric([local], reads.get("refused", 0))
    yield from (served, refused)


def _client_port_families(roles: list[tuple[str, dict[str, Any]]]) -> Iterator[Metric]:
    """Client connections refused by a worker's transactions port or a primary's output
    port: over the port's cap, or over its cap per source address."""
    family = CounterMetricFamily("narwhal_client_connections_refused", "Client connections "
                                 "refused OVERLOADED after their handshake: too many from the "
                                 "client's address (per_address) or in all (other)",
                                 labels=["local", "reason"])
    for local, role in roles:
        clients = role.get("clients") or (role.get("output") or {}).get("clients")
        if clients:
            per_address = clients.get("refused_per_address", 0)
            family.add_metric([local, "per_address"], per_address)
            family.add_metric([local, "other"], clients.get("refused", 0) - per_address)
    yield family


def _subscriber_families(output: dict[str, Any] | None) -> Iterator[Metric]:
    """The output service's subscriber gauges and counters (none without a primary)."""
    if not output:
        return
    for name, doc, key, counter in SUBSCRIBER_METRICS:
        yield _unlabelled(name, doc, output.get(key) or 0, counter)
    refused = CounterMetricFamily("narwhal_output_subscriptions_refused",
                                  "Subscribe requests refused, by reason", labels=["reason"])
    for reason, count in sorted((output.get("refused") or {}).items()):
        refused.add_metric([reason], count)
    yield refused


def _route_families(roles: list[tuple[str, dict[str, Any]]]) -> Iterator[Metric]:
    """Requests served per message type ("route"), errors, handler latency histograms."""
    labels = ["local", "route"]
    requests = CounterMetricFamily("narwhal_route_requests", "Requests served", labels=labels)
    errors = CounterMetricFamily("narwhal_route_errors", "Requests answered with an error",
                                 labels=labels)
    latency = HistogramMetricFamily("narwhal_route_latency_seconds", "Handler latency",
                                    labels=labels)
    for local, role in roles:
        for route, stats in sorted((role.get("routes") or {}).items()):
            requests.add_metric([local, route], stats["requests"])
            errors.add_metric([local, route], stats["errors"])
            latency.add_metric([local, route], [(le, n) for le, n in stats["latency_buckets"]],
                               stats["latency_sum"])
    yield from (requests, errors, latency)


def _admission_families(roles: list[tuple[str, dict[str, Any]]]) -> Iterator[Metric]:
    """Per-listener admission control: what was shed before a handshake completed, and
    how many connections are half-open."""
    listeners = [([local, listener], snap) for local, role in roles
                 for listener, snap in sorted((role.get("admission") or {}).items())]
    labels = ["local", "listener"]
    shed = CounterMetricFamily("narwhal_admission_shed", "Connections closed before their "
                               "handshake completed, without any crypto, by reason",
                               labels=[*labels, "reason"])
    for values, snap in listeners:
        for reason in ADMISSION_SHED_REASONS:
            shed.add_metric([*values, reason], snap.get(reason, 0))
    yield shed
    for name, doc, key, counter in ADMISSION_METRICS:
        family = (CounterMetricFamily if counter else GaugeMetricFamily)(name, doc, labels=labels)
        for values, snap in listeners:
            family.add_metric(values, snap.get(key, 0))
        yield family


def _peer_families(roles: list[tuple[str, dict[str, Any]]]) -> Iterator[Metric]:
    """The per-peer families of every role's peer snapshot."""
    rows = [([local, p["name"], p["role"]], p) for local, s in roles for p in s.get("peers", ())]
    now = time.time()
    connected = GaugeMetricFamily("narwhal_peer_connected", "1 while connected to the peer",
                                  labels=PEER_LABELS)
    uptime = GaugeMetricFamily("narwhal_peer_connection_uptime_seconds",
                               "Age of the live connection", labels=PEER_LABELS)
    rtt = GaugeMetricFamily("narwhal_peer_rtt_seconds", "Keepalive round-trip time (EWMA)",
                            labels=PEER_LABELS)
    errors = CounterMetricFamily("narwhal_peer_errors", "Errors by kind",
                                 labels=[*PEER_LABELS, "kind"])
    last = InfoMetricFamily("narwhal_peer_last_error", "Last error seen with the peer",
                            labels=PEER_LABELS)
    for labels, p in rows:
        up = p.get("state") == "connected"
        connected.add_metric(labels, 1 if up else 0)
        since = p.get("connected_since")
        uptime.add_metric(labels, max(0.0, now - since) if up and since else 0)
        if p.get("rtt_ms") is not None:
            rtt.add_metric(labels, p["rtt_ms"] / 1000)
        for kind, count in sorted((p.get("errors") or {}).items()):
            errors.add_metric([*labels, kind], count)
        if p.get("last_error"):
            last.add_metric(labels, {"error": str(p["last_error"])[:200]})
    yield from (connected, uptime, rtt, errors, last)
    for families, cls in ((PEER_COUNTERS, CounterMetricFamily), (PEER_GAUGES, GaugeMetricFamily)):
        for name, doc, key in families:
            family = cls(name, doc, labels=PEER_LABELS)
            for labels, p in rows:
                family.add_metric(labels, p.get(key) or 0)
            yield family


def node_registry(status_fn: StatusFn) -> CollectorRegistry:
    """A fresh registry holding only a :class:`StatusCollector` of ``status_fn``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(status_fn))
    return registry
