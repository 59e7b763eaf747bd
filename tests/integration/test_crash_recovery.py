"""kill -9 of a validator during load, then restart from its stores: consensus agrees and
nothing acknowledged is lost or output twice — for Bullshark and for Tusk.

Four validator processes and a load client run over Noise on 127.0.0.1. One validator is
killed with SIGKILL while transactions flow, restarted from the same stores, and catches up.
After the load stops and a few more commits, everything stops and the stores are read:

- **agreement**: the ordered outputs (consensus index -> certificate) of all four nodes,
  the restarted one included, are prefixes of one another, with contiguous indexes;
- **no loss**: every batch held by a quorum of workers (that is, acknowledged by a quorum:
  the only batches a worker ever promises) is in the ordered output — including batches
  whose header was orphaned (certified but never referenced, so never committed), which
  the proposer includes again once the GC horizon has passed that header;
- **integrity**: no batch and no certificate is output twice.
"""

from __future__ import annotations

import asyncio
import os
import signal

import attrs
import cbor2
import pytest

from narwhal.node.files import create_local
from narwhal.node.processes import ProcessGroup, python_module
from narwhal.node.status import read_status
from narwhal.store import Store
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


def batches_held(net, index: int) -> set[bytes]:
    return read_store(net.node_dir(index) / "worker-0.db", lambda s: set(s.keys("batches")))


@pytest.mark.parametrize("protocol", ["bullshark", "tusk"])
def test_kill_9_during_load_loses_nothing_and_outputs_agree(tmp_path, protocol):
    # a short GC depth: orphaned headers' batches come back once the horizon passes them
    parameters = attrs.evolve(FAST_PARAMETERS, consensus=protocol, gc_depth=10)
    net = create_local(tmp_path, 4, 1, parameters=parameters)
    victim = 1
    with ProcessGroup(grace=15) as group:
        nodes = [group.start(f"node-{i}", run_argv(net, i), net.node_dir(i) / "stdout.log")
                 for i in range(4)]
        wait_for(lambda: all(primary(net, i).get("round", 0) >= 3 for i in range(4)), 60,
                 "all primaries started")
        load = group.start("load", python_module(
            "narwhal.client", "submit", "--committee", str(net.committee_file), "--all-workers",
            "--rate", "600", "--tx-size", "64", "--duration", "120"), tmp_path / "load.log")
        wait_for(lambda: all(primary(net, i).get("committed_round", 0) >= 10 for i in range(4)),
                 60, "commits under load")

        os.kill(nodes[victim].process.pid, signal.SIGKILL)
        nodes[victim].process.wait(timeout=10)
        at_crash = max(primary(net, i)["round"] for i in range(4) if i != victim)
        wait_for(lambda: all(primary(net, i)["round"] >= at_crash + 5 for i in range(4) if i != victim),
                 60, "the others advancing without it")
        restarted = group.start(f"node-{victim}-again", run_argv(net, victim),
                                net.node_dir(victim) / "stdout-again.log")
        target = max(primary(net, i)["round"] for i in range(4) if i != victim)
        wait_for(lambda: (read_status(net.node_dir(victim) / "status.json") or {}).get("pid")
                 == restarted.process.pid and primary(net, victim).get("committed_round", 0) >= target,
                 90, "the restarted validator catching up on consensus")

        group.stop([load])
        # long enough for the GC horizon to pass every round that carried load, so batches
        # of orphaned headers have been proposed again and committed
        settle = max(primary(net, i)["committed_round"] for i in range(4)) + 2 * parameters.gc_depth + 20
        wait_for(lambda: all(primary(net, i)["committed_round"] >= settle for i in range(4)), 60,
                 "the last batches committed everywhere")
        codes = group.stop()
    assert all(code == 0 for name, code in codes.items() if name != f"node-{victim}"), codes

    outputs = [ordered_output(net, i) for i in range(4)]
    for output in outputs:
        assert [row[0] for row in output] == list(range(1, len(output) + 1))  # contiguous
    longest = max(outputs, key=len)
    for output in outputs:  # agreement: prefixes of one another
        assert output == longest[:len(output)]
    certificates = [row[1] for row in longest]
    assert len(certificates) == len(set(certificates))
    output_batches = [d for row in longest for d in row[2]]
    assert len(output_batches) == len(set(output_batches)), "a batch was output twice"

    holders: dict[bytes, int] = {}
    for i in range(4):
        for digest in batches_held(net, i):
            holders[digest] = holders.get(digest, 0) + 1
    quorum = net.committee.quorum_threshold()
    acknowledged = {d for d, n in holders.items() if n >= quorum}
    assert len(acknowledged) > 20
    lost = acknowledged - set(output_batches)
    assert not lost, f"{len(lost)} of {len(acknowledged)} quorum-acknowledged batches never output"
