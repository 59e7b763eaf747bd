"""``narwhal run``: 4 validators as separate OS processes on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

from narwhal.node.processes import ProcessGroup, python_module
from narwhal.node.status import read_status

from .helpers import alive, local_network, wait_for

ROUNDS = 5


def run_argv(net, index: int, *role: str) -> list[str]:
    return python_module("narwhal.node", "run", "--keys", str(net.key_files[index]),
                         "--committee", str(net.committee_file),
                         "--parameters", str(net.parameters_file),
                         "--store", str(net.node_dir(index)),
                         "--log-file", str(net.node_dir(index) / "node.log"), *role)


def primary_round(path: Path) -> int:
    status = read_status(path) or {}
    return (status.get("primary") or {}).get("round", 0)


def test_four_validators_advance_rounds_and_stop_cleanly_on_sigterm(tmp_path):
    net = local_network(tmp_path, nodes=4, workers=1)
    status = [net.node_dir(i) / "status.json" for i in range(4)]
    with ProcessGroup(grace=15) as group:
        nodes = [group.start(f"node-{i}", run_argv(net, i), net.node_dir(i) / "stdout.log")
                 for i in range(4)]
        wait_for(lambda: all(primary_round(p) >= ROUNDS for p in status), 40,
                 f"every primary at round >= {ROUNDS}")
        assert not group.exited()
        codes = group.stop()
    assert codes == {f"node-{i}": 0 for i in range(4)}, [
        (net.node_dir(i) / "stdout.log").read_text()[-2000:] for i in range(4)]
    for i, node in enumerate(nodes):
        assert not alive(node.process.pid)
        final = json.loads(status[i].read_text())
        assert final["stopped"] is True and final["pid"] == node.process.pid
        assert final["primary"]["round"] >= ROUNDS and set(final["workers"]) == {"0"}
        assert {p.name for p in net.node_dir(i).glob("*.db")} == {"primary.db", "worker-0.db"}
        log = (net.node_dir(i) / "node.log").read_text()
        assert "primary stopped" in log and "worker-0 stopped" in log


def test_an_authority_split_into_role_processes_takes_part(tmp_path):
    net = local_network(tmp_path, nodes=4, workers=1)
    split = net.node_dir(0)
    with ProcessGroup(grace=15) as group:
        group.start("node-0-primary", run_argv(net, 0, "--role", "primary"), split / "p.log")
        group.start("node-0-worker", run_argv(net, 0, "--role", "worker", "--worker-id", "0"),
                    split / "w.log")
        for i in range(1, 4):
            group.start(f"node-{i}", run_argv(net, i), net.node_dir(i) / "stdout.log")
        wait_for(lambda: primary_round(split / "status-primary.json") >= ROUNDS
                 and all(primary_round(net.node_dir(i) / "status.json") >= ROUNDS
                         for i in range(1, 4)), 40, f"every primary at round >= {ROUNDS}")
        worker = read_status(split / "status-worker-0.json")
        assert worker is not None and worker["workers"]["0"]["worker_id"] == 0
        codes = group.stop()
    assert set(codes.values()) == {0}
