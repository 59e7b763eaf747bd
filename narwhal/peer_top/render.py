"""Cells, colours and the one-shot output (``--once``: a rich table, or JSON).

:data:`COLUMNS` is the single description of the peer table that both the rich table and
the Textual ``DataTable`` use: a title, a sort key and a cell formatter per column.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from narwhal.peer_top.model import NodeState, PeerRow, Tracker

__all__ = ["COLUMNS", "columns", "header", "once_json", "once_table", "row_cells", "row_style"]


def _bytes_rate(value: float | None) -> str:
    if value is None:
        return "-"
    for unit in ("B/s", "KB/s", "MB/s"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B/s" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB/s"


def _rtt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _queue(row: PeerRow) -> str:
    return f"{row.queued} ({row.in_flight + row.queued}/{row.pool_capacity})"


def _num(value: Any) -> tuple[bool, Any]:
    """Sort key putting None last."""
    return (value is None, value if value is not None else 0)


#: (title, sort key, cell text) of each column, in display order.
COLUMNS: list[tuple[str, Callable[[PeerRow], Any], Callable[[PeerRow], str]]] = [
    ("node", lambda r: (r.node, r.local), lambda r: f"{r.node} {r.local}"),
    ("peer", lambda r: r.name, lambda r: r.name),
    ("key", lambda r: r.key, lambda r: r.key[:8]),
    ("role", lambda r: r.role, lambda r: r.role),
    ("address", lambda r: r.address or "", lambda r: r.address or "-"),
    ("state", lambda r: (r.state, r.problems), lambda r: ", ".join(r.problems) or r.state),
    ("rtt", lambda r: _num(r.rtt_ms), lambda r: _rtt(r.rtt_ms)),
    ("in", lambda r: _num(r.in_rate), lambda r: _bytes_rate(r.in_rate)),
    ("out", lambda r: _num(r.out_rate), lambda r: _bytes_rate(r.out_rate)),
    ("in-flight", lambda r: r.in_flight, lambda r: str(r.in_flight)),
    ("queue", lambda r: r.queued, _queue),
    ("retries", lambda r: r.retries + r.dial_failures,
     lambda r: f"{r.retries}+{r.dial_failures}d" if r.dial_failures else str(r.retries)),
    ("errors", lambda r: r.errors, lambda r: str(r.errors)),
    ("limited", lambda r: r.rate_limited, lambda r: str(r.rate_limited)),
    ("last error", lambda r: r.last_error or "", lambda r: (r.last_error or "")[:60]),
]


#: What a terminal narrower than :data:`WIDE` still shows.
NARROW = ("node", "peer", "state", "rtt", "in", "out", "retries")
WIDE = 140


def columns(width: int | None = None) -> list[int]:
    """Indexes into :data:`COLUMNS` shown at ``width`` (all when None or wide enough)."""
    return [i for i, (title, _, _) in enumerate(COLUMNS)
            if width is None or width >= WIDE or title in NARROW]


def row_style(row: PeerRow) -> str:
    """Red when disconnected, yellow when retrying or slow, magenta when the pool is full."""
    problems = row.problems
    if "disconnected" in problems:
        return "bold red"
    if "retrying" in problems or "rtt high" in problems:
        return "yellow"
    return "magenta" if problems else ""


def row_cells(row: PeerRow, shown: list[int] | None = None) -> list[Text]:
    style = row_style(row)
    return [Text(COLUMNS[i][2](row), style=style) for i in shown or range(len(COLUMNS))]


def header(nodes: list[NodeState], live: bool = False) -> Text:
    """One line per node: progress, or that it is unreachable (``live``: and retried)."""
    text = Text()
    for node in nodes:
        text.append(f"{node.label} ", style="bold")
        text.append(f"{node.admin}  ", style="dim")
        if node.error is not None:
            again = " (retrying)" if live else ""
            text.append(f"unreachable: {node.error}{again}\n", style="bold red")
            continue
        rate = "-" if node.tx_rate is None else f"{node.tx_rate:.0f}"
        text.append(f"round {node.round}  committed {node.committed_round}  "
                    f"index {node.consensus_index}  tx/s {rate}\n")
    text.rstrip()
    return text


def once_table(tracker: Tracker, width: int | None = None) -> Group:
    """The header and a rich table of every peer (what ``--once`` prints); a terminal
    narrower than :data:`WIDE` gets the :data:`NARROW` columns only."""
    shown = columns(width)
    table = Table(box=None, header_style="bold", pad_edge=False)
    rows = tracker.all_rows()
    for i in shown:
        title = COLUMNS[i][0]
        keep = max((len(COLUMNS[i][2](r)) for r in rows), default=0) if title == "peer" else 0
        keep = 12 if title == "state" else keep  # "disconnected" in one piece
        table.add_column(title, overflow="fold", min_width=min(keep, 20) or None)
    for row in sorted(rows, key=COLUMNS[0][1]):
        table.add_row(*row_cells(row, shown))
    return Group(header(list(tracker.nodes.values())), table)


def once_json(tracker: Tracker) -> dict[str, Any]:
    return {"nodes": [{**node.as_json(), "peers": [r.as_json() for r in tracker.rows[label]]}
                      for label, node in tracker.nodes.items()]}
