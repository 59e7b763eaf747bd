"""From status snapshots to peer rows: rates, health and a short history per peer.

A :class:`Tracker` keeps the previous sample of each node; each new sample becomes one
:class:`PeerRow` per peer of each local role (primary, worker-<i>), with the in/out
throughput computed from the byte counters of the two samples. Per row it also keeps the
last :data:`HISTORY` RTT and throughput values (the detail pane's sparklines) and the
distinct errors seen (the error history).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import attrs

from narwhal.metrics import local_roles
from narwhal.peer_top.source import Sample

__all__ = ["HISTORY", "RTT_HIGH_MS", "NodeState", "PeerRow", "Tracker"]

HISTORY = 60
#: An RTT above this marks the peer unhealthy.
RTT_HIGH_MS = 250.0


@attrs.define
class PeerRow:
    """One peer as seen by one local role of one node."""

    node: str
    local: str
    name: str
    key: str
    role: str
    address: str | None
    state: str
    rtt_ms: float | None
    bytes_in: int
    bytes_out: int
    in_rate: float | None  # bytes/s since the previous sample
    out_rate: float | None
    in_flight: int
    queued: int
    pool_capacity: int
    retries: int
    dial_failures: int
    errors: int
    last_error: str | None
    retrying: bool = False
    #: Frames of this peer refused RATE_LIMITED (or dropped, one-way) so far, and whether
    #: that count grew since the previous sample (the peer is being limited right now).
    rate_limited: int = 0
    limiting: bool = False

    @property
    def id(self) -> str:
        return f"{self.node}/{self.local}/{self.key}"

    @property
    def problems(self) -> list[str]:
        """Why the peer is unhealthy (empty when it is fine)."""
        out = []
        if self.state != "connected":
            out.append("disconnected")
        if self.retrying:
            out.append("retrying")
        if self.rtt_ms is not None and self.rtt_ms > RTT_HIGH_MS:
            out.append("rtt high")
        if self.pool_capacity and (self.in_flight >= self.pool_capacity or self.queued):
            out.append("pool full")
        if self.limiting:
            out.append("rate limited")
        return out

    def as_json(self) -> dict[str, Any]:
        return {**attrs.asdict(self), "problems": self.problems}


@attrs.define
class NodeState:
    """The header of one node: reachable or not, and its progress."""

    label: str
    admin: str
    error: str | None = None
    round: int | None = None
    committed_round: int | None = None
    consensus_index: int | None = None
    tx_rate: float | None = None  # transactions/s accepted by its workers
    txs_received: int = 0

    def as_json(self) -> dict[str, Any]:
        return {**attrs.asdict(self), "reachable": self.error is None}


@attrs.define
class _History:
    rtt: deque[float] = attrs.field(factory=lambda: deque(maxlen=HISTORY))
    throughput: deque[float] = attrs.field(factory=lambda: deque(maxlen=HISTORY))
    errors: deque[str] = attrs.field(factory=lambda: deque(maxlen=20))


class Tracker:
    """Turns successive samples into rows, node headers and per-peer history."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeState] = {}
        self.rows: dict[str, list[PeerRow]] = {}
        self.history: dict[str, _History] = {}
        self._previous: dict[str, tuple[float, dict[str, PeerRow], int]] = {}

    def update(self, sample: Sample) -> None:
        label = sample.target.label
        node = NodeState(label, sample.target.admin)
        self.nodes[label] = node
        if sample.status is None:
            node.error = sample.error or "unreachable"
            self.rows[label] = []
            self._previous.pop(label, None)  # no rates across an outage
            return
        status = sample.status
        primary = status.get("primary") or {}
        node.round, node.committed_round = primary.get("round"), primary.get("committed_round")
        node.consensus_index = primary.get("consensus_index")
        node.txs_received = sum(w.get("txs_received", 0)
                                for w in (status.get("workers") or {}).values())
        then, before, txs_before = self._previous.get(label, (None, {}, 0))
        elapsed = sample.time - then if then is not None else 0.0
        if elapsed > 0:
            node.tx_rate = max(0.0, node.txs_received - txs_before) / elapsed
        rows = [self._row(label, local, peer, before.get(f"{label}/{local}/{peer['key']}"),
                          elapsed)
                for local, role in local_roles(status) for peer in role.get("peers", ())]
        self.rows[label] = rows
        self._previous[label] = (sample.time, {r.id: r for r in rows}, node.txs_received)

    def _row(self, label: str, local: str, p: dict[str, Any], before: PeerRow | None,
             elapsed: float) -> PeerRow:
        errors = p.get("errors") or {}
        row = PeerRow(
            label, local, p.get("name", "?"), p.get("key", ""), p.get("role", "?"),
            p.get("address"), p.get("state", "?"), p.get("rtt_ms"),
            p.get("bytes_in", 0), p.get("bytes_out", 0), None, None,
            p.get("in_flight", 0), p.get("queued", 0), p.get("pool_capacity", 0),
            p.get("retries", 0), p.get("dial_failures", 0), sum(errors.values()),
            p.get("last_error"), retrying=bool(p.get("backing_off")),
            rate_limited=p.get("rate_limited", 0))
        if before is not None and elapsed > 0:
            row.in_rate = max(0, row.bytes_in - before.bytes_in) / elapsed
            row.out_rate = max(0, row.bytes_out - before.bytes_out) / elapsed
            row.retrying |= (row.retries + row.dial_failures
                             > before.retries + before.dial_failures)
            row.limiting = row.rate_limited > before.rate_limited
        history = self.history.setdefault(row.id, _History())
        history.rtt.append(row.rtt_ms or 0.0)
        history.throughput.append((row.in_rate or 0.0) + (row.out_rate or 0.0))
        if row.last_error and (not history.errors or history.errors[-1] != row.last_error):
            history.errors.append(row.last_error)
        return row

    def all_rows(self) -> list[PeerRow]:
        return [row for rows in self.rows.values() for row in rows]
