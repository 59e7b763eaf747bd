"""``narwhal testnet``: validators + load client as processes, stopped by Ctrl-C or time."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from narwhal.node.status import read_status

from .helpers import alive, child_env, wait_for

FAST = ["--set", "max_header_delay=0.05", "--set", "batch_size=20000",
        "--set", "max_batch_delay=0.05"]


def start_testnet(directory: Path, *argv: str) -> subprocess.Popen[str]:
    """Output into a pipe, without COLUMNS: what rich sees in a CI log (80 columns)."""
    env = {name: value for name, value in child_env().items() if name != "COLUMNS"}
    return subprocess.Popen(
        [sys.executable, "-m", "narwhal.node", "testnet", "--dir", str(directory), *FAST, *argv],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def assert_whole_summary(out: str, nodes: int) -> None:
    """The final table names every node and column in full (nothing cut to ``…``)."""
    summary = out[out.index("summary (rates over the whole run)"):]
    assert "cert latency ms" in summary and "tx/s stored" in summary
    assert all(f"│ node-{i} " in summary for i in range(nodes))


def pids(directory: Path) -> list[int]:
    paths = [*directory.glob("node-*/status.json"), directory / "client" / "status.json"]
    return [doc["pid"] for doc in map(read_status, paths) if doc]


def test_ctrl_c_stops_validators_and_client_and_prints_a_summary(tmp_path):
    process = start_testnet(tmp_path, "--nodes", "4", "--rate", "500", "--tx-size", "128")
    try:
        def progressing() -> bool:
            nodes = [read_status(tmp_path / f"node-{i}" / "status.json") for i in range(4)]
            client = read_status(tmp_path / "client" / "status.json")
            return (all(n and n["primary"]["round"] >= 3 for n in nodes)
                    and bool(client) and client["accepted"] > 0)
        wait_for(progressing, 40, "rounds and accepted transactions")
        children = pids(tmp_path)
        assert len(children) == 5 and all(map(alive, children))
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, out
    assert "load client: sent" in out
    assert_whole_summary(out, 4)
    assert not any(map(alive, children))
    for i in range(4):
        final = read_status(tmp_path / f"node-{i}" / "status.json")
        assert final["stopped"] and final["workers"]["0"]["txs_stored"] > 0


def test_duration_ends_the_run(tmp_path):
    process = start_testnet(tmp_path, "--nodes", "4", "--rate", "0", "--duration", "3")
    out, _ = process.communicate(timeout=40)
    assert process.returncode == 0, out
    assert "load client: none" in out
    assert_whole_summary(out, 4)
    assert not (tmp_path / "client").exists()
    assert not any(map(alive, pids(tmp_path)))
    rounds = [read_status(tmp_path / f"node-{i}" / "status.json")["primary"]["round"]
              for i in range(4)]
    assert min(rounds) >= 2
