"""The testnet table: rates from successive status files, tolerant of missing fields."""

from __future__ import annotations

import io
import json

from rich.console import Console

from narwhal.node.dashboard import NodeView, client_line, print_whole, render, summary
from narwhal.node.status import LastError, read_status, write_status


def status(t: float, round_: int, txs: int) -> dict:
    return {"time": t, "primary": {"round": round_, "certificates": 3 * round_,
                                   "committed_round": round_ - 2,
                                   "certificate_latency_ms": 120.4,
                                   "peers": [{"state": "connected"}, {"state": "connecting"}]},
            "workers": {"0": {"batches_sealed": 1, "txs_received": txs, "txs_stored": 4 * txs},
                        "1": {"batches_sealed": 2, "txs_received": txs}}}


def text(renderable) -> str:
    console = Console(width=200, record=True)
    console.print(renderable)
    return console.export_text()


def test_rates_come_from_successive_snapshots(tmp_path):
    path = tmp_path / "status.json"
    view = NodeView("node-0", path)
    view.poll()
    assert view.last is None and "starting" in text(render([view], "t", None))
    for t, round_, txs in ((100.0, 1, 0), (101.0, 11, 1000), (102.0, 21, 2000)):
        path.write_text(json.dumps(status(t, round_, txs)))
        view.poll()
    assert view.rate("round") == 10.0 and view.rate("txs_in") == 2000.0
    assert view.rate("txs_stored", view.first) == 5000.0  # 4x from worker 0, 1x from worker 1
    table = text(render([view], "title", {"sent": 5, "accepted": 4}))
    assert "1/2" in table and "2,000" in table and "accepted 4" in table
    assert "120" in text(summary([view]))


def test_partial_or_broken_status_files_do_not_break_the_table(tmp_path):
    path = tmp_path / "status.json"
    view = NodeView("node-0", path)
    path.write_text("{not json")
    view.poll()
    path.write_text(json.dumps({"time": 1.0, "workers": {}}))
    view.poll()
    assert view.last is not None and view.last.round == 0
    assert "node-0" in text(render([view], "t", {})) and "node-0" in text(summary([view]))
    assert client_line(None) == "load client: none"


def test_status_files_are_replaced_whole_and_remember_the_last_error(tmp_path):
    import logging

    handler = LastError()
    logger = logging.getLogger("test.dashboard")
    logger.addHandler(handler)
    try:
        logger.info("fine")
        assert handler.as_json() is None
        logger.warning("disk %s", "full")
    finally:
        logger.removeHandler(handler)
    write_status(tmp_path / "s.json", {"last_error": handler.as_json(), "raw": b"\x01"})
    doc = read_status(tmp_path / "s.json")
    assert doc["last_error"]["message"] == "WARNING test.dashboard: disk full"
    assert doc["raw"] == "01" and "time" in doc
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]


SUMMARY_HEADERS = ("node", "final round", "rounds/s", "committed", "certificates", "batches",
                   "cert latency ms", "tx/s in", "tx/s stored", "exit")


def test_the_summary_keeps_whole_names_when_stdout_is_not_a_terminal(tmp_path, monkeypatch):
    """Into a pipe or file rich assumes 80 columns; the summary must not be cut there."""
    monkeypatch.delenv("COLUMNS", raising=False)
    views = [NodeView(f"node-{i}", tmp_path / f"node-{i}.json") for i in range(12)]
    out = io.StringIO()
    console = Console(file=out)
    assert not console.is_terminal and console.width == 80  # what cut the names
    print_whole(console, summary(views))
    rows = out.getvalue().splitlines()
    header = next(row for row in rows if "final round" in row)
    assert [cell.strip() for cell in header.strip("┃").split("┃")] == list(SUMMARY_HEADERS)
    assert [row.split("│")[1].strip() for row in rows if row.startswith("│")] == [
        view.name for view in views]
    assert "…" not in out.getvalue() and console.width == 80


def test_on_a_terminal_the_summary_fits_the_window(tmp_path):
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=60, color_system=None)
    print_whole(console, summary([NodeView("node-0", tmp_path / "status.json")]))
    assert max(map(len, out.getvalue().splitlines())) <= 60
