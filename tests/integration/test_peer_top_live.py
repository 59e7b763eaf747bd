"""``tools/peer_top --once --json`` against a real 4-validator network of processes."""

from __future__ import annotations

import json
import subprocess
import sys

from narwhal.crypto import AuthorityKeys
from narwhal.node.processes import ProcessGroup

from ..node.helpers import REPO, child_env, local_network, wait_for
from ..node.test_run import run_argv


def peer_top(admin: str) -> dict:
    """Run the real script once, as an operator would, and return node 0's JSON."""
    done = subprocess.run([sys.executable, str(REPO / "tools" / "peer_top"), "--admin", admin,
                           "--once", "--json"], capture_output=True, text=True, timeout=20,
                          env=child_env(), check=False)
    [node] = json.loads(done.stdout)["nodes"]
    return node


def primary_peers(node: dict) -> dict[str, dict]:
    return {p["key"]: p for p in node["peers"] if p["local"] == "primary"
            and p["role"] == "primary"}


def test_peer_top_sees_connected_peers_then_a_stopped_one_disconnected(tmp_path):
    net = local_network(tmp_path, nodes=4, workers=1)
    authorities = [net.committee.authorities[AuthorityKeys.load(path).name]
                   for path in net.key_files]
    admin = authorities[0].primary.admin_address
    gone = authorities[3].primary.network_key.hex()
    with ProcessGroup(grace=10) as group:
        nodes = [group.start(f"node-{i}", run_argv(net, i), net.node_dir(i) / "stdout.log")
                 for i in range(4)]
        wait_for(lambda: (peer_top(admin).get("round") or 0) >= 3, 40, "node 0 at round 3")
        node = peer_top(admin)
        peers = primary_peers(node)
        assert len(peers) == 3 and node["reachable"], node
        assert all(p["state"] == "connected" and p["bytes_in"] > 0 and p["bytes_out"] > 0
                   for p in peers.values()), peers
        workers = [p for p in node["peers"] if p["local"] == "worker-0"]
        assert sum(p["state"] == "connected" for p in workers) == 4  # 3 workers + our primary

        group.stop([nodes[3]])
        wait_for(lambda: primary_peers(peer_top(admin))[gone]["state"] == "disconnected", 15,
                 "node 3 marked disconnected")
        def attempts() -> int:
            peer = primary_peers(peer_top(admin))[gone]
            return peer["retries"] + peer["dial_failures"]
        first = attempts()
        wait_for(lambda: attempts() > first, 20, "retries to node 3 growing")
        down = primary_peers(peer_top(admin))[gone]
        assert down["state"] == "disconnected" and "disconnected" in down["problems"]
        group.stop()
