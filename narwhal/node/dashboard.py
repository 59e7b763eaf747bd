"""What ``testnet`` shows: per-node progress read from status files, as a rich table.

:class:`NodeView` keeps the recent samples of one node's ``status.json`` (see
:mod:`narwhal.node.runner`) and derives rates from successive samples, using the nodes'
own timestamps. :func:`render` draws the live table and :func:`summary` the final one;
:func:`print_whole` prints a table uncut even when stdout is not a terminal.

The status documents come from roles written elsewhere, so every field is read with a
default: a missing field shows as ``-``/0, never as a crash of the dashboard.
"""

from __future__ import annotations

import collections
import copy
import time
from pathlib import Path
from typing import Any

import attrs
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from narwhal.node.status import read_status

__all__ = ["NodeView", "client_line", "print_whole", "render", "summary"]

#: Seconds of samples a rate is computed over.
RATE_WINDOW = 3.0
#: Worker counters that count stored transactions, best first.
STORED_FIELDS = ("txs_stored", "txs_sealed", "txs_received")
#: Primary status field: recent certificate latency in ms (a number), when reported.
LATENCY_FIELD = "certificate_latency_ms"
#: Room to measure a table in: wider than any table here, so it is measured unwrapped.
UNLIMITED_WIDTH = 10_000


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _worker_sum(doc: dict[str, Any], *fields: str) -> int:
    """The sum over the node's workers of the first of ``fields`` they report."""
    total = 0
    for worker in (doc.get("workers") or {}).values():
        for field in fields:
            if isinstance(worker.get(field), int):
                total += worker[field]
                break
    return total


def _peers_up(doc: dict[str, Any]) -> tuple[int, int]:
    """(connected, known) peers of the node's primary."""
    peers = (doc.get("primary") or {}).get("peers") or []
    if isinstance(peers, dict):
        peers = list(peers.values())
    up = sum(isinstance(p, dict) and p.get("state") == "connected" for p in peers)
    return up, len(peers)


@attrs.frozen
class Sample:
    time: float
    round: int
    committed: int
    certificates: int
    batches: int
    txs_in: int
    txs_stored: int
    #: The primary's recent certificate latency (header proposed -> certificate formed), ms,
    #: if its status reports one under :data:`LATENCY_FIELD`.
    latency_ms: float | None

    @classmethod
    def of(cls, doc: dict[str, Any]) -> Sample:
        primary = doc.get("primary") or {}
        return cls(time=float(doc.get("time", 0.0)), round=int(primary.get("round", 0)),
                   committed=int(primary.get("committed_round", 0)),
                   certificates=int(primary.get("certificates", 0)),
                   batches=_worker_sum(doc, "batches_sealed"),
                   txs_in=_worker_sum(doc, "txs_received"),
                   txs_stored=_worker_sum(doc, *STORED_FIELDS),
                   latency_ms=_number(primary.get(LATENCY_FIELD)))


@attrs.define
class NodeView:
    """One node as seen through its status file."""

    name: str
    status_path: Path
    doc: dict[str, Any] = attrs.field(factory=dict)
    first: Sample | None = None
    recent: collections.deque[Sample] = attrs.field(factory=collections.deque)
    exit_code: int | None = None

    def poll(self) -> None:
        doc = read_status(self.status_path)
        if doc is None or (self.recent and doc.get("time") == self.recent[-1].time):
            return
        self.doc = doc
        sample = Sample.of(doc)
        self.first = self.first or sample
        self.recent.append(sample)
        while len(self.recent) > 2 and sample.time - self.recent[1].time >= RATE_WINDOW:
            self.recent.popleft()

    @property
    def last(self) -> Sample | None:
        return self.recent[-1] if self.recent else None

    def rate(self, field: str, since: Sample | None = None) -> float:
        """Per second, between ``since`` (default: the oldest recent sample) and now."""
        start, end = since or (self.recent[0] if self.recent else None), self.last
        if start is None or end is None or end.time <= start.time:
            return 0.0
        return float(getattr(end, field) - getattr(start, field)) / (end.time - start.time)

    @property
    def state(self) -> str:
        if self.exit_code is not None:
            return f"[red]exited {self.exit_code}[/]"
        if not self.doc:
            return "[yellow]starting[/]"
        if time.time() - self.doc.get("time", 0) > 5:
            return "[red]stale[/]"
        return "[green]up[/]"

    @property
    def last_error(self) -> str:
        error = self.doc.get("last_error") or {}
        return str(error.get("message", ""))[:60]


def _counts(sample: Sample | None, *fields: str) -> list[str]:
    return [str(getattr(sample, f)) if sample else "-" for f in fields]


def render(views: list[NodeView], title: str, client: dict[str, Any] | None) -> Table:
    table = Table(title=title, caption=client_line(client))
    for column in ("node", "state", "round", "rounds/s", "committed", "certificates",
                   "batches", "tx/s in", "peers", "last error"):
        table.add_column(column, justify="left" if column in ("node", "last error") else "right")
    for view in views:
        last = view.last
        up, known = _peers_up(view.doc)
        table.add_row(
            view.name, view.state,
            *_counts(last, "round"), f"{view.rate('round'):.1f}",
            *_counts(last, "committed", "certificates", "batches"),
            f"{view.rate('txs_in'):,.0f}",
            f"[{'green' if known and up == known else 'red'}]{up}/{known}[/]",
            view.last_error)
    return table


def client_line(client: dict[str, Any] | None) -> str:
    if not client:
        return "load client: none" if client is None else "load client: starting"
    error = f", last error: {client['last_error']}" if client.get("last_error") else ""
    return (f"load client: sent {client.get('sent', 0):,}, accepted {client.get('accepted', 0):,},"
            f" reconnects {client.get('reconnects', 0)}, lagged {client.get('lagged', 0):,}{error}")


def summary(views: list[NodeView]) -> Table:
    """Per node over the whole run: final round, rounds/s, certificates, batches, tx/s."""
    table = Table(title="summary (rates over the whole run)")
    for column in ("node", "final round", "rounds/s", "committed", "certificates", "batches",
                   "cert latency ms", "tx/s in", "tx/s stored", "exit"):
        table.add_column(column, justify="left" if column == "node" else "right")
    for view in views:
        last = view.last
        table.add_row(
            view.name, *_counts(last, "round"), f"{view.rate('round', view.first):.2f}",
            *_counts(last, "committed", "certificates", "batches"),
            "-" if last is None or last.latency_ms is None else f"{last.latency_ms:.0f}",
            f"{view.rate('txs_in', view.first):,.0f}",
            f"{view.rate('txs_stored', view.first):,.0f}",
            "-" if view.exit_code is None else str(view.exit_code))
    return table


def print_whole(console: Console, table: Table) -> None:
    """Print ``table`` with every node name and header whole.

    On a terminal rich fits the table to the window. Into a file or a pipe (``testnet ... |
    tee``, a CI log) it assumes 80 columns and cuts what does not fit (``node…``,
    ``comm…``), which makes the summary useless exactly where it is kept; there the table
    is printed at its natural width instead (a copy of it: ``table`` is left as it was)."""
    if console.is_terminal:
        console.print(table)
        return
    options = console.options.update_width(UNLIMITED_WIDTH)
    natural = Measurement.get(console, options, table).maximum
    if natural > console.width:
        table = copy.copy(table)
        table.width = natural
    console.print(table, crop=False)
