"""kill -9 of a validator during load, then restart from its stores, repeated: every
node's output stays live and agrees, and nothing acknowledged is lost or output twice —
for Bullshark (three kill/restart cycles, the black-box scenario of issue 11) and Tusk (one).

Four validator processes and a load client run over Noise on 127.0.0.1. One validator is
killed with SIGKILL while transactions flow; the others go on for two GC depths (so it
misses batches, and catches up on rounds its GC horizon passes at once); it is restarted
with the same command line and catches up. After the load stops and a few more commits,
the output is read **as a client reads it**, through the subscription, from index 1 on
every node (:mod:`tests.integration.output_check`):

- **liveness**: within ``OUTPUT_BOUND`` every node, the restarted one included, serves
  every index up to the highest any node reached;
- **agreement**: all four serve the same indexes, certificates and transactions;
- **no loss**: every transaction of every batch held by a quorum of workers (acknowledged
  by a quorum: the only batches a worker ever promises) is served, with its bytes, by every
  node — including batches whose header was orphaned (certified but never referenced, so
  never committed), which the proposer includes again once the GC horizon has passed it;
- **integrity**: no certificate is served twice; no batch is in the stored output twice.
"""

from __future__ import annotations

import asyncio
import os
import signal

import attrs
import cbor2
import pytest

from narwhal.node.files import create_local
from narwhal.node.processes import Child, ProcessGroup, python_module
from narwhal.node.status import read_status
from narwhal.store import Store
from tests.integration.output_check import (
    assert_acknowledged_served,
    assert_output_live_and_agreeing,
    quorum_acknowledged_transactions,
    tagged_load,
)
from tests.node.helpers import FAST_PARAMETERS, wait_for
from tests.node.test_run import run_argv


def primary(net, index: int) -> dict:
    return (read_status(net.node_dir(index) / "status.json") or {}).get("primary") or {}


def read_store(path, fn):
    store = Store.open(path)
    try:
        return fn(store)
    finally:
        asyncio.run(store.close())


def ordered_output(net, index: int) -> list[tuple[int, bytes, list[bytes]]]:
    """(index, certificate digest, batch digests) in consensus order."""
    def read(store):
        rows = []
        for _, blob in store.items("output"):
            idx, _round, _author, digest, payload = cbor2.loads(blob)
            rows.append((idx, digest, [d for d, _ in payload]))
        return rows
    return read_store(net.node_dir(index) / "primary.db", read)


def kill_and_restart(group: ProcessGroup, net, node: Child, victim: int, cycle: int) -> Child:
    """The operator's black-box scenario: kill -9 under load, restart with the same command
    line once the others went two GC depths on with batches it never saw; returns once
    the restarted node has caught up on consensus."""
    floor = primary(net, victim).get("committed_round", 0) + 10
    wait_for(lambda: all(primary(net, i).get("committed_round", 0) >= floor for i in range(4)),
             60, "commits under load")
    os.kill(node.process.pid, signal.SIGKILL)
    node.process.wait(timeout=10)
    others = [i for i in range(4) if i != victim]
    at_crash = max(primary(net, i)["round"] for i in others)
    wait_for(lambda: all(primary(net, i)["round"] >= at_crash + 2 * net.parameters.gc_depth
                         for i in others), 60, "the others advancing without it")
    restarted = group.start(f"node-{victim}-again-{cycle}", run_argv(net, victim),
                            net.node_dir(victim) / f"stdout-again-{cycle}.log")
    target = max(primary(net, i)["round"] for i in others)
    wait_for(lambda: (read_status(net.node_dir(victim) / "status.json") or {}).get("pid")
             == restarted.process.pid and primary(net, victim).get("committed_round", 0) >= target,
             90, "the restarted validator catching up on consensus")
    return restarted


@pytest.mark.parametrize("protocol, cycles", [("bullshark", 3), ("tusk", 1)])
def test_kill_9_during_load_loses_nothing_and_outputs_agree(tmp_path, protocol, cycles):
    # a short GC depth: orphaned headers' batches come back once the horizon passes them,
    # and a node catching up commits rounds its horizon passes at once (issue 11)
    parameters = attrs.evolve(FAST_PARAMETERS, consensus=protocol, gc_depth=10)
    net = create_local(tmp_path, 4, 1, parameters=parameters)
    victim = 1
    with ProcessGroup(grace=15) as group:
        nodes = [group.start(f"node-{i}", run_argv(net, i), net.node_dir(i) / "stdout.log")
                 for i in range(4)]
        wait_for(lambda: all(primary(net, i).get("round", 0) >= 3 for i in range(4)), 60,
                 "all primaries started")
        # 1,500 tx/s in all, each node's share naming it (see quorum_acknowledged_transactions)
        load = [group.start(f"load-{i}", python_module(
            "narwhal.client", "submit", "--committee", str(net.committee_file), "--worker", str(i),
            "--rate", "375", "--from-file", str(tagged_load(tmp_path, i, 375 * 180))),
            tmp_path / f"load-{i}.log") for i in range(4)]
        for cycle in range(cycles):
            nodes[victim] = kill_and_restart(group, net, nodes[victim], victim, cycle)

        group.stop(load)
        # long enough for the GC horizon to pass every round that carried load, so batches
        # of orphaned headers have been proposed again and committed
        settle = max(primary(net, i)["committed_round"] for i in range(4)) + 2 * parameters.gc_depth + 20
        wait_for(lambda: all(primary(net, i)["committed_round"] >= settle for i in range(4)), 60,
                 "the last batches committed everywhere")
        # liveness and agreement of what clients get, from index 1, on every node
        served = assert_output_live_and_agreeing(net, range(4))
        codes = group.stop()
    assert all(code == 0 for name, code in codes.items() if not name.startswith(f"node-{victim}")
               or name == f"node-{victim}-again-{cycles - 1}"), codes

    # no loss: every quorum-acknowledged transaction served, with its bytes, by every node
    assert_acknowledged_served(served, quorum_acknowledged_transactions(net, range(4)))

    # the stored records agree with what was served
    outputs = [ordered_output(net, i) for i in range(4)]
    for output in outputs:
        assert [row[0] for row in output] == list(range(1, len(output) + 1))  # contiguous
    longest = max(outputs, key=len)
    for output in outputs:  # agreement: prefixes of one another
        assert output == longest[:len(output)]
    assert [row[1] for row in longest[:len(served[0])]] == [item[3] for item in served[0]]
    output_batches = [d for row in longest for d in row[2]]
    assert len(output_batches) == len(set(output_batches)), "a batch was output twice"
