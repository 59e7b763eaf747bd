"""A validator down for longer than the others keep history comes back by state transfer:
real processes, real retention, real Noise connections on 127.0.0.1.

Four validators keep ``retain_seconds=5`` of history. One is killed (-9) and stays down
until every other node has deleted the rounds right after its last one; restarted on its
old store, it cannot fetch its way forward (before state transfer it fetched in silence
for ever). It must find a checkpoint peers of f+1 stake agree on, resume consensus from
it, commit again where the others are, serve the same output as they do index for index
from its new floor on, answer ``PRUNED`` (with that floor) for the indexes it skipped,
and keep all of that across a restart.
"""

from __future__ import annotations

import asyncio
import os
import signal

import attrs
import pytest

from narwhal.client import OutputPruned, OutputSubscriber
from narwhal.node.files import create_local
from narwhal.node.processes import ProcessGroup, python_module
from narwhal.testing.outputs import SUBSCRIBE_RETRY, output_violations
from tests.integration.test_disk_full import node_argv, primary
from tests.node.helpers import FAST_PARAMETERS, wait_for

RETAIN_SECONDS = 5.0
ITEMS = 30  # output items compared between the restarted node and another


async def first_items(net, node: int, from_index: int, count: int) -> list:
    subscriber = OutputSubscriber(net.committee, net.committee.authorities_sorted()[node],
                                  retry=SUBSCRIBE_RETRY)
    items = []
    async with asyncio.timeout(30):
        async for item in subscriber.subscribe(from_index):
            items.append(item)
            if len(items) == count:
                return items
    return items


async def side_by_side(net, nodes: tuple[int, ...], start: int) -> list[list]:
    return list(await asyncio.gather(*(first_items(net, node, start, ITEMS) for node in nodes)))


async def pruned_at(net, node: int, index: int) -> int:
    subscriber = OutputSubscriber(net.committee, net.committee.authorities_sorted()[node],
                                  retry=SUBSCRIBE_RETRY)
    with pytest.raises(OutputPruned) as refused:
        async with asyncio.timeout(30):
            async for _ in subscriber.subscribe(index):
                pass
    return refused.value.earliest


def test_a_node_down_longer_than_the_retention_resumes_by_state_transfer(tmp_path):
    parameters = attrs.evolve(FAST_PARAMETERS, gc_depth=10, retain_seconds=RETAIN_SECONDS)
    net = create_local(tmp_path, 4, 1, parameters=parameters)
    victim, others = 3, [0, 1, 2]
    logs = {i: net.node_dir(i) / "node.log" for i in range(4)}
    with ProcessGroup(grace=15) as group:
        nodes = [group.start(f"node-{i}", node_argv(net, i, logs[i]), tmp_path / f"stdout-{i}.log")
                 for i in range(4)]
        load = [group.start(f"load-{i}", python_module(
            "narwhal.client", "submit", "--committee", str(net.committee_file), "--worker", str(i),
            "--rate", "200"), tmp_path / f"load-{i}.log") for i in others]
        wait_for(lambda: primary(net, victim).get("committed_round", 0) >= 20, 60,
                 "the victim committing")
        os.kill(nodes[victim].process.pid, signal.SIGKILL)
        nodes[victim].process.wait(timeout=10)
        left_at = primary(net, victim)["round"]
        # down until every other node has deleted the rounds right after its last one
        wait_for(lambda: all((primary(net, i).get("history") or {}).get("pruned_round", 0)
                             > left_at + 2 * parameters.gc_depth for i in others), 90,
                 "the others pruning the rounds the victim would need")

        nodes[victim] = group.start(f"node-{victim}-back", node_argv(net, victim, logs[victim]),
                                    tmp_path / f"stdout-{victim}-back.log")
        target = max(primary(net, i).get("committed_round", 0) for i in others)
        wait_for(lambda: primary(net, victim).get("state_transfers", 0) == 1
                 and primary(net, victim).get("committed_round", 0) >= target, 60,
                 f"the victim resuming by state transfer and committing round {target}")
        floor = primary(net, victim)["output_floor"]
        log_text = logs[victim].read_text()
        assert "every peer has deleted the rounds after it" in log_text
        assert "state transfer: resuming consensus from the checkpoint" in log_text

        # the same output as another node, index for index (from a recent index: the
        # others delete what is older than 5 s; the sim test compares from the floor on)
        start = min(primary(net, i)["consensus_index"] for i in (victim, 0)) - 5
        assert start > floor
        served = asyncio.run(side_by_side(net, (victim, 0), start))
        assert len(served[0]) == ITEMS and output_violations(
            {victim: served[0], 0: served[1]}, from_index=start) == []
        # ... and PRUNED, naming the floor, for an index it skipped (it never had it)
        assert asyncio.run(pruned_at(net, victim, floor - 1)) == floor

        # across a restart: the same floor, and it commits on
        group.stop([nodes[victim]])
        nodes[victim] = group.start(f"node-{victim}-again", node_argv(net, victim, logs[victim]),
                                    tmp_path / f"stdout-{victim}-again.log")
        target = max(primary(net, i).get("committed_round", 0) for i in others)
        wait_for(lambda: primary(net, victim).get("committed_round", 0) >= target
                 and primary(net, victim).get("state_transfers") == 0, 60,
                 "the restarted victim committing again")
        assert primary(net, victim)["output_floor"] == floor
        group.stop(load)
        assert all(node.returncode is None for node in nodes), "a validator exited"
