"""The Textual app and the command line of ``peer_top``.

Keys: ``s`` next sort column, ``/`` filter (Enter applies, empty clears), Enter on a row
shows its detail pane (RTT and throughput sparklines, error history), Escape closes the
pane or the filter, ``q`` quits. Every ``--interval`` seconds it fetches ``/status`` of
each target in worker threads; a node that does not answer is shown as unreachable and
fetched again on the next tick.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from rich.console import Console
from textual.app import App, ComposeResult
from textual.binding import BindingType
from textual.containers import Vertical
from textual.css.query import NoMatches
from textual.widgets import DataTable, Footer, Input, Label, Sparkline, Static

from narwhal.peer_top.model import PeerRow, Tracker
from narwhal.peer_top.render import COLUMNS, header, once_json, once_table, row_cells
from narwhal.peer_top.source import Sample, Target, fetch, testnet_targets

__all__ = ["PeerTop", "main"]

Fetch = Callable[[Target], Sample]


class PeerTop(App[None]):
    """Live table of the peers of one or more nodes."""

    TITLE = "peer_top"
    AUTO_FOCUS = "#peers"
    CSS = """
    #header { height: auto; padding: 0 1; background: $boost; }
    #filter { display: none; }
    #detail { display: none; height: auto; max-height: 50%; border-top: solid $accent;
              padding: 0 1; }
    #detail Sparkline { height: 3; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [("q", "quit", "Quit"), ("s", "sort", "Sort"), ("slash", "filter", "Filter"),
                ("escape", "close", "Close")]

    def __init__(self, targets: list[Target], *, interval: float = 1.0,
                 fetcher: Fetch = fetch) -> None:
        super().__init__()
        self.targets, self.interval, self.fetcher = targets, interval, fetcher
        self.tracker = Tracker()
        self.sort_index = 0
        self.filter_text = ""
        self.selected: str | None = None
        self._polling = False

    def compose(self) -> ComposeResult:
        yield Static(id="header")
        yield Input(placeholder="filter (any cell contains; Enter to apply)", id="filter")
        yield DataTable(id="peers", cursor_type="row", zebra_stripes=True)
        with Vertical(id="detail"):
            yield Static(id="detail-title")
            yield Label("RTT (ms)")
            yield Sparkline([], id="rtt")
            yield Label("throughput in+out (B/s)")
            yield Sparkline([], id="throughput")
            yield Static(id="errors")
        yield Footer()

    async def on_mount(self) -> None:
        self.query_one(DataTable).add_columns(*(title for title, _, _ in COLUMNS))
        await self.poll()
        self.set_interval(self.interval, self.poll)

    async def poll(self) -> None:
        """Fetch every target once (in threads) and redraw."""
        if self._polling:
            return
        self._polling = True
        try:
            samples = await asyncio.gather(
                *(asyncio.to_thread(self.fetcher, t) for t in self.targets))
        finally:
            self._polling = False
        for sample in samples:
            self.tracker.update(sample)
        if self.is_running and self.screen.is_current:  # not while shutting down
            with contextlib.suppress(NoMatches):
                self.redraw()

    def visible_rows(self) -> list[PeerRow]:
        rows = self.tracker.all_rows()
        if self.filter_text:
            needle = self.filter_text.lower()
            rows = [r for r in rows
                    if any(needle in cell(r).lower() for _, _, cell in COLUMNS)]
        return sorted(rows, key=COLUMNS[self.sort_index][1])

    def redraw(self) -> None:
        sort = COLUMNS[self.sort_index][0]
        title = header(list(self.tracker.nodes.values()), live=True)
        title.append(f"\nsort: {sort}" + (f"  filter: {self.filter_text}" if self.filter_text
                                          else ""), style="dim")
        self.query_one("#header", Static).update(title)
        table = self.query_one(DataTable)
        table.clear()
        for row in self.visible_rows():
            table.add_row(*row_cells(row), key=row.id)
        if self.selected is not None and self.selected in table.rows:
            table.move_cursor(row=table.get_row_index(self.selected))
        self._show_detail()

    def _show_detail(self) -> None:
        pane = self.query_one("#detail")
        row = next((r for r in self.tracker.all_rows() if r.id == self.selected), None)
        pane.display = row is not None
        if row is None:
            return
        history = self.tracker.history[row.id]
        self.query_one("#detail-title", Static).update(
            f"[b]{row.name}[/b] ({row.role}) of {row.node} {row.local} — {row.address or '-'}"
            f" — {', '.join(row.problems) or row.state}  key {row.key}")
        self.query_one("#rtt", Sparkline).data = list(history.rtt)
        self.query_one("#throughput", Sparkline).data = list(history.throughput)
        errors = "\n".join(history.errors) or "no errors"
        self.query_one("#errors", Static).update(f"errors:\n{errors}")

    def action_sort(self) -> None:
        self.sort_index = (self.sort_index + 1) % len(COLUMNS)
        self.redraw()

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    def action_close(self) -> None:
        box = self.query_one("#filter", Input)
        if box.display:
            box.display = False
        else:
            self.selected = None
        self.query_one(DataTable).focus()
        self.redraw()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.filter_text = event.value.strip()
        event.input.display = False
        self.query_one(DataTable).focus()
        self.redraw()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.selected = event.row_key.value
        self._show_detail()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="peer_top", description=__doc__.split("\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--admin", metavar="HOST:PORT", help="admin endpoint of one node")
    where.add_argument("--testnet", metavar="DIR", type=Path,
                       help="every node of a testnet folder (reads DIR/committee.json)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between fetches")
    parser.add_argument("--once", action="store_true",
                        help="print one snapshot and exit (for scripts and non-TTY use)")
    parser.add_argument("--json", action="store_true", help="with --once: JSON, not a table")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (1 with --once when a node is unreachable)."""
    args = parse_args(argv)
    targets = (testnet_targets(args.testnet) if args.testnet
               else [Target("node", args.admin)])
    if not targets:
        print("peer_top: no admin addresses found", file=sys.stderr)
        return 2
    if not args.once:
        PeerTop(targets, interval=args.interval).run()
        return 0
    tracker = Tracker()
    for target in targets:
        tracker.update(fetch(target))
    if args.json:
        print(json.dumps(once_json(tracker), indent=2))
    else:
        console = Console()
        console.print(once_table(tracker, console.width))
    return 0 if all(n.error is None for n in tracker.nodes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
