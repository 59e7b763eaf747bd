"""peer_top: rows and rates from snapshots, rendering, the Textual app's keys (headless),
and ``--once --json`` against a live in-process node."""

from __future__ import annotations

import asyncio
import json
import socket

from rich.console import Console
from textual.widgets import DataTable, Static

from narwhal.crypto import AuthorityKeys
from narwhal.node.runner import AuthorityRunner
from narwhal.peer_top.app import PeerTop, main
from narwhal.peer_top.model import Tracker
from narwhal.peer_top.render import once_table
from narwhal.peer_top.source import Sample, Target

from .node.helpers import local_network
from .test_admin import PEER, STATUS

TARGET = Target("node-0", "127.0.0.1:9")


def status(step: int) -> dict:
    """STATUS after ``step`` seconds: traffic grows; v3 is down and its dials keep failing."""
    down = {**PEER, "name": "v3/primary", "key": "ef" * 32, "state": "disconnected",
            "rtt_ms": None, "dial_failures": 2 * step, "last_error": f"dial: refused {step}"}
    slow = {**PEER, "name": "v2/primary", "key": "12" * 32, "rtt_ms": 900.0,
            "in_flight": 128, "bytes_in": 5000 * step}
    primary = {**STATUS["primary"], "round": 7 + step,
               "peers": [{**PEER, "bytes_in": 1000 + 4000 * step}, slow, down]}
    workers = {"0": {**STATUS["workers"]["0"], "txs_received": 100 * step}}
    return {**STATUS, "primary": primary, "workers": workers}


class Fixed:
    """A fetcher returning successive fixed snapshots (or failures) 1 s apart."""

    def __init__(self, fail: bool = False) -> None:
        self.step, self.fail = 0, fail

    def __call__(self, target: Target) -> Sample:
        self.step += 1
        if self.fail:
            return Sample(target, self.step, error="connection refused")
        return Sample(target, float(self.step), status(self.step))


def tracked(samples: int) -> Tracker:
    tracker, fetcher = Tracker(), Fixed()
    for _ in range(samples):
        tracker.update(fetcher(TARGET))
    return tracker


def test_rows_rates_and_health_from_successive_snapshots():
    tracker = tracked(2)
    rows = {r.name: r for r in tracker.all_rows()}
    assert set(rows) == {"v1/primary", "v2/primary", "v3/primary", "v1/worker-0"}
    assert rows["v1/primary"].in_rate == 4000 and rows["v1/primary"].problems == []
    assert rows["v2/primary"].problems == ["rtt high", "pool full"]
    assert rows["v3/primary"].problems == ["disconnected", "retrying"]
    node = tracker.nodes["node-0"]
    assert (node.round, node.tx_rate) == (9, 100)
    history = tracker.history[rows["v3/primary"].id]
    assert list(history.errors) == ["dial: refused 1", "dial: refused 2"]


def test_a_peer_being_rate_limited_is_flagged_while_its_count_grows():
    def sample(step: int, limited: int) -> Sample:
        snapshot = status(step)
        snapshot["primary"]["peers"][0] = {**snapshot["primary"]["peers"][0],
                                           "rate_limited": limited}
        return Sample(TARGET, float(step), snapshot)

    tracker = Tracker()
    for step, limited in ((1, 0), (2, 7), (3, 7)):
        tracker.update(sample(step, limited))
        row = next(r for r in tracker.all_rows() if r.name == "v1/primary")
        assert row.rate_limited == limited
        assert row.problems == (["rate limited"] if step == 2 else [])
    console = Console(record=True, width=250)
    console.print(once_table(tracker, console.width))
    assert "limited" in console.export_text()


def test_once_table_renders_in_a_narrow_terminal_and_shows_unreachable_nodes():
    tracker = tracked(2)
    tracker.update(Sample(Target("node-1", "127.0.0.1:1"), 0, error="connection refused"))
    console = Console(record=True, width=60)
    console.print(once_table(tracker, console.width))
    text = console.export_text()
    assert "v3/primary" in text and "disconnected" in text
    assert "node-1" in text and "unreachable: connection refused" in text


async def test_app_sort_filter_detail_and_quit():
    app = PeerTop([TARGET], interval=60, fetcher=Fixed())
    async with app.run_test(size=(160, 40)) as pilot:
        await app.poll()
        table = app.query_one(DataTable)
        assert table.row_count == 4
        assert "round 9" in str(app.query_one("#header", Static).render())
        await pilot.press("s", "s", "s")
        assert app.sort_index == 3  # role
        assert str(table.get_row_at(table.row_count - 1)[3]) == "worker"
        await pilot.press("slash", *"v3", "enter")
        assert app.filter_text == "v3" and table.row_count == 1
        await pilot.press("enter")  # select the row under the cursor
        await pilot.pause()
        assert app.selected.endswith("ef" * 32) and app.query_one("#detail").display
        assert "dial: refused" in str(app.query_one("#errors", Static).render())
        await pilot.press("escape")
        assert app.selected is None and not app.query_one("#detail").display
        await pilot.press("q")
    assert app.return_code == 0


async def test_app_shows_an_unreachable_node_and_keeps_polling():
    fetcher = Fixed(fail=True)
    app = PeerTop([TARGET], interval=0.05, fetcher=fetcher)
    async with app.run_test() as pilot:
        await pilot.pause(0.3)
        assert "unreachable: connection refused (retrying)" in str(
            app.query_one("#header", Static).render())
        assert fetcher.step >= 3
        fetcher.fail = False
        await pilot.pause(0.2)
        assert app.query_one(DataTable).row_count == 4


async def test_once_json_against_a_live_in_process_node(tmp_path, capsys):
    net = local_network(tmp_path, nodes=4, workers=1)
    keys = AuthorityKeys.load(net.key_files[0])
    authority = net.committee.authorities[keys.name]
    runner = AuthorityRunner(keys, net.committee,
                             net.parameters, net.node_dir(0))
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    host, port = authority.primary.admin_address.split(":")
    for _ in range(100):
        with socket.socket() as probe:
            if probe.connect_ex((host, int(port))) == 0:
                break
        await asyncio.sleep(0.05)
    try:
        code = await asyncio.to_thread(
            main, ["--admin", authority.primary.admin_address, "--once", "--json"])
    finally:
        stop.set()
        assert await task
    out = json.loads(capsys.readouterr().out.split("\n", 1)[1])  # after "admin endpoint: ..."
    [node] = out["nodes"]
    assert code == 0 and node["reachable"] and node["round"] is not None, node
    peers = node["peers"]
    assert {p["local"] for p in peers} == {"primary", "worker-0"}
    others = [p for p in peers if p["local"] == "primary" and p["role"] == "primary"]
    assert len(others) == 3 and {p["state"] for p in others} == {"disconnected"}  # alone
