"""Per-peer counters kept by the peer manager.

Plain attributes (no locking: one event loop owns them). ``PeerManager.snapshot()`` turns
them, the live connection's stats and the peer's executor gauges into one JSON-ready dict
per peer; the admin endpoint and Prometheus exporter read that snapshot.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import attrs

__all__ = ["PeerMetrics"]


@attrs.define
class PeerMetrics:
    """Counters that outlive any one connection to a peer."""

    #: Successful connections after the first one.
    reconnects: int = 0
    connects: int = 0
    dial_failures: int = 0
    #: Reliable-send attempts that failed transiently and were retried.
    retries: int = 0
    sends_ok: int = 0
    sends_failed: int = 0
    sends_cancelled: int = 0
    #: Traffic of connections already closed (live ones are added at snapshot time).
    closed_bytes_in: int = 0
    closed_bytes_out: int = 0
    closed_frames_in: int = 0
    closed_frames_out: int = 0
    #: Outbound budget (connection.py): times a connection to this peer went over it (its
    #: requests held), times we stopped reading it, and connections aborted because the
    #: peer stayed over it (did not read the answers it asked for).
    budget_throttles: int = 0
    read_pauses: int = 0
    budget_disconnects: int = 0
    #: Our dials the peer refused as a duplicate while we held no other connection (it
    #: held a connection we had lost; see ``PeerManager._tie_break``), and connections to
    #: it we aborted as stale (nothing came back to a check made when it dialed again).
    duplicate_refusals: int = 0
    stale_aborts: int = 0
    errors: Counter[str] = attrs.field(factory=Counter)
    last_error: str | None = None
    last_error_at: float | None = None

    def record_error(self, kind: str, error: BaseException | str) -> None:
        self.errors[kind] += 1
        self.last_error = f"{kind}: {error}"
        self.last_error_at = time.time()

    def as_dict(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        out["errors"] = dict(self.errors)
        return out
